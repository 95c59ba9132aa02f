"""Phase diagrams: heat maps over temperature (x, coldest to hottest) x density (y) of mc, CKA, test error,
normalised test error and the regime, as PNG files (matplotlib, Agg canvas, written atomically by
:func:`htsr.io.save_png`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from htsr.regimes.config import KNOBS, REGIMES

PANELS = {
    "mc": ("mode connectivity mc (train error)", "RdBu", None),
    "cka": ("CKA of outputs (logits)", "viridis", None),
    "test_error": ("test error", "magma_r", None),
    "normalised_error": ("normalised test error", "magma_r", None),
    "regime": ("regime", None, None),
}
_REGIME_COLOURS = {"I": "#d95f02", "II-A": "#7570b3", "II-B": "#1b9e77", "": "#ffffff"}


def _grid(table: pd.DataFrame, column: str) -> tuple[np.ndarray, list, list]:
    temps = table.sort_values("heat")["temperature"].drop_duplicates().tolist()
    dens = sorted(table["density"].unique())
    z = np.full((len(dens), len(temps)), np.nan, dtype=object if column == "regime" else float)
    for _, r in table.iterrows():
        z[dens.index(r["density"]), temps.index(r["temperature"])] = r[column]
    return z, temps, dens


def _fmt(v: float) -> str:
    return f"{v:g}"


def draw(ax, table: pd.DataFrame, column: str, knob: str) -> None:
    """One heat map of ``column`` on a matplotlib axis, values written in the cells."""
    title, cmap, lims = PANELS.get(column, (column, "viridis", None))
    z, temps, dens = _grid(table, column)
    if column == "regime":
        from matplotlib.colors import ListedColormap

        codes = np.vectorize(lambda s: (REGIMES.index(s) if s in REGIMES else np.nan), otypes=[float])(z)
        ax.imshow(codes, cmap=ListedColormap([_REGIME_COLOURS[r] for r in REGIMES]), vmin=-0.5, vmax=2.5,
                  origin="lower", aspect="auto")
        for i in range(z.shape[0]):
            for j in range(z.shape[1]):
                ax.text(j, i, z[i, j] or "?", ha="center", va="center", fontsize=8, color="white")
    else:
        zf = z.astype(float)
        if column == "mc":
            m = np.nanmax(np.abs(zf)) if np.isfinite(zf).any() else 1.0
            lims = (-max(m, 1e-6), max(m, 1e-6))
        im = ax.imshow(zf, cmap=cmap, origin="lower", aspect="auto", vmin=lims[0] if lims else None,
                       vmax=lims[1] if lims else None)
        ax.figure.colorbar(im, ax=ax, shrink=0.8)
        for i in range(zf.shape[0]):
            for j in range(zf.shape[1]):
                if np.isfinite(zf[i, j]):
                    ax.text(j, i, f"{zf[i, j]:.3f}" if column != "mc" else f"{zf[i, j]:+.3f}", ha="center",
                            va="center", fontsize=7, color="black",
                            bbox={"boxstyle": "round,pad=0.1", "fc": "white", "alpha": 0.5, "lw": 0})
    ax.set_xticks(range(len(temps)), [_fmt(t) for t in temps])
    ax.set_yticks(range(len(dens)), [_fmt(d) for d in dens])
    hot = "fewer" if knob == "epochs" else "smaller" if knob == "batch_size" else "larger"
    ax.set_xlabel(f"{knob} (temperature: hotter to the right = {hot})")
    ax.set_ylabel("density (fraction kept)")
    ax.set_title(title, fontsize=9)


def phase_diagrams(classified: pd.DataFrame, out_dir: str | Path, *, title: str = "") -> list[Path]:
    """One PNG per panel (``<column>.png``) and all panels in ``phase.png``, in ``out_dir``; returns the paths."""
    from matplotlib.figure import Figure

    from htsr.io import save_png

    knob = str(classified["knob"].iloc[0]) if "knob" in classified.columns else "epochs"
    if knob not in KNOBS:
        knob = "epochs"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cols = [c for c in PANELS if c in classified.columns]
    paths = []
    for c in cols:
        fig = Figure(figsize=(5.2, 3.8))
        draw(fig.add_subplot(1, 1, 1), classified, c, knob)
        if title:
            fig.suptitle(title, fontsize=8)
        fig.tight_layout()
        paths.append(save_png(fig, out / f"{c}.png"))
    fig = Figure(figsize=(5.0 * len(cols), 4.0))
    for i, c in enumerate(cols):
        draw(fig.add_subplot(1, len(cols), i + 1), classified, c, knob)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    paths.append(save_png(fig, out / "phase.png"))
    return paths
