"""Sweeps of (recipe, method, fraction, seed) cells with a resumable result store and pluggable executors.

``store.ResultStore`` keeps one row per finished cell (CSV, rewritten atomically through :mod:`htsr.io` after
every cell) plus an optional JSON side file per cell; ``sweep.run_sweep`` runs the cells the store does not
have yet on an executor (``LocalExecutor``: serial, in process, the default; ``RayExecutor``: one Ray task per
cell, ``pip install 'htsr[ray]'``).
"""

from __future__ import annotations

from htsr.experiments.executors import EXECUTORS, LocalExecutor, RayExecutor, make_executor
from htsr.experiments.store import ResultStore, cell_key
from htsr.experiments.sweep import Cell, grid, run_sweep, summarize

__all__ = ["EXECUTORS", "Cell", "LocalExecutor", "RayExecutor", "ResultStore", "cell_key", "grid", "make_executor",
           "run_sweep", "summarize"]
