"""SharpBalance's phase-2 update as a ``torch.optim`` optimizer that :func:`htsr.training.train` drives.

Each minibatch ``B`` carries a boolean mask that splits it into ``B_S`` (the member's SAM samples) and ``B_N``
(the rest). One step, exactly as the notes write it (and in the order of the reference ``engine.mix_step``):

1. ``g_N = (|B_N|/|B|) grad L_{B_N}(theta)``            (forward + backward on ``B_N`` only)
2. ``g = grad L_{B_S}(theta)``, ``eps = rho g / ||g||``  (forward + backward on ``B_S`` only)
3. ``g_S = (|B_S|/|B|) grad L_{B_S}(theta + eps)``       (forward + backward on ``B_S`` at the perturbed point)
4. one base-optimizer step on ``g_N + g_S`` (on ``g_N`` alone when ``B_S`` is empty; plain SAM when ``B_N`` is).

One exception, for models with BatchNorm in training mode: a part of a single sample cannot be normalised,
so a lone SAM (or SGD) sample in a batch of more than two joins the other part for that step.

The split is index bookkeeping: every sample is forwarded once at ``theta``, and the ``B_S`` samples once more
at ``theta + eps``, so a step costs ``(1 + |B_S|/|B|)`` forward-backward passes of the batch, never more than a
SAM step (2) on the same batch. Usage::

    opt = MixedSAM(model.parameters(), torch.optim.SGD, rho=0.2, lr=0.1, momentum=0.9)
    train(model, loader_of_(x, y, sam_mask), opt, loss_fn=opt.loss)

The perturbation, its restoration and the state dict are :class:`htsr.landscape.SAM`'s (this class is a
subclass), so a SAM optimizer's state (momentum) loads into it when phase 1 ends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from htsr.errors import ConfigError
from htsr.landscape.sam import SAM, SAMStateError, frozen_norm_stats

Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _unpack(batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if not (isinstance(batch, tuple | list) and len(batch) == 3):
        raise ConfigError("MixedSAM.loss expects (inputs, targets, sam_mask) batches; got "
                          f"{type(batch).__name__} of length {len(batch) if hasattr(batch, '__len__') else '?'}")
    x, y, mask = batch
    mask = torch.as_tensor(mask, device=y.device).reshape(-1)
    if mask.dtype != torch.bool:
        mask = mask.bool()
    if mask.numel() != y.shape[0] or x.shape[0] != y.shape[0]:
        raise ConfigError(f"a batch has {x.shape[0]} inputs, {y.shape[0]} targets and {mask.numel()} mask entries")
    return x, y, mask


def _bn_training(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in model.modules())


class MixedSAM(SAM):
    """SAM on the masked part of each batch and plain gradient steps on the rest (SharpBalance phase 2).

    Same constructor as :class:`htsr.landscape.SAM`, plus ``criterion`` (mean loss of a sub-batch, default
    cross-entropy). Pass :meth:`loss` as the training loop's ``loss_fn``.
    """

    needs_closure = True

    def __init__(self, params: Any, base_optimizer: Any = None, rho: float = 0.05, adaptive: bool = False,
                 eta: float = 0.0, *, bn_model: nn.Module | None = None, criterion: Criterion | None = None,
                 **kwargs: Any) -> None:
        super().__init__(params, base_optimizer, rho=rho, adaptive=adaptive, eta=eta, bn_model=bn_model, **kwargs)
        self.criterion = criterion or nn.functional.cross_entropy
        self._stage = "theta"
        self._has_sam = False
        self._normal: list[torch.Tensor | None] | None = None
        self.last_sam_fraction = float("nan")
        self.merged_singletons = 0
        self._mask_override: torch.Tensor | None = None

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"] if p.requires_grad]

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """The loss the training loop backpropagates (see the module docstring).

        At ``theta`` it computes ``g_N`` itself (stored for :meth:`step`) and returns a tensor whose gradient
        is ``grad L_{B_S}`` (the SAM ascent direction) and whose value is the whole batch's mean loss (what
        the loop logs). At the perturbed point (inside :meth:`step`) it returns ``(|B_S|/|B|) L_{B_S}``.
        """
        x, y, mask = _unpack(batch)
        n = y.shape[0]
        n_s = int(mask.sum())
        if self._stage != "perturbed" and n > 2 and (n_s == 1 or n_s == n - 1) and _bn_training(model):
            # BatchNorm cannot normalise a one-sample sub-batch in training mode: the lone sample joins the
            # other part for this batch (counted in ``merged_singletons``)
            mask = torch.zeros_like(mask) if n_s == 1 else torch.ones_like(mask)
            n_s = int(mask.sum())
            self.merged_singletons += 1
            self._mask_override = mask
        elif self._stage != "perturbed":
            self._mask_override = None
        if self._stage == "perturbed" and self._mask_override is not None:
            mask = self._mask_override
            n_s = int(mask.sum())
        if self._stage == "perturbed":
            return self.criterion(model(x[mask]), y[mask]) * (n_s / n)
        self._normal = None
        self._has_sam = n_s > 0
        self.last_sam_fraction = n_s / n
        if n_s == 0:  # no SAM sample: the loop's backward gives g_N = grad L_B, the step is plain
            return self.criterion(model(x), y)
        if n_s == n:  # no SGD sample: a plain SAM step
            return self.criterion(model(x), y)
        keep = ~mask
        loss_n = self.criterion(model(x[keep]), y[keep])
        params = self._params()
        grads = torch.autograd.grad(loss_n * ((n - n_s) / n), params, allow_unused=True)
        self._normal = [None if g is None else g.detach() for g in grads]
        loss_s = self.criterion(model(x[mask]), y[mask])
        total = (loss_n.detach() * (n - n_s) + loss_s.detach() * n_s) / n
        return loss_s + (total - loss_s.detach())

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Finish the step that :meth:`loss` began; ``closure`` re-evaluates :meth:`loss` and backpropagates."""
        if not self._has_sam:
            self._normal = None
            self.base_optimizer.step()
            self._opt_called = True
            return None
        if closure is None:
            raise SAMStateError("MixedSAM needs a closure for batches with SAM samples (htsr.training.train "
                                "passes one)")
        closure = torch.enable_grad()(closure)
        self.first_step(zero_grad=True)
        self._stage = "perturbed"
        try:
            with frozen_norm_stats(self.bn_model):
                loss = closure()
        except BaseException:
            self._stage = "theta"
            self._restore()
            raise
        self._stage = "theta"
        if self._normal is not None:
            for p, g in zip(self._params(), self._normal, strict=True):
                if g is None:
                    continue
                if p.grad is None:
                    p.grad = g.clone()
                else:
                    p.grad.add_(g)
        self._normal = None
        self._has_sam = False
        self.second_step()
        return loss
