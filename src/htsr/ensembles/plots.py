"""Pictures of ensembles: accuracy vs diversity and sharpness per method (a comparison), accuracy per corruption
and severity (one ensemble). Matplotlib figures built without pyplot, written with :func:`htsr.io.save_png`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

COLORS = {"deep_ensemble": "#4c72b0", "sam_ensemble": "#dd8452", "sharpbalance": "#55a868"}
LABELS = {"deep_ensemble": "deep ensemble", "sam_ensemble": "SAM ensemble", "sharpbalance": "SharpBalance"}


def plot_comparison(table: Any, path: str | Path, title: str = "") -> Path:
    """Two panels from a comparison's results table (one row per method x seed): ensemble accuracy vs
    disagreement, in distribution (filled) and averaged over corruptions (hollow); and each method's mean
    member worst-case sharpness (bars: mean over seeds, dots: seeds)."""
    from matplotlib.figure import Figure

    from htsr.io import save_png

    ok = table[table["status"] == "ok"] if "status" in table.columns else table
    methods = [m for m in COLORS if m in set(ok["method"])] + sorted(set(ok["method"]) - set(COLORS))
    fig = Figure(figsize=(11, 4.2))
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for m in methods:
        r = ok[ok["method"] == m]
        c = COLORS.get(m, "grey")
        ax1.scatter(r["clean_disagreement"], 100 * r["clean_ensemble_accuracy"], color=c, marker="o",
                    label=f"{LABELS.get(m, m)} (clean)")
        ax1.scatter(r["ood_disagreement"], 100 * r["ood_ensemble_accuracy"], facecolors="none", edgecolors=c,
                    marker="s", label=f"{LABELS.get(m, m)} (corrupted)")
    ax1.set_xlabel("disagreement between members")
    ax1.set_ylabel("ensemble accuracy (%)")
    ax1.set_title("accuracy vs diversity (one point per seed)")
    ax1.legend(fontsize=7)
    col = "sharpness_p2" if "sharpness_p2" in ok.columns else next(
        (c for c in ok.columns if str(c).startswith("sharpness_p")), None)
    if col is not None:
        for i, m in enumerate(methods):
            v = ok[ok["method"] == m][col].astype(float).to_numpy()
            c = COLORS.get(m, "grey")
            ax2.bar(i, np.nanmean(v), color=c, alpha=0.6, yerr=np.nanstd(v, ddof=1) if v.size > 1 else None,
                    capsize=4)
            ax2.scatter(np.full(v.size, i), v, color="k", s=10, zorder=3)
        ax2.set_xticks(range(len(methods)), [LABELS.get(m, m) for m in methods])
        ax2.set_ylabel(f"mean member worst-case sharpness ({col.replace('sharpness_', '')})")
        ax2.set_title("adaptive worst-case sharpness (APGD)")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_png(fig, path)


def plot_evaluation(ev: dict[str, Any], path: str | Path, title: str = "") -> Path:
    """Ensemble accuracy against severity for each corruption family, with the clean accuracy as a line."""
    from matplotlib.figure import Figure

    from htsr.io import save_png

    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    cmap = __import__("matplotlib").colormaps["tab20"]
    for i, (fam, sev) in enumerate(ev["ood"]["by_family"].items()):
        xs = sorted(int(s) for s in sev)
        ax.plot(xs, [100 * sev[str(s)]["ensemble_accuracy"] for s in xs], marker="o", ms=3, color=cmap(i % 20),
                label=fam)
    ax.axhline(100 * ev["clean"]["ensemble_accuracy"], color="k", ls="--", label="clean")
    ax.set_xlabel("severity")
    ax.set_ylabel("ensemble accuracy (%)")
    ax.legend(fontsize=6, ncol=2)
    ax.set_title(title or "ensemble accuracy under corruption", fontsize=9)
    fig.tight_layout()
    return save_png(fig, path)
