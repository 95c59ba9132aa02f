"""PNG figures for TempBalance: per-layer metric and learning-rate trajectories, and score against data fraction.

matplotlib's object-oriented API on an explicit Agg canvas (no pyplot state); files written atomically.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from htsr.errors import ConfigError
from htsr.io import save_png

DPI = 100


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    return save_png(fig, path, DPI)


def plot_trajectories(history: pd.DataFrame, path: str | Path, title: str = "TempBalance") -> Path:
    """Two panels over recomputations (x = scheduler step): each unit's metric value and learning rate.
    ``history``: :attr:`TempBalance.history` (columns step, unit, metric, value, lr)."""
    need = {"step", "unit", "value", "lr"}
    if history.empty or not need <= set(history.columns):
        raise ConfigError(f"need a non-empty TempBalance history with columns {sorted(need)}")
    fig = Figure(figsize=(10, 4.2))
    ax1, ax2 = fig.subplots(1, 2)
    units = list(dict.fromkeys(history["unit"]))
    for u in units:
        h = history[history["unit"] == u].sort_values("step")
        ax1.plot(h["step"], h["value"], marker="o", ms=3, lw=1, label=u)
        ax2.plot(h["step"], h["lr"], marker="o", ms=3, lw=1, label=u)
    metric = str(history["metric"].iloc[0]) if "metric" in history.columns else "metric"
    ax1.set(xlabel="scheduler step", ylabel=metric, title=f"{title}: per-unit {metric}")
    ax2.set(xlabel="scheduler step", ylabel="learning rate", title=f"{title}: per-unit learning rate")
    if (history["lr"] > 0).all():  # warmup starts at 0 and cosine ends at 0: log scale only when it can show all
        ax2.set_yscale("log")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    if len(units) <= 16:
        ax2.legend(fontsize=6, loc="best")
    fig.tight_layout()
    return _save(fig, path)


def plot_score_vs_fraction(summary: pd.DataFrame, path: str | Path, score: str, title: str = "",
                           higher_is_better: bool = True) -> Path:
    """Mean +- std of ``score`` against data fraction (log x), one line per method. ``summary``: output of
    :func:`htsr.experiments.summarize` (columns method, fraction, mean, std, n)."""
    need = {"method", "fraction", "mean", "std"}
    if summary.empty or not need <= set(summary.columns):
        raise ConfigError(f"need a summary table with columns {sorted(need)}")
    fig = Figure(figsize=(5.5, 4))
    ax = fig.subplots()
    for m, g in summary.groupby("method"):
        g = g.sort_values("fraction")
        std = np.nan_to_num(g["std"].to_numpy(dtype=float))
        ax.errorbar(g["fraction"], g["mean"], yerr=std, marker="o", capsize=3, label=str(m))
    ax.set_xscale("log")
    ax.set(xlabel="training data fraction", ylabel=f"{score} ({'higher' if higher_is_better else 'lower'} is better)",
           title=title or score)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)
