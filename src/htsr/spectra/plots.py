"""PNG plots of an :class:`~htsr.spectra.analysis.Analysis`: per-layer log-log ESDs and alpha by layer.

Figures use matplotlib's object-oriented API on an explicit Agg canvas (no pyplot state,
no rcParams changes) and every file is written atomically with :func:`htsr.io.atomic_write`.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from htsr.io import save_png
from htsr.spectra.display import ALPHA_BAND, log_bins  # noqa: F401  (log_bins: also this module's API)

if TYPE_CHECKING:
    from htsr.spectra.analysis import Analysis

log = logging.getLogger(__name__)

SUMMARY_NAME = "alpha_by_layer.png"
DPI = 100
MAX_NAME_CHARS = 80
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")

_C_DATA = "#1f77b4"
_C_RAND = "#ff7f0e"
_C_FIT = "#d62728"
_C_XMIN = "#2ca02c"


# ----------------------------------------------------------------------------- helpers


def safe_filename(index: int, name: str, width: int = 3, prefix: str = "esd") -> str:
    """``esd_003_<name>.png``: characters outside [A-Za-z0-9._-] become ``_``, long names are cut."""
    safe = _UNSAFE.sub("_", name).strip("._") or "layer"
    if len(safe) > MAX_NAME_CHARS:
        safe = safe[:MAX_NAME_CHARS].rstrip("._")
    return f"{prefix}_{index:0{width}d}_{safe}.png"


def _finite(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _fmt(v: Any, spec: str = ".3g") -> str:
    f = _finite(v)
    return "n/a" if f is None else format(f, spec)


#: Eigenvalues below this fraction of the largest are round-off zeros and are not drawn.
REL_FLOOR = 1e-12


def _finite_sorted(x: np.ndarray | None) -> np.ndarray:
    if x is None:
        return np.empty(0)
    a = np.asarray(x, dtype=np.float64).ravel()
    a = a[np.isfinite(a)]
    a.sort()
    return a


def _n_bins(n: int) -> int:
    return int(np.clip(round(1.5 * math.sqrt(n)), 10, 100))


def _log_ticks(ax: Any, lo: float, hi: float) -> None:
    """Readable log-axis ticks: no overlapping minor labels on short ranges."""
    ax.xaxis.set_minor_formatter(NullFormatter())
    if hi / lo < 1000:  # under 3 decades the default shows one or two labels: use 1-2-5 ticks
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    return save_png(fig, path, DPI)


def _short_names(names: list[str], max_chars: int = 32) -> list[str]:
    """Drop the dotted prefix shared by every name, then keep the last components of long names."""
    parts = [n.split(".") for n in names]
    common = 0
    if len(names) > 1:
        for group in zip(*parts, strict=False):
            if len(set(group)) != 1:
                break
            common += 1
    out = []
    for p in parts:
        keep = p[min(common, len(p) - 1):]
        while len(keep) > 1 and len(".".join(keep)) > max_chars - 1:  # drop whole leading components
            keep = keep[1:]
        s = ".".join(keep)
        if s != ".".join(p[min(common, len(p) - 1):]):
            s = "\u2026" + s
        out.append(s if len(s) <= max_chars else "\u2026" + s[-(max_chars - 1):])
    return out


# ----------------------------------------------------------------------------- per-layer ESD


def _title(row: dict) -> str:
    from htsr.io import safe_text

    name = safe_text(row["name"])
    if len(name) > 90:
        name = "\u2026" + name[-89:]
    if row.get("status") == "success":
        return (f"{name}\nalpha = {_fmt(row.get('alpha'))}   D = {_fmt(row.get('D'))}   "
                f"n_tail = {row.get('n_tail')}   xmin = {_fmt(row.get('xmin'))}")
    reason = str(row.get("reason") or "unknown reason")
    if len(reason) > 90:
        reason = reason[:89] + "\u2026"
    return f"{name}\nfit failed: {reason}"


def tail_pdf(x: np.ndarray, alpha: float, xmin: float, frac: float) -> np.ndarray:
    """Fitted density frac * (alpha-1)/xmin * (x/xmin)^-alpha, normalised to the tail fraction."""
    return frac * (alpha - 1.0) / xmin * (x / xmin) ** (-alpha)


def plot_esd(row: dict, evals: np.ndarray, path: str | os.PathLike,
             randomized: np.ndarray | None = None) -> Path:
    """One PNG: log-log density histogram (left) and complementary CDF (right) with the fit."""
    lam_all, rlam = _finite_sorted(evals), _finite_sorted(randomized)
    top = max(lam_all[-1] if lam_all.size else 0.0, rlam[-1] if rlam.size else 0.0)
    floor = top * REL_FLOOR  # a log axis cannot show zeros, and round-off zeros would stretch it
    lam, rlam = lam_all[lam_all > floor], rlam[rlam > floor]
    n_hidden = lam_all.size - lam.size
    fig = Figure(figsize=(11, 4.4))  # fixed margins: constrained layout would double the drawing cost
    ax_pdf, ax_cdf = fig.subplots(1, 2, gridspec_kw=dict(left=0.07, right=0.985, bottom=0.12, top=0.83, wspace=0.2))
    fig.suptitle(_title(row), fontsize=10)

    if lam.size == 0:
        for ax in (ax_pdf, ax_cdf):
            ax.text(0.5, 0.5, "no positive eigenvalues", ha="center", va="center", transform=ax.transAxes)
        return _save(fig, Path(path))

    lo, hi = lam[0], lam[-1]
    if rlam.size:
        lo, hi = min(lo, rlam[0]), max(hi, rlam[-1])
    alpha, xmin, xmax = _finite(row.get("alpha")), _finite(row.get("xmin")), _finite(row.get("xmax"))
    fitted = row.get("status") == "success" and alpha is not None and xmin is not None and xmin > 0
    bins = log_bins(lo, hi, _n_bins(lam.size), xmin if fitted else None)

    # density histogram of the ESD (normalised over the positive eigenvalues shown)
    dens, _ = np.histogram(lam, bins=bins, density=True)
    ax_pdf.stairs(dens, bins, fill=True, alpha=0.45, color=_C_DATA)
    if rlam.size:
        rdens, _ = np.histogram(rlam, bins=bins, density=True)
        ax_pdf.stairs(rdens, bins, color=_C_RAND, lw=1.4)
    # empirical CCDF P(lambda >= x)
    ccdf = 1.0 - np.arange(lam.size) / lam.size
    ax_cdf.step(lam, ccdf, where="post", color=_C_DATA, lw=1.5,
                label=f"ESD ({lam.size} eigenvalues" + (f", {n_hidden} zero(s) not shown)" if n_hidden else ")"))
    if rlam.size:
        rccdf = 1.0 - np.arange(rlam.size) / rlam.size
        ax_cdf.step(rlam, rccdf, where="post", color=_C_RAND, lw=1.2, label="randomized ESD")

    if fitted:
        upper = xmax if xmax is not None and xmax > xmin else hi
        n_tail = _finite(row.get("n_tail"))
        n_tail = n_tail if n_tail else float(np.count_nonzero((lam >= xmin) & (lam <= upper)))
        frac = min(1.0, n_tail / lam.size)
        xs = np.logspace(math.log10(xmin), math.log10(upper), 100)
        label = f"power law, alpha = {alpha:.3g}"
        ax_pdf.plot(xs, tail_pdf(xs, alpha, xmin, frac), color=_C_FIT, lw=2)
        ax_cdf.plot(xs, frac * (xs / xmin) ** (1.0 - alpha), color=_C_FIT, lw=2, ls="--", label=label)
        ax_pdf.axvline(xmin, color=_C_XMIN, ls=":", lw=1.6)
        ax_cdf.axvline(xmin, color=_C_XMIN, ls=":", lw=1.6, label=f"xmin = {xmin:.3g}")

    for ax in (ax_pdf, ax_cdf):
        ax.set_xscale("log")
        ax.set_yscale("log")
        _log_ticks(ax, lo, hi)
        ax.set_xlabel(r"eigenvalue $\lambda$")
        ax.grid(True, which="major", alpha=0.3)
    ax_cdf.legend(fontsize=8, loc="lower left")  # one legend: the CCDF's lower left is always empty
    ax_pdf.set_ylabel(r"density $p(\lambda)$")
    ax_cdf.set_ylabel(r"$P(\Lambda \geq \lambda)$")
    ax_pdf.set_title("log-log ESD", fontsize=9)
    ax_cdf.set_title("complementary CDF", fontsize=9)
    # keep the empty far tail of the density from squashing the plot
    positive = np.concatenate([dens[dens > 0], rdens[rdens > 0]]) if rlam.size else dens[dens > 0]
    if positive.size:
        ax_pdf.set_ylim(positive.min() / 3, positive.max() * 3)
    ax_cdf.set_ylim(0.5 / max(lam.size, rlam.size), 1.5)
    return _save(fig, Path(path))


# ----------------------------------------------------------------------------- alpha summary


def plot_alpha_summary(rows: list[dict], path: str | os.PathLike) -> Path:
    """Alpha per layer in row order; failed rows as red x at the bottom; 2 <= alpha <= 6 shaded."""
    n = len(rows)
    from htsr.io import safe_text

    names = _short_names([safe_text(r["name"]) for r in rows])
    alphas = np.array([_finite(r.get("alpha")) if r.get("status") == "success" else None for r in rows],
                      dtype=float)
    ok = np.isfinite(alphas)
    idx = np.arange(n)

    width = float(np.clip(4.0 + 0.13 * n, 8.0, 28.0))
    fig = Figure(figsize=(width, 5.2), layout="constrained")
    ax = fig.subplots()
    ax.axhspan(*ALPHA_BAND, color="#2ca02c", alpha=0.12, lw=0)

    top = max(7.0, float(np.nanmax(alphas)) * 1.08) if ok.any() else 7.0
    cap = 20.0
    clipped = ok & (alphas > cap)
    if top > cap:
        top = cap
    if ok.any():
        shown = np.where(clipped, cap * 0.97, alphas)
        ax.plot(idx, shown, "-", color=_C_DATA, lw=0.8, alpha=0.6)  # NaN (failed) rows break the line
        inside = ok & ~clipped & (alphas >= ALPHA_BAND[0]) & (alphas <= ALPHA_BAND[1])
        outside = ok & ~clipped & ~inside
        ms = 5 if n <= 80 else 3.5
        ax.plot(idx[inside], alphas[inside], "o", color=_C_DATA, ms=ms)
        ax.plot(idx[outside], alphas[outside], "o", color=_C_RAND, ms=ms)
        ax.plot(idx[clipped], shown[clipped], "^", color=_C_RAND, ms=ms + 1)
    failed = ~ok
    if failed.any():
        trans = ax.get_xaxis_transform()  # x in data, y in axes fraction
        ax.plot(idx[failed], np.full(failed.sum(), 0.03), "x", color=_C_FIT, ms=7, mew=2, transform=trans,
                clip_on=False)
    ax.set_ylim(0, top)
    ax.set_xlim(-0.6, n - 0.4)

    step = max(1, math.ceil(n / max(1, int(width * 7.5))))
    ticks = idx[::step]
    ax.set_xticks(ticks)
    fs = 8 if n <= 60 else 7 if n <= 150 else 6
    ax.set_xticklabels([names[i] for i in ticks], rotation=90 if n > 12 else 40, ha="right", va="center",
                       rotation_mode="anchor", fontsize=fs)
    ax.set_ylabel(r"power-law exponent $\alpha$")
    n_fail = int(failed.sum())
    sub = f"{int(ok.sum())} fitted, {n_fail} failed" + (f", 1 in {step} labels shown" if step > 1 else "")
    ax.set_title(f"alpha by layer ({sub})", fontsize=10, loc="left")
    ax.grid(True, axis="y", alpha=0.3)
    handles = [
        Patch(color="#2ca02c", alpha=0.25, label=f"{ALPHA_BAND[0]:g} \u2264 alpha \u2264 {ALPHA_BAND[1]:g}"),
        Line2D([], [], marker="o", ls="", color=_C_DATA, label="alpha in band"),
        Line2D([], [], marker="o", ls="", color=_C_RAND, label="alpha outside band"),
    ]
    if clipped.any():
        handles.append(Line2D([], [], marker="^", ls="", color=_C_RAND, label=f"alpha > {cap:g} (clipped)"))
    if n_fail:
        handles.append(Line2D([], [], marker="x", ls="", mew=2, color=_C_FIT, label="fit failed / no alpha"))
    fig.legend(handles=handles, fontsize=8, loc="outside upper right", ncols=len(handles), frameon=False)
    return _save(fig, Path(path))


# ----------------------------------------------------------------------------- entry point


def _select(rows: list[dict], layers: Iterable[str] | None) -> list[int]:
    """Indices of rows that were analysed (success/failed/error), restricted to ``layers``."""
    idx = [i for i, r in enumerate(rows) if r.get("status") in ("success", "failed", "error")]
    if layers is None:
        return idx
    wanted = {layers} if isinstance(layers, str) else set(layers)
    missing = wanted - {str(rows[i]["name"]) for i in idx}
    if missing:
        log.warning("no analysed row named %s", ", ".join(sorted(missing)))
    return [i for i in idx if rows[i]["name"] in wanted]


def plot_analysis(analysis: Analysis, directory: str | os.PathLike,
                  layers: Iterable[str] | None = None) -> list[Path]:
    """Write one ESD PNG per analysed row with eigenvalues, plus ``alpha_by_layer.png``.

    ``layers`` (row names) restricts both the ESD plots and the summary. ESD files are named
    ``esd_<row index>_<safe name>.png``; returns the written paths, ESDs in row order then the summary.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rows = analysis.rows
    width = max(3, len(str(max(len(rows) - 1, 0))))
    chosen = _select(rows, layers)
    written: list[Path] = []
    for i in chosen:
        row = rows[i]
        name = str(row["name"])
        if row.get("status") not in ("success", "failed") or name not in analysis.evals:
            continue
        path = directory / safe_filename(i, name, width)
        written.append(plot_esd(row, analysis.evals[name], path, analysis.randomized_evals.get(name)))
    summary_rows = [rows[i] for i in chosen]
    if summary_rows:
        written.append(plot_alpha_summary(summary_rows, directory / SUMMARY_NAME))
    else:
        log.warning("no analysed rows to plot in %s", directory)
    log.debug("wrote %d plot(s) to %s", len(written), directory)
    return written
