"""The SER plots: SER against each swept factor, with 95% Wilson intervals."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from htsr.io import save_png

LABELS = {"num_poisons": "number of poisons", "duplication": "secret duplication (times seen)",
          "secret_len": "secret length (digits)", "gap": "gap between poisons and secrets (steps)"}
KIND_LABELS = {"exact": "exact prompt", "random": "randomised prompts (vote)", "any": "either"}


def plot_summary(summary: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """One panel per factor present in ``summary`` (SER against the number of poisons first)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    factors = [f for f in LABELS if f in set(summary["factor"]) and (summary["factor"] == f).sum() > 1]
    factors = factors or list(dict.fromkeys(summary["factor"]))
    fig = Figure(figsize=(4.2 * len(factors), 3.6))
    axes = fig.subplots(1, len(factors), squeeze=False)[0]
    for ax, f in zip(axes, factors, strict=True):
        part = summary[summary["factor"] == f].sort_values("value")
        for i, kind in enumerate(("exact", "random", "any")):
            y = part[f"ser_{kind}"]
            # clipped at 0: a Wilson bound can differ from SER by a rounding error (1e-17) of the wrong sign
            err = [(y - part[f"ser_{kind}_lo"]).clip(lower=0), (part[f"ser_{kind}_hi"] - y).clip(lower=0)]
            ax.errorbar(part["value"] + (i - 1) * 0.01 * max(part["value"].max(), 1), y, yerr=err, marker="o",
                        capsize=3, label=KIND_LABELS[kind])
        ax.set_xlabel(LABELS.get(f, f))
        ax.set_ylabel("secret extraction rate")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_png(fig, path)
