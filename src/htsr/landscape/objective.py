"""The shared "model + loss + data" objective of the loss-landscape toolkit.

Every landscape method (Hessian spectra, surfaces, paths, sharpness, SAM, CKA) evaluates the same thing:
the mean loss of a model over some data, as a function of a chosen subset of its parameters.
:class:`Objective` holds that and nothing more. Its API is small and stable:

``Objective(model, data, loss_fn=None, *, params=None, train_mode=False, max_batches=None, cache_graph=None)``
    ``data`` is one batch (a tensor, an ``(x, y)`` tuple/list, or a dict of tensors) or an iterable of batches
    (a DataLoader, a list of batches; re-iterated on every pass). ``loss_fn`` is either the training loop's
    ``loss_fn(model, batch) -> scalar tensor`` (default :func:`htsr.training.default_loss`: cross-entropy for
    integer targets, MSE for float targets, ``outputs.loss`` for dict batches) or a torch criterion
    ``criterion(outputs, targets)`` such as ``torch.nn.CrossEntropyLoss()`` or ``F.cross_entropy`` (any
    ``nn.Module``, or a function whose first parameter is named ``input``/``output(s)``/``logits``/``pred``...),
    adapted here, once, by :func:`as_model_loss`. ``params`` selects parameters by name patterns
    (:class:`htsr.nn.Patterns`: exact names, globs, ``re:REGEX``), or by a predicate
    ``(name, parameter) -> bool``; default: every parameter with ``requires_grad``. ``train_mode=False``
    evaluates in ``eval()`` mode (PyHessian's convention), restoring every submodule's mode afterwards; in train
    mode, BatchNorm running statistics are *not* changed (clones of the buffers are passed in).

Attributes: ``model``, ``names`` (selected parameter names), ``params`` (the live ``nn.Parameter`` objects),
``shapes``, ``numel`` (list), ``dim`` (total number of selected scalars), ``device``, ``dtype``.

Methods (``vec`` is a flat 1-D tensor of length ``dim`` in the order of ``names``):

- ``batches()`` -> iterator of ``(batch, weight)``, ``weight`` = batch size / total size; checks devices.
- ``loss(vec=None) -> float``: the batch-size-weighted mean loss at ``vec`` (current weights if None), no grad.
- ``metrics(vec=None) -> dict``: ``loss`` and, for ``(x, integer y)`` batches, ``error`` (fraction misclassified).
- ``loss_and_grad(vec=None) -> (float, Tensor)``: mean loss and its flat gradient (weighted over batches).
- ``hvp(v) -> Tensor``: Hessian-vector product of the mean loss, ``v`` of shape ``(dim,)`` or ``(k, dim)``
  (a block of k vectors, evaluated in one batched backward pass where the model allows it).
- ``functional_loss(tensors, batch) -> Tensor``: the loss of one batch with the selected parameters replaced
  by ``tensors`` (a list in ``names`` order), differentiable (``torch.func`` friendly).
- ``get_vector()``, ``set_vector(vec)``, ``perturbed(vec)`` (context manager: weights set to ``vec`` and
  restored on exit, buffers included), ``flatten(tensors)``, ``unflatten(vec)``.

Helpers: ``select_parameters(model, params)``, ``batch_size(batch)``, ``is_batch(data)``, ``forward_batch(model,
batch)`` (the one way a batch is fed to a model), ``model_output_tensor(out)``, ``check_scalar_loss(loss)``,
``check_masks(mask, named)``, ``as_model_loss(loss_fn)``,
``reestimate_bn(model, data)`` (BatchNorm running statistics recomputed on data, Garipov et al.'s cumulative
average weighted by batch size), ``check_same_architecture(a, b)``.

Batches are weighted by their size (the leading dimension of the first tensor), so a DataLoader whose last
batch is short gives exactly the mean over all samples, like one big batch. Errors (:class:`LandscapeError`):
a model with no (selected) trainable parameter, a loss that is not a scalar, data on another device than the
model, empty data, an unknown parameter name.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from htsr.devices import model_device
from htsr.errors import HtsrError, MeasurementError
from htsr.nn import Patterns, eval_mode
from htsr.nn import train_mode as train_mode_ctx
from htsr.training.loop import (
    batch_size,  # noqa: F401  (re-exported: one implementation)
    to_device,
)

__all__ = ["LandscapeError", "Objective", "LossFn", "is_batch", "batch_size", "default_loss", "select_parameters",
           "reestimate_bn", "check_same_architecture", "has_batchnorm", "batchnorm_layers", "forward_batch",
           "model_output_tensor", "check_scalar_loss", "check_masks", "as_model_loss", "CriterionLoss"]

LossFn = Callable[[nn.Module, Any], torch.Tensor]
ParamSelector = Sequence[str] | Callable[[str, nn.Parameter], bool] | None


class LandscapeError(HtsrError, ValueError):
    """Bad landscape input: no trainable parameter, non-scalar or non-finite loss, device mismatch,
    mismatched architectures, unknown parameter names."""


class NonFiniteLossError(LandscapeError, MeasurementError):
    """The measurement itself failed: the loss is NaN/Inf somewhere on a path or during curve training (the
    input was valid; the CLI exits 1 for this, 2 for bad input)."""


def default_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """The training loop's default loss (:func:`htsr.training.default_loss`)."""
    from htsr.training import default_loss as _dl

    return _dl(model, batch)


LOSS_SIGNATURES = ("loss_fn(model, batch) -> scalar tensor (the training loop's convention) or a torch criterion "
                   "criterion(outputs, targets) such as torch.nn.CrossEntropyLoss()")
#: First-parameter names that mark a plain function as a criterion ``(outputs, targets)`` (torch.nn.functional's
#: losses use ``input``).
CRITERION_FIRST_ARGS = ("input", "inputs", "output", "outputs", "logits", "pred", "preds", "prediction",
                        "predictions", "y_pred", "yhat", "scores")


def model_output_tensor(out: Any) -> torch.Tensor:
    """The tensor that stands for a model's (or module's) output.

    A tensor is itself; a Hugging Face ``ModelOutput``/dict gives ``logits``, else ``last_hidden_state``,
    else its first tensor value; a tuple/list gives its first tensor.
    """
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict) or hasattr(out, "keys"):
        for key in ("logits", "last_hidden_state"):
            if key in out and isinstance(out[key], torch.Tensor):
                return out[key]
        for v in out.values():
            if isinstance(v, torch.Tensor):
                return v
    if isinstance(out, tuple | list):
        for v in out:
            if isinstance(v, torch.Tensor):
                return v
    raise LandscapeError(f"cannot find a tensor in an output of type {type(out).__name__}")


def forward_batch(model: nn.Module, batch: Any, *, move: bool = True) -> Any:
    """Run ``model`` on a batch, the one way every landscape method does it: ``(x, y, ...)`` -> ``model(x)``; a
    mapping -> ``model(**batch)`` without ``labels``; a tensor -> ``model(batch)``. With ``move`` the batch is first
    moved to the model's device (:func:`htsr.training.loop.to_device`)."""
    if move:
        batch = to_device(batch, model_device(model))
    if isinstance(batch, torch.Tensor):
        return model(batch)
    if isinstance(batch, Mapping) or hasattr(batch, "keys"):
        return model(**{k: v for k, v in batch.items() if k != "labels"})
    if isinstance(batch, tuple | list) and batch:
        return model(batch[0])
    raise LandscapeError(f"cannot feed a batch of type {type(batch).__name__} to the model; expected a tensor, "
                         "(x, y) or a dict of tensors (or pass forward_fn)")


def check_scalar_loss(loss: Any, what: str = "loss_fn") -> torch.Tensor:
    """``loss`` if it is a 0-d tensor, else a :class:`LandscapeError` saying what was returned."""
    if not isinstance(loss, torch.Tensor):
        raise LandscapeError(f"{what} must return a torch.Tensor, got {type(loss).__name__}")
    if loss.ndim != 0:
        raise LandscapeError(f"{what} must return a scalar (0-d) tensor, got shape {tuple(loss.shape)}; "
                             "use a mean reduction")
    return loss


def check_masks(mask: Mapping[str, Any] | None, named: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Validated per-parameter masks: every name one of ``named`` (the selected parameters), every shape the
    parameter's; returned on the parameter's device and dtype. ``None`` gives ``{}``."""
    if mask is None:
        return {}
    if not isinstance(mask, Mapping):
        raise LandscapeError(f"mask must be a mapping of parameter name -> 0/1 tensor, got {type(mask).__name__}")
    unknown = sorted(set(mask) - set(named))
    if unknown:
        raise LandscapeError(f"mask names {unknown} are not among the selected parameters; names look like "
                             f"{list(named)[:3]}")
    out = {}
    for n, m in mask.items():
        p = named[n]
        m = torch.as_tensor(m, device=p.device)
        if tuple(m.shape) != tuple(p.shape):
            raise LandscapeError(f"mask for {n!r} has shape {tuple(m.shape)}, the parameter {tuple(p.shape)}")
        out[n] = m.to(p.dtype)
    return out


def _targets(batch: Any) -> Any:
    if isinstance(batch, tuple | list) and len(batch) >= 2:
        return batch[1]
    if isinstance(batch, Mapping) and "labels" in batch:
        return batch["labels"]
    raise LandscapeError(f"a criterion (outputs, targets) needs (inputs, targets) batches or dicts with 'labels', "
                         f"got a {type(batch).__name__}; or pass loss_fn(model, batch)")


class CriterionLoss:
    """``loss_fn(model, batch)`` made from a torch criterion ``criterion(outputs, targets)``: the model's output
    tensor (:func:`model_output_tensor` of :func:`forward_batch`) against the batch's targets."""

    def __init__(self, criterion: Callable[[torch.Tensor, Any], torch.Tensor]) -> None:
        self.criterion = criterion

    def __call__(self, model: nn.Module, batch: Any) -> torch.Tensor:
        targets = _targets(batch)
        return self.criterion(model_output_tensor(forward_batch(model, batch, move=False)), targets)

    def __repr__(self) -> str:
        return f"CriterionLoss({self.criterion!r})"


def _positional(fn: Callable) -> list[inspect.Parameter] | None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without a signature: trust the caller
        return None
    return [p for p in sig.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD,
                                                               p.VAR_POSITIONAL)]


def as_model_loss(loss_fn: Any) -> LossFn:
    """The one place a loss function is recognised: ``None`` -> :func:`default_loss`; a torch criterion (an
    ``nn.Module`` such as ``nn.CrossEntropyLoss()``, or a function whose first parameter is named ``input``,
    ``outputs``, ``logits``, ...) -> :class:`CriterionLoss`; a callable taking ``(model, batch)`` -> itself.
    Anything else is a :class:`LandscapeError` naming the expected signatures."""
    if loss_fn is None:
        return default_loss
    if isinstance(loss_fn, CriterionLoss):
        return loss_fn
    if isinstance(loss_fn, nn.Module):
        return CriterionLoss(loss_fn)
    if not callable(loss_fn):
        raise LandscapeError(f"loss_fn must be callable, got {type(loss_fn).__name__}; expected {LOSS_SIGNATURES}")
    params = _positional(loss_fn)
    if params is None:
        return loss_fn
    if params and params[0].name.lower() in CRITERION_FIRST_ARGS:
        return CriterionLoss(loss_fn)
    try:
        inspect.signature(loss_fn).bind(None, None)
    except TypeError:
        raise LandscapeError(f"loss_fn{inspect.signature(loss_fn)} cannot be called with two arguments; expected "
                             f"{LOSS_SIGNATURES}") from None
    return loss_fn


def is_batch(data: Any) -> bool:
    """True when ``data`` is a single batch (a tensor, a dict of tensors, or a tuple/list starting with a tensor)
    rather than an iterable of batches."""
    if isinstance(data, torch.Tensor):
        return True
    if isinstance(data, Mapping):
        return any(isinstance(v, torch.Tensor) for v in data.values())
    if isinstance(data, tuple | list) and data:
        return isinstance(data[0], torch.Tensor)
    return False


def _tensors(batch: Any) -> Iterator[torch.Tensor]:
    if isinstance(batch, torch.Tensor):
        yield batch
    elif isinstance(batch, Mapping):
        for v in batch.values():
            yield from _tensors(v)
    elif isinstance(batch, tuple | list):
        for v in batch:
            yield from _tensors(v)


class _Bound(nn.Module):
    """``forward(batch) = loss_fn(model, batch)``: lets ``torch.func.functional_call`` swap the model's
    parameters under any ``(model, batch)`` loss without per-layer functional code."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: Any) -> torch.Tensor:
        return self.loss_fn(self.model, batch)


def select_parameters(model: nn.Module, params: ParamSelector = None) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` pairs chosen by ``params`` (name patterns as :class:`htsr.nn.Patterns`: exact names,
    globs, ``re:REGEX``; a predicate; or None = all trainable), in the model's order. A pattern that matches no
    parameter, or an invalid regex, is an error naming what the names look like."""
    named = list(model.named_parameters())
    if params is None:
        chosen = [(n, p) for n, p in named if p.requires_grad]
    elif callable(params) and not isinstance(params, Patterns):
        chosen = [(n, p) for n, p in named if params(n, p)]
    else:
        pats = params.patterns if isinstance(params, Patterns) else (params,) if isinstance(params, str) else params
        compiled = [Patterns(p) for p in pats]  # one per pattern (an invalid regex: ConfigError, here)
        for pat, c in zip(pats, compiled, strict=True):
            if not any(n == pat or c.match(n) for n, _ in named):
                raise LandscapeError(f"parameter {pat!r} matches no parameter of the model; names look like "
                                     f"{[n for n, _ in named[:3]]}")
        chosen = [(n, p) for n, p in named if any(n == pat or c.match(n) for pat, c in zip(pats, compiled,
                                                                                          strict=True))]
    if not chosen:
        raise LandscapeError(f"{type(model).__name__} has no trainable parameters to analyse "
                             "(none selected, or all have requires_grad=False)")
    return chosen


class Objective:
    """Mean loss of ``model`` over ``data`` as a function of the selected parameters (see the module docstring)."""

    def __init__(self, model: nn.Module, data: Any, loss_fn: LossFn | None = None, *, params: ParamSelector = None,
                 train_mode: bool = False, max_batches: int | None = None, cache_graph: bool | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise LandscapeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if data is None:
            raise LandscapeError("data is None; expected a batch (x, y) / dict of tensors or a DataLoader")
        if max_batches is not None and max_batches < 1:
            raise LandscapeError(f"max_batches must be >= 1 or None, got {max_batches}")
        self.model = model
        self.loss_fn: LossFn = as_model_loss(loss_fn)
        self._default_loss = loss_fn is None
        chosen = select_parameters(model, params)
        self.names: list[str] = [n for n, _ in chosen]
        self.params: list[nn.Parameter] = [p for _, p in chosen]
        self.shapes = [tuple(p.shape) for p in self.params]
        self.numel = [p.numel() for p in self.params]
        self.dim = int(sum(self.numel))
        self.device = self.params[0].device
        self.dtype = self.params[0].dtype
        self.train_mode = bool(train_mode)
        self.max_batches = max_batches
        self.single = is_batch(data)
        self.data = data
        self.cache_graph = self.single if cache_graph is None else bool(cache_graph)
        self._bound = _Bound(model, self.loss_fn)
        self._keys = ["model." + n for n in self.names]
        self._cache: tuple[Any, list[tuple[list[torch.Tensor], list[torch.Tensor], float]]] | None = None

    # ------------------------------------------------------------------ vectors

    def flatten(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """Concatenate per-parameter tensors (``names`` order) into one flat vector."""
        return torch.cat([t.reshape(-1) for t in tensors])

    def unflatten(self, vec: torch.Tensor) -> list[torch.Tensor]:
        """Split a flat vector (or a ``(k, dim)`` block) into per-parameter views of the parameters' shapes."""
        if vec.shape[-1] != self.dim:
            raise LandscapeError(f"vector has {vec.shape[-1]} entries, expected {self.dim} (the selected parameters)")
        lead = tuple(vec.shape[:-1])
        return [c.reshape(lead + s) for c, s in zip(vec.split(self.numel, dim=-1), self.shapes, strict=True)]

    def get_vector(self) -> torch.Tensor:
        """A flat copy of the selected parameters' current values."""
        return self.flatten([p.detach() for p in self.params]).clone()

    @torch.no_grad()
    def set_vector(self, vec: torch.Tensor) -> None:
        """Copy ``vec`` into the selected parameters (in place)."""
        for p, t in zip(self.params, self.unflatten(vec.to(self.device, self.dtype)), strict=True):
            p.copy_(t)

    @contextlib.contextmanager
    def perturbed(self, vec: torch.Tensor | None) -> Iterator[None]:
        """Parameters set to ``vec`` inside the block; parameters and buffers restored on exit."""
        if vec is None:
            yield
            return
        saved = self.get_vector()
        buffers = {k: b.detach().clone() for k, b in self.model.named_buffers()}
        try:
            self.set_vector(vec)
            yield
        finally:
            self.set_vector(saved)
            with torch.no_grad():
                for k, b in self.model.named_buffers():
                    if k in buffers:
                        b.copy_(buffers[k])

    # ------------------------------------------------------------------ data

    def _check_devices(self, batch: Any) -> None:
        for t in _tensors(batch):
            if t.device != self.device:
                raise LandscapeError(f"data is on {t.device} but the model's parameters are on {self.device}; "
                                     "move the data (or the model) so that both are on the same device")

    def batches(self) -> Iterator[tuple[Any, float]]:
        """``(batch, weight)`` pairs; weights are batch sizes over the total and sum to 1."""
        if self.single:
            self._check_devices(self.data)
            yield self.data, 1.0
            return
        if not isinstance(self.data, Iterable):
            raise LandscapeError(f"data must be a batch or an iterable of batches, got {type(self.data).__name__}")
        items = []
        for i, batch in enumerate(self.data):
            if self.max_batches is not None and i >= self.max_batches:
                break
            self._check_devices(batch)
            items.append((batch, batch_size(batch)))
        total = sum(n for _, n in items)
        if not items or total == 0:
            raise LandscapeError("data yielded no batch (empty DataLoader?)")
        for batch, n in items:
            yield batch, n / total

    def _mode(self) -> contextlib.AbstractContextManager:
        return train_mode_ctx(self.model) if self.train_mode else eval_mode(self.model)

    def _buffers(self, prefix: str = "model.") -> dict[str, torch.Tensor]:
        # train mode: BatchNorm updates running stats in place; hand it clones so the model is not changed
        if not self.train_mode:
            return {}
        return {prefix + k: b.clone() for k, b in self.model.named_buffers()}

    # ------------------------------------------------------------------ evaluations

    def functional_loss(self, tensors: Sequence[torch.Tensor], batch: Any) -> torch.Tensor:
        """Loss of one batch with the selected parameters replaced by ``tensors`` (differentiable; in the
        objective's train/eval mode)."""
        from torch.func import functional_call

        mapping = dict(zip(self._keys, tensors, strict=True))
        mapping.update(self._buffers())
        with self._mode():
            try:
                loss = functional_call(self._bound, mapping, (batch,))
            except TypeError as e:  # e.g. a criterion given where (model, batch) is expected, or the reverse
                raise LandscapeError(f"loss_fn failed with TypeError: {e}; expected {LOSS_SIGNATURES}") from e
            return check_scalar_loss(loss)

    def loss(self, vec: torch.Tensor | None = None) -> float:
        """Batch-size-weighted mean loss at ``vec`` (current weights if None); NaN propagates, never raises."""
        return self.metrics(vec, error=False)["loss"]

    @torch.no_grad()
    def metrics(self, vec: torch.Tensor | None = None, error: bool = True) -> dict[str, float]:
        """``loss`` and (``(x, integer y)`` batches) ``error``, the misclassified fraction, weighted over batches."""
        tensors = self.unflatten(vec.to(self.device, self.dtype)) if vec is not None else list(self.params)
        total, wrong, n_cls = 0.0, 0, 0
        with self._mode():
            for batch, w in self.batches():
                classify = (error and isinstance(batch, tuple | list) and len(batch) == 2
                            and isinstance(batch[1], torch.Tensor) and not batch[1].is_floating_point())
                if classify:
                    from torch.func import functional_call

                    mapping = dict(zip(self.names, tensors, strict=True))
                    mapping.update(self._buffers(prefix=""))
                    x, y = batch
                    out = functional_call(self.model, mapping, (x,))
                    if self._default_loss:
                        loss = nn.functional.cross_entropy(out, y.long())
                    else:
                        loss = self.functional_loss(tensors, batch)
                    wrong += int((out.argmax(dim=-1) != y).sum())  # exact counts: order-independent
                    n_cls += int(y.numel())
                else:
                    loss = self.functional_loss(tensors, batch)
                total += float(loss) * w
        out_d = {"loss": total}
        if n_cls > 0:
            out_d["error"] = wrong / n_cls
        return out_d

    def loss_and_grad(self, vec: torch.Tensor | None = None) -> tuple[float, torch.Tensor]:
        """Mean loss and its flat gradient with respect to the selected parameters."""
        base = self.unflatten(vec.to(self.device, self.dtype)) if vec is not None else [p.detach() for p in
                                                                                         self.params]
        total, grad = 0.0, torch.zeros(self.dim, device=self.device, dtype=self.dtype)
        with self._mode():
            for batch, w in self.batches():
                leaves = [t.detach().requires_grad_(True) for t in base]
                loss = self.functional_loss(leaves, batch)
                g = torch.autograd.grad(loss, leaves, allow_unused=True, materialize_grads=True)
                grad += w * self.flatten(g)
                total += float(loss.detach()) * w
        return total, grad

    # ------------------------------------------------------------------ Hessian-vector products

    def _graphs(self) -> Iterator[tuple[list[torch.Tensor], list[torch.Tensor], float]]:
        """Per batch: (leaves, gradient with graph, weight). Cached across calls when ``cache_graph``."""
        versions = tuple(p._version for p in self.params)
        if self.cache_graph and self._cache is not None and self._cache[0] == versions:
            yield from self._cache[1]
            return
        built = []
        for batch, w in self.batches():
            leaves = [p.detach().requires_grad_(True) for p in self.params]
            loss = self.functional_loss(leaves, batch)
            g = torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True, materialize_grads=True)
            item = (leaves, list(g), w)
            if self.cache_graph:
                built.append(item)
            else:
                yield item
        if self.cache_graph:
            self._cache = (versions, built)
            yield from built

    def clear_cache(self) -> None:
        """Drop the cached gradient graph (frees its memory)."""
        self._cache = None

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        """Hessian-vector product(s) of the mean loss: ``v`` is ``(dim,)`` or a block ``(k, dim)``."""
        v = v.to(self.device, self.dtype)
        if v.ndim == 2 and v.shape[0] == 1:  # a block of one: the plain product (a vmapped batch of one cost
            return self.hvp(v[0]).unsqueeze(0)  # 2.5x per product on an H100)
        block = v.ndim == 2
        out = torch.zeros_like(v)
        with self._mode():
            for leaves, g, w in self._graphs():
                idx = [i for i, gi in enumerate(g) if gi.requires_grad]
                if not idx:  # loss is linear in the parameters
                    continue
                parts = self.unflatten(v)
                outs = [g[i] for i in idx]
                gv = [parts[i] for i in idx]
                retain = self.cache_graph
                if block:
                    try:
                        hv = torch.autograd.grad(outs, leaves, gv, retain_graph=True, allow_unused=True,
                                                 materialize_grads=True, is_grads_batched=True)
                        res = torch.cat([h.reshape(v.shape[0], -1) for h in hv], dim=1)
                    except RuntimeError:  # an op without a batching rule: one vector at a time
                        res = torch.stack([self.flatten(torch.autograd.grad(
                            outs, leaves, [x[j] for x in gv], retain_graph=True, allow_unused=True,
                            materialize_grads=True)) for j in range(v.shape[0])])
                else:
                    hv = torch.autograd.grad(outs, leaves, gv, retain_graph=retain, allow_unused=True,
                                             materialize_grads=True)
                    res = self.flatten(hv)
                out += w * res
        return out


# ----------------------------------------------------------------------------- BatchNorm and architectures


def batchnorm_layers(model: nn.Module) -> list[nn.Module]:
    """The model's BatchNorm layers that track running statistics."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def has_batchnorm(model: nn.Module) -> bool:
    """True when the model has a BatchNorm layer that tracks running statistics."""
    return bool(batchnorm_layers(model))


@torch.no_grad()
def reestimate_bn(model: nn.Module, data: Any, max_batches: int | None = None) -> int:
    """Recompute every BatchNorm layer's running mean/variance on ``data`` (a batch or batches) at the current
    weights, as Garipov et al.'s ``update_bn``: statistics reset, then a cumulative average with momentum
    ``b / (n + b)`` per batch (b its size, n the samples seen), so each sample counts equally. The model's
    train/eval mode and the layers' momenta are restored. Returns the number of samples used (0: no BN layer)."""
    bns = batchnorm_layers(model)
    if not bns:
        return 0
    batches = [data] if is_batch(data) else data
    momenta = {m: m.momentum for m in bns}
    for m in bns:
        m.reset_running_stats()
    n = 0
    device = next((p.device for p in model.parameters()), None)
    try:
        with train_mode_ctx(model):
            for i, batch in enumerate(batches):
                if max_batches is not None and i >= max_batches:
                    break
                for t in _tensors(batch):
                    if device is not None and t.device != device:
                        raise LandscapeError(f"BatchNorm data is on {t.device} but the model is on {device}")
                b = batch_size(batch)
                for m in bns:
                    m.momentum = b / (n + b)
                forward_batch(model, batch, move=False)
                n += b
    finally:
        for m in bns:
            m.momentum = momenta[m]
    if n == 0:
        raise LandscapeError("BatchNorm re-estimation data yielded no batch")
    return n


def check_same_architecture(a: nn.Module, b: nn.Module, what: str = "models") -> None:
    """Raise :class:`LandscapeError` unless ``a`` and ``b`` have the same parameter and buffer names and shapes."""
    sa = {k: tuple(v.shape) for k, v in a.state_dict().items()}
    sb = {k: tuple(v.shape) for k, v in b.state_dict().items()}
    if sa == sb:
        return
    only_a = sorted(set(sa) - set(sb))
    only_b = sorted(set(sb) - set(sa))
    if only_a or only_b:
        raise LandscapeError(f"the {what} have different architectures: entries only in the first: {only_a[:5]}, "
                             f"only in the second: {only_b[:5]}")
    bad = [k for k in sa if sa[k] != sb[k]]
    raise LandscapeError(f"the {what} have different architectures: {bad[0]!r} has shape {sa[bad[0]]} vs "
                         f"{sb[bad[0]]} ({len(bad)} mismatched tensors)")
