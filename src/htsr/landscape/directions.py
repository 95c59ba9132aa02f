"""Directions in parameter space for loss surfaces: random filter-normalised ones (Li et al. 2018), the
direction towards another model, and an orthonormal plane through three models.

A direction is a flat tensor in an :class:`~htsr.landscape.objective.Objective`'s parameter order.

Filter normalisation (Li et al., ``net_plotter.py``): draw ``d ~ N(0, I)`` of each parameter's shape; for a
tensor with 2+ dimensions rescale each filter (slice along dim 0) to the norm of the matching weight filter,
``d_f <- d_f · ‖w_f‖ / (‖d_f‖ + 1e-10)``. One-dimensional tensors (biases, BatchNorm/LayerNorm weights and
biases) are zeroed (``ignore_biasbn=True``, the reference's ``--xignore biasbn``) or, as the reference does
without that flag, set equal to the weights themselves. ``norm="layer"`` rescales whole tensors, ``"weight"``
multiplies by the weights elementwise, ``"none"`` keeps the raw Gaussian. Unlike ``loss-landscapes``, the
distance is not rescaled by the whole-model norm and 1-D tensors are zeroed, not rescaled, as in Li et al.
BatchNorm running statistics are not part of a direction (the reference's ``dir_type='states'``): re-estimate
them at each point instead (``bn_data=`` in :mod:`htsr.landscape.surfaces`).
"""

from __future__ import annotations

import torch
from torch import nn

from htsr.landscape.objective import LandscapeError, Objective, check_same_architecture

__all__ = ["random_direction", "model_direction", "plane_through", "NORMS"]

NORMS = ("filter", "layer", "weight", "none")


def random_direction(obj: Objective, *, seed: int = 0, norm: str = "filter", ignore_biasbn: bool = True,
                     ) -> torch.Tensor:
    """A random direction, normalised per filter (default) against the objective's current weights. Seeded."""
    if norm not in NORMS:
        raise LandscapeError(f"norm must be one of {NORMS}, got {norm!r}")
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    parts = []
    for p in obj.params:
        w = p.detach()
        d = torch.randn(w.shape, generator=g, dtype=torch.float64).to(w.device, w.dtype)
        if w.dim() <= 1:
            d = torch.zeros_like(w) if ignore_biasbn else w.clone()
        elif norm == "filter":
            wf = w.reshape(w.shape[0], -1).norm(dim=1)
            df = d.reshape(d.shape[0], -1).norm(dim=1)
            d = d * (wf / (df + 1e-10)).reshape((-1,) + (1,) * (w.dim() - 1))
        elif norm == "layer":
            d = d * (w.norm() / (d.norm() + 1e-10))
        elif norm == "weight":
            d = d * w
        parts.append(d)
    return obj.flatten(parts)


def _vector_of(obj: Objective, model: nn.Module) -> torch.Tensor:
    check_same_architecture(obj.model, model)
    named = dict(model.named_parameters())
    missing = [n for n in obj.names if n not in named]
    if missing:
        raise LandscapeError(f"the other model has no parameter {missing[0]!r}")
    return obj.flatten([named[n].detach().to(obj.device, obj.dtype) for n in obj.names])


def model_direction(obj: Objective, other: nn.Module) -> torch.Tensor:
    """``θ_other − θ``: the line from the objective's model (coordinate 0) to ``other`` (coordinate 1)."""
    return _vector_of(obj, other) - obj.get_vector()


def plane_through(obj: Objective, model_b: nn.Module, model_c: nn.Module,
                  ) -> tuple[torch.Tensor, torch.Tensor, list[tuple[float, float]]]:
    """An orthonormal basis ``(u, v)`` of the plane through the objective's model (origin), ``model_b`` and
    ``model_c`` (Garipov et al.'s plane: ``u = (θ_b − θ_a)/‖·‖``, ``v`` = the part of ``θ_c − θ_a`` orthogonal
    to ``u``, normalised), and the three models' coordinates in it."""
    a = obj.get_vector()
    db = _vector_of(obj, model_b) - a
    dc = _vector_of(obj, model_c) - a
    nb = float(db.norm())
    if nb == 0:
        raise LandscapeError("model_b equals the first model: the plane is not defined")
    u = db / nb
    r = dc - (dc @ u) * u
    nr = float(r.norm())
    if nr <= torch.finfo(a.dtype).eps ** 0.5 * float(dc.norm()):  # round-off level: collinear
        raise LandscapeError("the three models are collinear: the plane is not defined")
    v = r / nr
    coords = [(0.0, 0.0), (nb, 0.0), (float(dc @ u), nr)]
    return u, v, coords
