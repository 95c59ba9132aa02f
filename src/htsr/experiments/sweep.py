"""Run a grid of cells through an executor into a :class:`~htsr.experiments.store.ResultStore`.

A cell function takes the cell's parameters as keyword arguments and returns ``(metrics, details)``: a flat
dict of numbers/strings for the table and a JSON-able dict (or None) for the side file. Executors share one
interface, ``map(fn, cells)`` yielding ``(cell, result_or_exception)`` as cells finish; ``LocalExecutor`` is the
embedded serial one (a Ray executor can implement the same method).
"""

from __future__ import annotations

import itertools
import logging
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from htsr.errors import ConfigError
from htsr.experiments.executors import LocalExecutor, make_executor  # noqa: F401  (LocalExecutor re-exported)
from htsr.experiments.store import ResultStore, cell_key
from htsr.progress import progress_bar

log = logging.getLogger(__name__)

CellFn = Callable[..., tuple[Mapping[str, Any], Mapping[str, Any] | None]]


@dataclass(frozen=True)
class Cell:
    """One point of a sweep: its parameters and its store key."""

    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return cell_key(self.params)


def grid(**axes: Sequence[Any]) -> list[Cell]:
    """The Cartesian product of the axes, in the order given (last axis fastest)."""
    for k, v in axes.items():
        if isinstance(v, str) or not isinstance(v, Sequence) or not len(v):
            raise ConfigError(f"grid axis {k!r} must be a non-empty list, got {v!r}")
    names = list(axes)
    return [Cell(dict(zip(names, combo, strict=True))) for combo in itertools.product(*axes.values())]


def run_sweep(fn: CellFn, cells: Sequence[Cell], store: ResultStore, *, executor: Any = None,
              extra: Mapping[str, Any] | None = None, progress: bool | None = None,
              max_cells: int | None = None, on_row: Callable[[dict[str, Any]], None] | None = None
              ) -> pd.DataFrame:
    """Run every cell not already done in ``store`` and record each as it finishes; returns the store's table
    with ``attrs`` ``n_cells``, ``n_resumed`` (already done) and ``n_run`` (run by this call).

    ``executor``: ``None``/``"local"`` (in this process), ``"ray"`` (a local Ray instance), or an executor object
    (:class:`~htsr.experiments.executors.RayExecutor` with an address and resources). Results are recorded by
    this process as they arrive, whichever worker computed them, so an interrupted sweep resumes where it stopped.
    ``extra``: constant columns added to each row (e.g. ``config_id``) and to the key, so a changed
    configuration does not resume from old rows. ``max_cells``: run at most that many of the cells left (a
    time box; the next call continues). ``on_row(row)``: called with each recorded row as it arrives (to print
    or save partial results).
    """
    if max_cells is not None and (isinstance(max_cells, bool) or not isinstance(max_cells, int) or max_cells < 0):
        raise ConfigError(f"max_cells must be an integer >= 0 or None, got {max_cells!r}")
    own = executor is None or isinstance(executor, str)
    if own:
        executor = make_executor(executor or "local")
    extra = dict(extra or {})
    todo = [c for c in cells if not store.done(cell_key({**c.params, **extra}))]
    n_resumed = len(cells) - len(todo)
    if max_cells is not None:
        todo = todo[:max_cells]
    log.info("sweep: %d cell(s), %d already done, %d to run", len(cells), n_resumed, len(todo))
    bar = progress_bar(progress, total=len(todo), desc="sweep", unit="cell")
    try:
        for cell, result in executor.map(_Timed(fn), todo):
            params = {**cell.params, **extra}
            key = cell_key(params)
            if isinstance(result, BaseException):
                tb = "".join(traceback.format_exception(result))
                row = store.add(key, params, {"status": "error", "error": f"{type(result).__name__}: {result}"},
                                {"traceback": tb})
            else:
                (metrics, details), wall = result
                row = store.add(key, params, {**metrics, "status": "ok", "wall_s": wall}, details)
            if on_row is not None:
                on_row(row)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        if own:
            executor.close()
    table = store.table()
    table.attrs.update(n_cells=len(cells), n_resumed=n_resumed, n_run=len(todo))
    return table


class _Timed:
    """``fn`` returning ``(its result, its own wall time in seconds)``: the cell's time wherever it ran (a
    picklable callable, so any executor can ship it)."""

    def __init__(self, fn: CellFn) -> None:
        self.fn = fn

    def __call__(self, **params: Any) -> tuple[Any, float]:
        t0 = time.perf_counter()
        out = self.fn(**params)
        return out, time.perf_counter() - t0


def summarize(table: pd.DataFrame, metric: str, by: Sequence[str] = ("recipe", "method", "fraction")
              ) -> pd.DataFrame:
    """Mean, standard deviation (ddof=1), min, max and count of ``metric`` over successful rows per group.

    Rows of different configurations (a ``config_id`` column) are never pooled: ``config_id`` is added to ``by``
    when the table has it."""
    if table.empty or metric not in table.columns:
        raise ConfigError(f"no column {metric!r} in the results (columns: {list(table.columns)})")
    ok = table[table["status"] == "ok"] if "status" in table.columns else table
    by = list(by)
    if "config_id" in ok.columns and "config_id" not in by:
        by.insert(1 if by and by[0] == "recipe" else 0, "config_id")
    g = ok.groupby(by)[metric]
    out = g.agg(mean="mean", std=lambda s: float(np.std(s, ddof=1)) if len(s) > 1 else float("nan"),
                min="min", max="max", n="count").reset_index()
    return out
