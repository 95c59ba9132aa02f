"""Per-sample gradient norms: SharpBalance's per-sample sharpness score.

``s(x) = || grad_theta loss(f_theta(x), y) ||_2^2`` for every training sample, the trace of that
sample's empirical Fisher. SharpBalance (``measure_sharpness.py: test_fisher``, ``engine.py``) computes it
with functorch ``vmap(grad(...))`` in eval mode over the 45K training split without augmentation, batch 16,
and uses it to pick each member's sharpness-aware subset. Here it is ``torch.func.vmap`` over
``torch.func.grad`` of a ``functional_call`` of the model, in chunks of ``batch_size`` samples; the squared
norm is accumulated parameter by parameter, so memory is one chunk's per-sample gradients of one
parameter set at a time (``batch_size x n_params``). ``method="loop"`` is the one-example-at-a-time
reference (``compute_sample_grads`` in SB), for models that ``vmap`` cannot batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from htsr.errors import ConfigError
from htsr.landscape.objective import (
    LandscapeError,
    check_masks,
    check_scalar_loss,
    model_output_tensor,
    select_parameters,
)
from htsr.nn import eval_mode

SampleLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def default_sample_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Loss of one example given with a batch dimension of 1: cross-entropy for an integer target, MSE for
    a float target (SB: ``nn.CrossEntropyLoss()`` on ``(1, C)`` logits)."""
    if target.is_floating_point():
        return nn.functional.mse_loss(output, target.to(output.dtype))
    return nn.functional.cross_entropy(output, target.long())


def _chunks(data: Any, batch_size: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) chunks: from a pair of tensors (split into ``batch_size`` rows) or from an iterable of batches."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
        if x.shape[0] != y.shape[0]:
            raise ConfigError(f"inputs have {x.shape[0]} samples but targets have {y.shape[0]}")
        for i in range(0, x.shape[0], batch_size):
            yield x[i:i + batch_size], y[i:i + batch_size]
        return
    if not isinstance(data, Iterable):
        raise ConfigError(f"data must be an (inputs, targets) pair of tensors or an iterable of such batches, "
                          f"got {type(data).__name__}")
    for batch in data:
        if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
            raise ConfigError(f"each batch must be an (inputs, targets) tuple, got {type(batch).__name__}")
        x, y = batch[0], batch[1]
        if x.shape[0] != y.shape[0]:
            raise ConfigError(f"a batch has {x.shape[0]} inputs but {y.shape[0]} targets")
        for i in range(0, x.shape[0], batch_size):
            yield x[i:i + batch_size], y[i:i + batch_size]


def per_sample_grad_norms(
    model: nn.Module,
    data: Any,
    *,
    loss_fn: SampleLoss | None = None,
    squared: bool = True,
    batch_size: int = 16,
    method: str = "vmap",
    params: Any = None,
    mask: Mapping[str, torch.Tensor] | None = None,
) -> np.ndarray:
    """Per-sample (squared) gradient norms of ``loss_fn(model(x_i[None]), y_i[None])`` w.r.t. the parameters.

    ``data``: an ``(inputs, targets)`` pair of tensors, or an iterable of such batches (in order; the result
    has one entry per sample in that order). ``loss_fn(output, target)``: the loss of one example with a
    batch dimension of 1 (default: cross-entropy / MSE). ``squared=True`` gives SB's score ``||g_i||^2``.
    ``method``: ``"vmap"`` (torch.func, default) or ``"loop"`` (one backward per sample).
    ``params`` selects parameters (names/globs/predicate; default all trainable), ``mask`` (name -> tensor)
    multiplies their gradients (SB's ``apply_mask_graient`` for pruned models). The model runs in eval
    mode (as in SB; one-sample batch statistics would be meaningless) and its mode is restored afterwards.
    Returns a float64 array of shape (n_samples,).
    """
    if method not in ("vmap", "loop"):
        raise ConfigError(f"method must be 'vmap' or 'loop', got {method!r}")
    if int(batch_size) < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    loss_fn = loss_fn or default_sample_loss
    chosen = select_parameters(model, params)
    names = [n for n, _ in chosen]
    masks = check_masks(mask, dict(chosen))
    device = chosen[0][1].device
    out: list[torch.Tensor] = []
    with eval_mode(model):
        for x, y in _chunks(data, int(batch_size)):
            x, y = x.to(device), y.to(device)
            if method == "vmap":
                sq = _vmap_chunk(model, chosen, names, masks, loss_fn, x, y)
            else:
                sq = _loop_chunk(model, chosen, names, masks, loss_fn, x, y)
            out.append(sq.detach().to("cpu", torch.float64))
    if not out:
        raise ConfigError("data holds no samples")
    res = torch.cat(out).numpy()
    return res if squared else np.sqrt(res)


def _check_scalar(loss: Any) -> torch.Tensor:
    return check_scalar_loss(loss, "the per-sample loss_fn(outputs, targets)")


def _vmap_chunk(model, chosen, names, masks, loss_fn, x, y) -> torch.Tensor:
    from torch.func import functional_call, grad, vmap

    params = {n: p.detach() for n, p in chosen}
    buffers = {n: b.detach() for n, b in model.named_buffers()}

    def one(ps, xi, yi):
        out = model_output_tensor(functional_call(model, {**ps, **buffers}, (xi.unsqueeze(0),)))
        return _check_scalar(loss_fn(out, yi.unsqueeze(0)))

    try:
        grads = vmap(grad(one), in_dims=(None, 0, 0))(params, x, y)
    except LandscapeError:
        raise
    except RuntimeError as exc:
        raise LandscapeError(
            f"torch.func.vmap could not batch this model ({exc.__class__.__name__}: {str(exc)[:200]}); "
            "use method='loop'") from exc
    sq = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    for n in names:
        g = grads[n]
        if n in masks:
            g = g * masks[n]
        sq += torch.linalg.vector_norm(g.reshape(g.shape[0], -1), dim=1).to(torch.float64) ** 2
    return sq


def _loop_chunk(model, chosen, names, masks, loss_fn, x, y) -> torch.Tensor:
    plist = [p for _, p in chosen]
    sq = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    for i in range(x.shape[0]):
        out = model_output_tensor(model(x[i:i + 1]))
        loss = _check_scalar(loss_fn(out, y[i:i + 1]))
        gs = torch.autograd.grad(loss, plist, allow_unused=True)
        for n, g in zip(names, gs, strict=True):
            if g is None:
                continue
            if n in masks:
                g = g * masks[n]
            sq[i] += float(torch.linalg.vector_norm(g)) ** 2
    return sq
