"""One-shot unstructured magnitude pruning of torch modules, and keeping the mask fixed while retraining.

The three-regime pipeline (Zhou et al. 2023, TRP code) prunes every convolution weight by magnitude (L1) and
never the final linear layer; here every Conv1d/Conv2d and linear-like layer (:func:`htsr.nn.is_linear_like`)
is prunable except the *last* linear-like layer in module order (the classifier head), which stays dense.

* ``scope="uniform"``: the same density in every prunable layer (TRP ``unif``: ``torch.nn.utils.prune.
  l1_unstructured`` per layer);
* ``scope="global"``: one magnitude threshold over all prunable weights together (TRP ``glob``).

The lowest-magnitude weights are picked by :func:`htsr.pruning.pruners.score_mask` (the project's one
magnitude selector; it removes ``int(count * sparsity)`` weights, i.e. rounds the pruned count down, where
torch's ``l1_unstructured`` rounds to nearest: at most one weight per layer differs). Its module-walking half
(:func:`htsr.pruning.prune.prune_model`) works on transformer blocks found by :func:`htsr.nn.find_layout` with
calibration data, which a CNN does not have, so the walk over conv/linear layers is here.

:class:`MaskKeeper` holds masks fixed *exactly*: a gradient hook zeroes the gradient of every pruned weight (so
momentum buffers of pruned weights stay 0) and, after every optimizer step, pruned weights are set to 0 again
(weight decay, SAM's perturbation or Adam's update of a zero gradient cannot move them). Use it as a
:class:`htsr.training.Callback`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from htsr.errors import ConfigError
from htsr.nn import is_linear_like
from htsr.training import Callback

SCOPES = ("uniform", "global")

Masks = dict[str, torch.Tensor]  # parameter name (``<module>.weight``) -> bool mask, True = kept


class NothingPrunableError(ConfigError):
    """The model has no layer that may be pruned."""


def check_density(density: Any) -> float:
    """``density`` as a float in (0, 1], or :class:`~htsr.errors.ConfigError` naming the value."""
    try:
        d = float(density)
    except (TypeError, ValueError):
        raise ConfigError(f"density must be a number in (0, 1], got {density!r}") from None
    if not (0.0 < d <= 1.0):  # also rejects NaN
        raise ConfigError(f"density must be in (0, 1] (the fraction of weights kept), got {density!r}")
    return d


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every Conv1d/Conv2d and linear-like layer with a weight, by module path, except the last linear-like layer
    (the classifier head, kept dense). :class:`NothingPrunableError` when none is left."""
    convs_and_linears = [(n, m) for n, m in model.named_modules()
                         if n and getattr(m, "weight", None) is not None
                         and (isinstance(m, nn.Conv1d | nn.Conv2d) or is_linear_like(m))]
    linear_names = [n for n, m in convs_and_linears if is_linear_like(m)]
    head = linear_names[-1] if linear_names else None
    out = {n: m for n, m in convs_and_linears if n != head}
    if not out:
        kinds = ", ".join(f"{n} ({type(m).__name__})" for n, m in convs_and_linears) or "none"
        raise NothingPrunableError(
            f"the model has nothing to prune: pruning takes Conv1d/Conv2d and linear layers except the final linear "
            f"layer, and its weight layers are: {kinds}")
    return out


def magnitude_masks(model: nn.Module, density: float, scope: str = "uniform") -> Masks:
    """Masks (True = kept) of the largest-magnitude weights of every prunable layer, ``density`` of them per layer
    (``uniform``) or over all prunable layers together (``global``). The model is not changed."""
    from htsr.pruning.pruners import score_mask

    d = check_density(density)
    if scope not in SCOPES:
        raise ConfigError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    layers = prunable_layers(model)
    weights = {f"{n}.weight": m.weight.detach() for n, m in layers.items()}
    sparsity = 1.0 - d
    if scope == "uniform":
        return {k: ~score_mask(w.abs().float(), sparsity, "matrix") for k, w in weights.items()}
    flat = torch.cat([w.abs().float().reshape(-1) for w in weights.values()])
    pruned = score_mask(flat, sparsity, "matrix")
    out, i = {}, 0
    for k, w in weights.items():
        out[k] = ~pruned[i:i + w.numel()].reshape(w.shape)
        i += w.numel()
    return out


def _named(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> dict[str, nn.Parameter]:
    params = dict(model.named_parameters())
    missing = [k for k in masks if k not in params]
    if missing:
        raise ConfigError(f"masks name parameters the model does not have: {', '.join(missing[:5])}")
    for k, m in masks.items():
        if tuple(m.shape) != tuple(params[k].shape):
            raise ConfigError(f"mask {k} has shape {tuple(m.shape)}, the parameter {tuple(params[k].shape)}")
    return {k: params[k] for k in masks}


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """Set every pruned weight (mask False) to exactly 0, in place; returns the model."""
    for k, p in _named(model, masks).items():
        p.masked_fill_(~masks[k].to(p.device), 0.0)
    return model


def mask_stats(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """``density`` (kept / prunable weights), ``prunable`` (count), ``kept``, ``nonzero`` (nonzero prunable weights
    now), ``dense_params`` (parameters outside the masks)."""
    params = _named(model, masks)
    prunable = sum(int(m.numel()) for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    nonzero = sum(int((p != 0).sum()) for p in params.values())
    total = sum(int(p.numel()) for p in model.parameters())
    return {"density": kept / max(prunable, 1), "prunable": prunable, "kept": kept, "nonzero": nonzero,
            "dense_params": total - prunable}


class MaskKeeper(Callback):
    """Keeps ``masks`` fixed on ``model`` through training: gradient hooks zero the gradients of pruned weights and
    every optimizer step is followed by :func:`apply_masks`. Attach it with :meth:`attach` (done by
    ``on_train_begin``) and remove the hooks with :meth:`detach` (done by ``on_train_end``)."""

    def __init__(self, model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
        self.model = model
        self.params = _named(model, masks)
        self.masks = {k: masks[k].to(p.device) for k, p in self.params.items()}
        self.handles: list[Any] = []

    def attach(self) -> MaskKeeper:
        self.detach()
        apply_masks(self.model, self.masks)
        for k, p in self.params.items():
            keep = self.masks[k]
            self.handles.append(p.register_hook(lambda g, keep=keep: g * keep.to(g.dtype)))
        return self

    def detach(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def on_train_begin(self, state: Any, logs: dict[str, Any]) -> None:
        self.attach()

    def on_step_end(self, state: Any, logs: dict[str, Any]) -> None:
        apply_masks(self.model, self.masks)

    def on_train_end(self, state: Any, logs: dict[str, Any]) -> None:
        apply_masks(self.model, self.masks)
        self.detach()
