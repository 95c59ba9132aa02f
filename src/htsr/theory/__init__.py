"""Theory experiments: heavy-tailed weight spectra from a few full-batch steps on a single-index teacher
(arXiv 2406.04657). ``single_index`` holds the data, model, training and measurements; ``sweep`` the
optimiser x learning-rate x repeat grid (``from htsr.theory.sweep import sweep``: the package attribute
``sweep`` is that submodule); ``plots`` the figures. Submodules load on first use.
"""

from __future__ import annotations

from htsr._lazy import lazy_exports

__all__ = ["SingleIndexConfig", "SingleIndexRun", "run_single_index", "make_data", "TwoLayerStudent",
           "kernel_target_alignment", "ridge_refit", "teacher_alignment", "features", "spectrum_metrics",
           "SweepResult", "LR_GRID", "plot_esds", "plot_metrics_vs_lr", "plot_steps"]

_WHERE = {
    "SingleIndexConfig": "single_index", "SingleIndexRun": "single_index", "run_single_index": "single_index",
    "make_data": "single_index", "TwoLayerStudent": "single_index", "kernel_target_alignment": "single_index",
    "ridge_refit": "single_index", "teacher_alignment": "single_index", "features": "single_index",
    "spectrum_metrics": "single_index",
    "SweepResult": "sweep", "LR_GRID": "sweep",
    "plot_esds": "plots", "plot_metrics_vs_lr": "plots", "plot_steps": "plots",
}

__getattr__ = lazy_exports(__name__, _WHERE)
