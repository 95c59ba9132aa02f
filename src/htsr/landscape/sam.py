"""Sharpness-aware minimization (SAM, Foret et al. 2021) and adaptive SAM (ASAM, Kwon et al. 2021).

:class:`SAM` is a ``torch.optim.Optimizer`` that wraps any base optimizer. One step is

1. ``first_step``: ``e(w) = rho * T_w^2 g / ||T_w g||`` from the gradient ``g`` at ``w``, move to ``w + e(w)``
   (``T_w = I`` for SAM; ``T_w = |w| + eta`` element-wise for ASAM, ``adaptive=True``);
2. the caller recomputes the gradient at ``w + e(w)``;
3. ``second_step``: go back to ``w`` and let the base optimizer step with that gradient.

It has the class attribute ``needs_closure = True``, so :func:`htsr.training.train` calls
``step(closure)`` (the gradient at ``w`` is already in ``.grad``); by hand it is used exactly like the
popular ``sam`` package (davda54/sam, which SharpBalance vendors as ``sam/sam.py``)::

    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
    loss_fn(model(x), y).backward(); opt.first_step(zero_grad=True)
    loss_fn(model(x), y).backward(); opt.second_step(zero_grad=True)

or ``SAM(torch.optim.AdamW(model.parameters(), lr=1e-3), rho=0.05)`` to wrap an optimizer instance.
The param groups are shared with the base optimizer, so LR schedulers work on either.

Fixed relative to the reference (davda54/sam as vendored by SharpBalance ``sam/sam.py``):

* ``state_dict()`` is the base optimizer's (momentum / Adam moments included, plus ``rho``/``adaptive``/
  ``eta`` in each group) and ``load_state_dict`` restores it into the base optimizer; the vendored copy
  saved SAM's own (transient ``old_p``) state and never restored the base optimizer's state (upstream
  issue #34 / PR #39, issue #73).
* ``second_step`` restores every parameter that ``first_step`` moved, even if it got no gradient in the
  second pass (``zero_grad`` sets grads to ``None``); the reference skipped such parameters, leaving
  them perturbed for good.
* ASAM's ``eta`` (Kwon et al.; 0.01 in their code) is supported; ``eta=0`` is the ``sam`` package's
  ``adaptive=True``.
* ``bn_model=``: optionally keep BatchNorm running statistics from being updated by the second
  (perturbed) forward pass, as the ``sam`` package's example does by hand (``disable_running_stats``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from htsr.errors import ConfigError, HtsrError
from htsr.landscape.objective import batchnorm_layers

_SAM_KEYS = ("rho", "adaptive", "eta")


class SAMStateError(HtsrError, RuntimeError):
    """A SAM call out of order (e.g. ``second_step`` without ``first_step``)."""


@contextlib.contextmanager
def frozen_norm_stats(model: nn.Module | None) -> Iterator[None]:
    """Run the body without changing any BatchNorm running statistics of ``model`` (a no-op for None)."""
    if model is None:
        yield
        return
    saved = []
    for mod in batchnorm_layers(model):
        bufs = {k: getattr(mod, k).clone() for k in ("running_mean", "running_var", "num_batches_tracked")
                if getattr(mod, k, None) is not None}
        saved.append((mod, bufs))
    try:
        yield
    finally:
        with torch.no_grad():
            for mod, bufs in saved:
                for k, v in bufs.items():
                    getattr(mod, k).copy_(v)


class SAM(torch.optim.Optimizer):
    """SAM / ASAM wrapper around a base optimizer.

    ``SAM(params, BaseClass, rho=0.05, adaptive=False, eta=0.0, **base_kwargs)`` builds the base optimizer
    on the same param groups (the ``sam`` package form); ``SAM(base_optimizer_instance, rho=...)`` wraps an
    existing one. ``rho``, ``adaptive`` and ``eta`` may also be set per param group.
    ``bn_model``: a module whose BatchNorm running stats must not see the perturbed pass of :meth:`step`.
    """

    needs_closure = True

    def __init__(
        self,
        params: Iterable[Any] | torch.optim.Optimizer,
        base_optimizer: type[torch.optim.Optimizer] | Callable[..., torch.optim.Optimizer] | None = None,
        rho: float = 0.05,
        adaptive: bool = False,
        eta: float = 0.0,
        *,
        bn_model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        _check_hparams(rho, eta)
        sam_defaults = dict(rho=float(rho), adaptive=bool(adaptive), eta=float(eta))
        if isinstance(params, torch.optim.Optimizer):
            if base_optimizer is not None or kwargs:
                raise ConfigError(
                    "pass either SAM(base_optimizer_instance, rho=...) or SAM(params, BaseOptimizerClass, "
                    "rho=..., **base_kwargs), not both an instance and a class/kwargs"
                )
            base = params
            if isinstance(base, SAM):
                raise ConfigError("cannot wrap a SAM optimizer in another SAM")
            for g in base.param_groups:
                for k, v in sam_defaults.items():
                    g.setdefault(k, v)
            super().__init__(base.param_groups, sam_defaults)
        else:
            if base_optimizer is None:
                raise ConfigError("SAM needs a base optimizer: SAM(params, torch.optim.SGD, rho=0.05, lr=0.1)")
            if isinstance(base_optimizer, torch.optim.Optimizer):
                raise ConfigError(
                    "base_optimizer is already built; wrap it as SAM(base_optimizer, rho=...) without params"
                )
            super().__init__(params, dict(sam_defaults, **kwargs))
            base = base_optimizer(self.param_groups, **kwargs)
            if not isinstance(base, torch.optim.Optimizer):
                raise ConfigError(f"base_optimizer must build a torch.optim.Optimizer, got {type(base).__name__}")
        for g in base.param_groups:
            _check_hparams(g["rho"], g["eta"])
        self.base_optimizer = base
        self.param_groups = base.param_groups
        self.defaults.update(base.defaults)
        self.bn_model = bn_model
        self._perturbed = False

    # ------------------------------------------------------------------ the two half steps
    @torch.no_grad()
    def _grad_norm(self) -> torch.Tensor:
        """``||T_w g||_2`` over all parameters with a gradient, on the first parameter's device."""
        norms = []
        device = None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                device = device or p.device
                g = p.grad
                if group["adaptive"]:
                    g = (p.abs() + group["eta"]) * g
                norms.append(torch.linalg.vector_norm(g, 2).to(device))
        if not norms:
            raise SAMStateError("SAM.first_step: no parameter has a gradient; run backward() first")
        return torch.linalg.vector_norm(torch.stack(norms), 2)

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Move every parameter with a gradient to ``w + e(w)`` (remembering ``w``)."""
        if self._perturbed:
            raise SAMStateError("SAM.first_step called twice without second_step in between")
        grad_norm = self._grad_norm()
        for group in self.param_groups:
            scale = group["rho"] / (grad_norm + 1e-12)
            for p in group["params"]:
                if p.grad is None:
                    continue
                self.state[p]["old_p"] = p.detach().clone()
                if group["adaptive"]:
                    t = p.abs() + group["eta"]
                    e_w = t * t * p.grad * scale.to(p)
                else:
                    e_w = p.grad * scale.to(p)
                p.add_(e_w)
        self._perturbed = True
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Return to ``w`` and take the base optimizer's step with the gradient now in ``.grad``."""
        if not self._perturbed:
            raise SAMStateError("SAM.second_step called without first_step")
        self._restore()
        self.base_optimizer.step()
        # torch's LR schedulers watch ``optimizer.step`` calls; the manual two-step API bypasses step(), so
        # mark the step as taken to avoid their spurious "scheduler.step() before optimizer.step()" warning
        self._opt_called = True
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def _restore(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                st = self.state.get(p)
                if st is not None and "old_p" in st:
                    p.copy_(st.pop("old_p"))
        self._perturbed = False

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One SAM step; ``closure`` must zero the grads, recompute the loss, call backward and return it.

        The gradient at the current weights must already be in ``.grad`` (as after the training loop's
        first backward); if no parameter has one, the closure is called once first to compute it.
        Returns the closure's loss at the perturbed weights.
        """
        if closure is None:
            raise SAMStateError(
                "SAM needs a closure: optimizer.step(closure) where closure() zero-grads, recomputes the loss "
                "on the same batch, calls backward() and returns the loss (htsr.training.train does this)"
            )
        closure = torch.enable_grad()(closure)
        if not any(p.grad is not None for g in self.param_groups for p in g["params"]):
            closure()
        self.first_step(zero_grad=True)
        try:
            with frozen_norm_stats(self.bn_model):
                loss = closure()
        except BaseException:
            self._restore()  # never leave the model at w + e(w)
            raise
        self.second_step()
        return loss

    # ------------------------------------------------------------------ bookkeeping
    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base_optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not hasattr(self, "base_optimizer"):  # during torch.optim.Optimizer.__init__
            super().add_param_group(param_group)
            return
        for k in _SAM_KEYS:
            param_group.setdefault(k, self.defaults[k])
        _check_hparams(param_group["rho"], param_group["eta"])
        self.base_optimizer.add_param_group(param_group)
        self.param_groups = self.base_optimizer.param_groups

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state dict (its groups carry ``rho``/``adaptive``/``eta``)."""
        if self._perturbed:
            raise SAMStateError("state_dict() called between first_step and second_step (weights are perturbed)")
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved into the base optimizer (groups, momentum, moments)."""
        if self._perturbed:
            raise SAMStateError("load_state_dict() called between first_step and second_step")
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups
        for g in self.param_groups:
            for k in _SAM_KEYS:
                g.setdefault(k, self.defaults[k])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base={type(self.base_optimizer).__name__}, groups={len(self.param_groups)})"


class ASAM(SAM):
    """Adaptive SAM (Kwon et al. 2021): :class:`SAM` with ``adaptive=True`` and their defaults
    ``rho=0.5``, ``eta=0.01`` (``T_w = |w| + eta`` element-wise)."""

    def __init__(
        self,
        params: Iterable[Any] | torch.optim.Optimizer,
        base_optimizer: type[torch.optim.Optimizer] | Callable[..., torch.optim.Optimizer] | None = None,
        rho: float = 0.5,
        eta: float = 0.01,
        *,
        bn_model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(params, base_optimizer, rho=rho, adaptive=True, eta=eta, bn_model=bn_model, **kwargs)


def _check_hparams(rho: Any, eta: Any) -> None:
    try:
        r, e = float(rho), float(eta)
    except (TypeError, ValueError):
        raise ConfigError(f"rho and eta must be numbers, got rho={rho!r}, eta={eta!r}") from None
    if not (r >= 0.0) or r == float("inf"):
        raise ConfigError(f"rho must be finite and >= 0, got {rho!r}")
    if not (e >= 0.0) or e == float("inf"):
        raise ConfigError(f"eta must be finite and >= 0, got {eta!r}")
