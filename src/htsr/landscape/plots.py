"""PNG plots of loss surfaces, paths and Hessian spectral densities.

matplotlib's object-oriented API on an explicit Agg canvas (no pyplot state, no rcParams changes); every
file is written atomically with :func:`htsr.io.atomic_write`. NaN points are left blank.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from htsr.io import save_png
from htsr.landscape.hessian import DensityResult
from htsr.landscape.paths import PathResult
from htsr.landscape.surfaces import Surface1D, Surface2D

__all__ = ["plot_surface_1d", "plot_contour", "plot_surface_3d", "plot_surface_2d", "plot_path", "plot_density"]

DPI = 100


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    return save_png(fig, path, DPI)


def _metric(s: Surface1D | Surface2D, metric: str) -> np.ndarray:
    if metric not in ("loss", "error"):
        raise ValueError(f"metric must be 'loss' or 'error', got {metric!r}")
    return getattr(s, metric)


def plot_surface_1d(s: Surface1D, path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Loss (left axis) and error (right axis, when available) along a line."""
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    ax.plot(s.coords, s.loss, "-o", ms=3, color="#1f77b4", label="loss")
    ax.set_xlabel("coordinate along the direction")
    ax.set_ylabel("loss", color="#1f77b4")
    if np.any(np.isfinite(s.error)):
        ax2 = ax.twinx()
        ax2.plot(s.coords, 100 * s.error, "--s", ms=3, color="#d62728", label="error")
        ax2.set_ylabel("error (%)", color="#d62728")
    ax.set_title(title or f"1-D surface ({s.meta.get('kind', 'line')})", fontsize=10)
    return _save(fig, path)


def _draw_contour(fig: Figure, ax, s: Surface2D, metric: str, levels: int, log: bool, title: str | None) -> None:
    z = _metric(s, metric).astype(float)
    if log and metric == "loss":
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.log10(np.where(z > 0, z, np.nan))
    z = np.ma.masked_invalid(z)
    if z.count() >= 2 and float(z.max()) > float(z.min()):
        cs = ax.contourf(s.x, s.y, z, levels=levels, cmap="viridis")
        ax.contour(s.x, s.y, z, levels=levels, colors="k", linewidths=0.3)
        fig.colorbar(cs, ax=ax, label=("log10 " if log and metric == "loss" else "") + metric)
    for i, (px, py) in enumerate(s.meta.get("points", [])):
        ax.plot(px, py, "o", color="w", mec="k")
        ax.annotate("abc"[i] if i < 3 else str(i), (px, py), textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title(title or f"2-D {metric} surface ({s.meta.get('kind', 'plane')})", fontsize=10)


def _draw_3d(ax, s: Surface2D, metric: str, title: str | None) -> None:
    z = np.ma.masked_invalid(_metric(s, metric).astype(float))
    X, Y = np.meshgrid(s.x, s.y)
    ax.plot_surface(X, Y, z, cmap="viridis", linewidth=0, antialiased=True)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_zlabel(metric)
    ax.set_title(title or f"2-D {metric} surface", fontsize=10)


def plot_contour(s: Surface2D, path: str | os.PathLike, *, metric: str = "loss", levels: int = 30,
                 log: bool = True, title: str | None = None) -> Path:
    """Filled contour map of a 2-D surface (log10 of the loss by default); marks the models of a plane."""
    fig = Figure(figsize=(6, 5), layout="constrained")
    _draw_contour(fig, fig.subplots(), s, metric, levels, log, title)
    return _save(fig, path)


def plot_surface_3d(s: Surface2D, path: str | os.PathLike, *, metric: str = "loss", title: str | None = None) -> Path:
    """3-D surface plot of a 2-D surface (NaN points masked)."""
    fig = Figure(figsize=(6, 5), layout="constrained")
    _draw_3d(fig.add_subplot(projection="3d"), s, metric, title)
    return _save(fig, path)


def plot_surface_2d(s: Surface2D, path: str | os.PathLike, *, metric: str = "loss", levels: int = 30,
                    log: bool = True) -> Path:
    """One picture of a 2-D surface: the contour map (left) and the 3-D view (right)."""
    fig = Figure(figsize=(11, 5), layout="constrained")
    _draw_contour(fig, fig.add_subplot(1, 2, 1), s, metric, levels, log, None)
    _draw_3d(fig.add_subplot(1, 2, 2, projection="3d"), s, metric, None)
    return _save(fig, path)


def plot_path(results: list[PathResult] | PathResult, path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Train error (%) and loss along one or more paths (e.g. linear vs Bezier)."""
    results = [results] if isinstance(results, PathResult) else list(results)
    fig = Figure(figsize=(9, 4), layout="constrained")
    a1, a2 = fig.subplots(1, 2)
    for r in results:
        m = r.metrics()
        a1.plot(r.t, 100 * r.error, "-o", ms=3, label=f"{r.kind} (mc={m['mode_connectivity']:.3g})")
        a2.plot(r.t, r.loss, "-o", ms=3, label=r.kind)
    a1.set_xlabel("t")
    a1.set_ylabel("train error (%)")
    a2.set_xlabel("t")
    a2.set_ylabel("train loss")
    a1.legend(fontsize=8)
    a2.legend(fontsize=8)
    fig.suptitle(title or "mode connectivity", fontsize=10)
    return _save(fig, path)


def plot_density(d: DensityResult, path: str | os.PathLike, *, num_bins: int = 2000, title: str | None = None,
                 ) -> Path:
    """Hessian eigenvalue density from SLQ (log scale density, as PyHessian's example plots)."""
    dens, grid = d.density(num_bins=num_bins)
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    ax.semilogy(grid, dens + 1e-7)
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density (log)")
    ax.set_title(title or "Hessian spectral density (SLQ)", fontsize=10)
    return _save(fig, path)
