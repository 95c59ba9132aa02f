"""1-D and 2-D loss/error surfaces: ``L(θ + a·d)`` on a line and ``L(θ + a·u + b·v)`` on a plane.

Directions come from :mod:`htsr.landscape.directions` (random filter-normalised, towards another model, the
plane through three models). At each point the weights are set in place, BatchNorm statistics are optionally
re-estimated on ``bn_data`` (:func:`~htsr.landscape.objective.reestimate_bn`), the objective's metrics are
evaluated (``loss`` and, for classification batches, ``error``), and everything is restored afterwards.
A point whose loss is not finite is recorded as NaN (its error too), never an exception.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from htsr.landscape.directions import model_direction, plane_through, random_direction
from htsr.landscape.objective import LandscapeError, Objective, reestimate_bn
from htsr.progress import progress_bar

__all__ = ["Surface1D", "Surface2D", "surface_1d", "surface_2d", "random_surface_1d", "random_surface_2d",
           "line_between", "plane_between"]


@dataclass
class Surface1D:
    """Metrics along a line: ``coords`` (n,), ``loss`` (n,), ``error`` (n,) (NaN where not a classifier)."""

    coords: np.ndarray
    loss: np.ndarray
    error: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def to_pandas(self):
        """One row per point: coord, loss, error."""
        import pandas as pd

        return pd.DataFrame({"coord": self.coords, "loss": self.loss, "error": self.error})


@dataclass
class Surface2D:
    """Metrics on a grid: ``x`` (nx,), ``y`` (ny,), ``loss``/``error`` of shape (ny, nx) (row = y)."""

    x: np.ndarray
    y: np.ndarray
    loss: np.ndarray
    error: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def to_pandas(self):
        """One row per grid point: x, y, loss, error."""
        import pandas as pd

        X, Y = np.meshgrid(self.x, self.y)
        return pd.DataFrame({"x": X.ravel(), "y": Y.ravel(), "loss": self.loss.ravel(), "error": self.error.ravel()})


def _coords(c: Sequence[float] | np.ndarray | None, default: tuple[float, float, int]) -> np.ndarray:
    if c is None:
        c = np.linspace(*default)
    arr = np.asarray(c, dtype=float).ravel()
    if arr.size == 0 or not np.all(np.isfinite(arr)):
        raise LandscapeError("coordinates must be a non-empty list of finite numbers")
    return arr


def _point(obj: Objective, vec: torch.Tensor, bn_data: Any, bn_batches: int | None) -> tuple[float, float]:
    with obj.perturbed(vec):
        try:
            if bn_data is not None:
                reestimate_bn(obj.model, bn_data, bn_batches)
            m = obj.metrics(error=True)
        except FloatingPointError:
            return math.nan, math.nan
    loss = float(m["loss"])
    err = float(m.get("error", math.nan))
    if not math.isfinite(loss):
        return math.nan, math.nan
    return loss, err


def _progress(total: int, progress: bool | None, desc: str):
    return progress_bar(progress, total=total, desc=desc, unit="pt", leave=False)


def surface_1d(obj: Objective, direction: torch.Tensor, coords: Sequence[float] | np.ndarray | None = None, *,
               bn_data: Any = None, bn_batches: int | None = None, progress: bool | None = None) -> Surface1D:
    """Metrics at ``θ + a·direction`` for each ``a`` in ``coords`` (default 51 points in [-1, 1])."""
    a = _coords(coords, (-1.0, 1.0, 51))
    d = direction.to(obj.device, obj.dtype)
    if d.shape != (obj.dim,):
        raise LandscapeError(f"direction has shape {tuple(d.shape)}, expected ({obj.dim},)")
    base = obj.get_vector()
    loss, err = np.full(a.size, np.nan), np.full(a.size, np.nan)
    bar = _progress(a.size, progress, "surface")
    for i, ai in enumerate(a):
        loss[i], err[i] = _point(obj, base + float(ai) * d, bn_data, bn_batches)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return Surface1D(a, loss, err, {"bn_reestimated": bn_data is not None, "dim": obj.dim})


def surface_2d(obj: Objective, dx: torch.Tensor, dy: torch.Tensor, x: Sequence[float] | np.ndarray | None = None,
               y: Sequence[float] | np.ndarray | None = None, *, bn_data: Any = None, bn_batches: int | None = None,
               progress: bool | None = None) -> Surface2D:
    """Metrics at ``θ + a·dx + b·dy`` on the grid ``x × y`` (default 21 × 21 points in [-1, 1]²)."""
    xs, ys = _coords(x, (-1.0, 1.0, 21)), _coords(y, (-1.0, 1.0, 21))
    dx, dy = dx.to(obj.device, obj.dtype), dy.to(obj.device, obj.dtype)
    for d in (dx, dy):
        if d.shape != (obj.dim,):
            raise LandscapeError(f"direction has shape {tuple(d.shape)}, expected ({obj.dim},)")
    base = obj.get_vector()
    loss = np.full((ys.size, xs.size), np.nan)
    err = np.full((ys.size, xs.size), np.nan)
    bar = _progress(xs.size * ys.size, progress, "surface")
    for j, b in enumerate(ys):
        for i, a in enumerate(xs):
            loss[j, i], err[j, i] = _point(obj, base + float(a) * dx + float(b) * dy, bn_data, bn_batches)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return Surface2D(xs, ys, loss, err, {"bn_reestimated": bn_data is not None, "dim": obj.dim})


def random_surface_1d(obj: Objective, coords: Sequence[float] | np.ndarray | None = None, *, seed: int = 0,
                      norm: str = "filter", ignore_biasbn: bool = True, **kw: Any) -> Surface1D:
    """1-D surface along one random filter-normalised direction (Li et al.)."""
    s = surface_1d(obj, random_direction(obj, seed=seed, norm=norm, ignore_biasbn=ignore_biasbn), coords, **kw)
    s.meta.update(kind="random", seed=seed, norm=norm, ignore_biasbn=ignore_biasbn)
    return s


def random_surface_2d(obj: Objective, x: Sequence[float] | np.ndarray | None = None,
                      y: Sequence[float] | np.ndarray | None = None, *, seed: int = 0, norm: str = "filter",
                      ignore_biasbn: bool = True, **kw: Any) -> Surface2D:
    """2-D surface on two random filter-normalised directions (seeds ``seed`` and ``seed + 1``)."""
    dx = random_direction(obj, seed=seed, norm=norm, ignore_biasbn=ignore_biasbn)
    dy = random_direction(obj, seed=seed + 1, norm=norm, ignore_biasbn=ignore_biasbn)
    s = surface_2d(obj, dx, dy, x, y, **kw)
    s.meta.update(kind="random", seed=seed, norm=norm, ignore_biasbn=ignore_biasbn)
    return s


def line_between(obj: Objective, other: nn.Module, coords: Sequence[float] | np.ndarray | None = None,
                 **kw: Any) -> Surface1D:
    """Metrics on the line from the objective's model (0) to ``other`` (1); default 21 points in [-0.25, 1.25]."""
    s = surface_1d(obj, model_direction(obj, other), _coords(coords, (-0.25, 1.25, 21)), **kw)
    s.meta.update(kind="line")
    return s


def plane_between(obj: Objective, model_b: nn.Module, model_c: nn.Module, *, steps: int = 21, margin: float = 0.2,
                  **kw: Any) -> Surface2D:
    """Metrics on the plane through three models (orthonormal axes, units of parameter distance); the grid
    covers the three models plus ``margin`` of the extent on each side. ``meta['points']`` holds their
    coordinates."""
    u, v, pts = plane_through(obj, model_b, model_c)
    px = np.array([p[0] for p in pts])
    py = np.array([p[1] for p in pts])
    ex, ey = px.max() - px.min(), py.max() - py.min()
    x = np.linspace(px.min() - margin * ex, px.max() + margin * ex, steps)
    y = np.linspace(py.min() - margin * ey, py.max() + margin * ey, steps)
    s = surface_2d(obj, u, v, x, y, **kw)
    s.meta.update(kind="plane", points=pts)
    return s
