"""Sweeps of (recipe, method, fraction, seed) cells with a resumable result store and pluggable executors.

``store.ResultStore`` keeps one row per finished cell (CSV, rewritten atomically through :mod:`htsr.io` after
every cell) plus an optional JSON side file per cell; ``sweep.run_sweep`` runs the cells the store does not
have yet on an executor (``LocalExecutor``: serial, in process).
"""

from __future__ import annotations

from htsr.experiments.store import ResultStore, cell_key
from htsr.experiments.sweep import Cell, LocalExecutor, grid, run_sweep, summarize

__all__ = ["Cell", "LocalExecutor", "ResultStore", "cell_key", "grid", "run_sweep", "summarize"]
