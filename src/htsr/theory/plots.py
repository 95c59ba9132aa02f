"""PNG figures of the single-index study (matplotlib OO API on an Agg canvas, atomic writes).

* :func:`plot_esds`: log-log ESD histograms at init, after one step and after the last step, one panel per
  (optimizer, learning rate), with the Hill power law (xmin at the median) fitted to each final ESD;
* :func:`plot_metrics_vs_lr`: alpha (Hill and KS), teacher alignment, KTA and ridge losses against the rate;
* :func:`plot_steps`: Hill alpha and the spike ratio step by step (does the spike come before the tail?).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from htsr.errors import ConfigError
from htsr.io import save_png
from htsr.spectra.plots import log_bins, tail_pdf
from htsr.spectra.powerlaw import fit_power_law

DPI = 100
COLORS = {"gd": "#1f77b4", "adam": "#d62728"}
STEP_COLORS = ("#7f7f7f", "#ff7f0e", "#2ca02c")
#: Rates shown in the ESD figure when the caller does not choose (those present in the sweep are used).
DEFAULT_ESD_LRS: dict[str, tuple[float, ...]] = {"gd": (1.0, 2000.0, 3000.0), "adam": (0.01, 0.1, 1.0)}


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    return save_png(fig, path, DPI)


def _choose(available: Sequence[float], wanted: Sequence[float] | None, opt: str) -> list[float]:
    avail = sorted(set(float(x) for x in available))
    if wanted is not None:
        missing = [x for x in wanted if float(x) not in avail]
        if missing:
            raise ConfigError(f"rates {missing} were not run for {opt}; available: {avail}")
        return [float(x) for x in wanted]
    picks = [x for x in DEFAULT_ESD_LRS.get(opt, ()) if x in avail]
    if not picks:
        picks = sorted({avail[0], avail[len(avail) // 2], avail[-1]})
    return picks


def plot_esds(evals: Mapping[tuple[str, float, int], Mapping[int, np.ndarray]], path: str | os.PathLike,
              lrs: Mapping[str, Sequence[float]] | Sequence[float] | None = None, repeat: int = 0,
              bins: int = 60) -> Path:
    """One panel per (optimizer, rate): log-log density histograms of the ESD at step 0, 1 and the last kept
    step, with the Hill power-law density (xmin at the median) of the last one drawn from xmin to the top.

    ``evals`` is :attr:`SweepResult.evals`; ``lrs`` picks the rates (one list for every optimiser, or a
    mapping optimiser -> rates; default :data:`DEFAULT_ESD_LRS` where run).
    """
    opts = sorted({k[0] for k in evals if k[2] == repeat}, key=lambda o: (o != "gd", o))
    if not opts:
        raise ConfigError(f"no eigenvalues kept for repeat {repeat}")
    chosen = {}
    for o in opts:
        want = lrs.get(o) if isinstance(lrs, Mapping) else lrs
        chosen[o] = _choose([k[1] for k in evals if k[0] == o and k[2] == repeat], want, o)
    ncol = max(len(v) for v in chosen.values())
    fig = Figure(figsize=(4.2 * ncol, 3.6 * len(opts)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(opts), ncol, squeeze=False))
    for i, o in enumerate(opts):
        for j in range(ncol):
            ax = axes[i, j]
            if j >= len(chosen[o]):
                ax.set_axis_off()
                continue
            lr = chosen[o][j]
            by_step = evals[(o, lr, repeat)]
            steps = sorted(by_step)
            shown = [s for s in (0, 1) if s in by_step] + ([steps[-1]] if steps[-1] > 1 else [])
            allv = np.concatenate([np.asarray(by_step[s], dtype=np.float64) for s in shown])
            allv = allv[allv > allv.max() * 1e-12]
            edges = log_bins(allv.min(), allv.max(), bins)
            for c, s in zip(STEP_COLORS, shown, strict=False):
                lam = np.asarray(by_step[s], dtype=np.float64)
                lam = lam[lam > 0]
                dens, _ = np.histogram(lam, bins=edges, density=True)
                fit = fit_power_law(lam, "median")
                ax.stairs(np.where(dens > 0, dens, np.nan), edges, color=c, lw=1.5,
                          label=f"step {s}: alpha={fit.alpha:.2f}")
                if s == shown[-1] and fit.ok:
                    xs = np.logspace(math.log10(fit.xmin), math.log10(fit.xmax), 50)
                    frac = fit.n_tail / lam.size
                    ax.plot(xs, tail_pdf(xs, fit.alpha, fit.xmin, frac), "k--", lw=1.2,
                            label="power law (Hill, median xmin)")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(f"{o.upper()}  lr={lr:g}", fontsize=10)
            ax.set_xlabel(r"eigenvalue $\lambda$ of $W^\top W$")
            if j == 0:
                ax.set_ylabel("density")
            ax.grid(True, which="major", alpha=0.3)
            ax.legend(fontsize=7, loc="lower left")
    return _save(fig, path)


def _errorbar(ax, df: pd.DataFrame, col: str, color: str, ls: str, label: str, marker: str = "o") -> None:
    if col not in df.columns:
        return
    y = df[col].to_numpy(dtype=float)
    err = df[f"{col}_std"].to_numpy(dtype=float) if f"{col}_std" in df.columns else None
    if err is not None and not np.isfinite(err).any():
        err = None
    ax.errorbar(df["lr"], y, yerr=err, color=color, ls=ls, marker=marker, ms=4, capsize=2, label=label)


def plot_metrics_vs_lr(summary: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Four panels against the learning rate (log axis): Hill and KS alpha, |<v1, beta*>|, KTA, ridge train/test
    loss; one colour per optimiser, error bars = std over repeats, the init value as a grey line.

    ``summary`` is :meth:`SweepResult.summary`.
    """
    need = {"optimizer", "lr", "alpha_hill"}
    if not need <= set(summary.columns):
        raise ConfigError(f"summary must have columns {sorted(need)}; got {list(summary.columns)}")
    init = summary[summary["optimizer"] == "init"]
    runs = summary[summary["optimizer"] != "init"]
    fig = Figure(figsize=(12, 8.5), layout="constrained")
    axes = fig.subplots(2, 2)
    panels = [
        (axes[0, 0], [("alpha_hill", "-", "Hill, median xmin"), ("alpha_ks", ":", "KS-scan MLE")], r"PL $\alpha$"),
        (axes[0, 1], [("alignment", "-", "")], r"$|\langle v_1(W), \beta^*\rangle|$"),
        (axes[1, 0], [("kta", "-", "")], "kernel-target alignment"),
        (axes[1, 1], [("ridge_train_loss", "-", "train (probe)"), ("ridge_test_loss", "--", "test")],
         "ridge-refit MSE"),
    ]
    for ax, series, ylabel in panels:
        for opt, df in runs.groupby("optimizer", sort=False):
            df = df.sort_values("lr")
            for col, ls, name in series:
                _errorbar(ax, df, col, COLORS.get(str(opt), "k"), ls, f"{str(opt).upper()} {name}".strip())
        for col, ls, _ in series:
            if col in init.columns and len(init) and np.isfinite(init[col].iloc[0]):
                ax.axhline(float(init[col].iloc[0]), color="grey", ls=ls, lw=1)
        ax.set_xscale("log")
        ax.set_xlabel(r"learning rate $\eta$")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("single-index study: after the last full-batch step (grey: at init)", fontsize=11)
    return _save(fig, path)


def plot_steps(history: pd.DataFrame, path: str | os.PathLike, lrs: Mapping[str, Sequence[float]] | None = None,
               repeat: int = 0) -> Path:
    """Hill alpha (left) and the spike ratio lambda_max / MP edge at init (right) at every measured step, for the
    chosen rates of each optimiser (default :data:`DEFAULT_ESD_LRS` where run)."""
    h = history[history["repeat"] == repeat] if "repeat" in history.columns else history
    if h.empty:
        raise ConfigError(f"no history rows for repeat {repeat}")
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    ax_a, ax_s = fig.subplots(1, 2)
    for opt, df in h.groupby("optimizer", sort=False):
        opt = str(opt)
        want = None if lrs is None else lrs.get(opt)
        picks = _choose(df["lr"].unique(), want, opt)
        styles = ("-", "--", ":", "-.")
        for k, lr in enumerate(picks):
            d = df[df["lr"] == lr].sort_values("step")
            lab = f"{opt.upper()} lr={lr:g}"
            ax_a.plot(d["step"], d["alpha_hill"], styles[k % 4], marker="o", ms=3, color=COLORS.get(opt), label=lab)
            ax_s.plot(d["step"], d["spike_ratio"], styles[k % 4], marker="o", ms=3, color=COLORS.get(opt), label=lab)
    ax_a.set_ylabel(r"Hill $\alpha$ (median xmin)")
    ax_s.set_ylabel(r"$\lambda_{max}$ / initial MP edge")
    ax_s.set_yscale("log")
    for ax in (ax_a, ax_s):
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
    ax_s.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(fig, path)


__all__ = ["DEFAULT_ESD_LRS", "plot_esds", "plot_metrics_vs_lr", "plot_steps"]
