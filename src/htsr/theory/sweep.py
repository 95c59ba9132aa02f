"""The optimiser x learning-rate x repeat grid of the single-index study, as pandas tables.

Every run of one repeat shares the same teacher, data and initial weights (drawn once from ``seed + repeat``), so
differences between rates and optimisers are paired; the initial measurement is computed once per repeat.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from htsr.errors import ConfigError
from htsr.io import atomic_write, write_json, write_table
from htsr.theory.single_index import (
    OPTIMIZERS,
    SingleIndexConfig,
    make_data,
    measure,
    onsets,
    run_single_index,
)
from htsr.training import TrainingError

log = logging.getLogger(__name__)

#: The paper's learning-rate grid (``configs/bulk_lr.yml``), used for both GD and Adam.
LR_GRID: tuple[float, ...] = (1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0, 1000.0, 2000.0, 3000.0)
SCHEMA = "htsr.theory.single_index/1"
#: Columns averaged over repeats in :meth:`SweepResult.summary`.
SUMMARY_COLUMNS = ("alpha_hill", "alpha_ks", "alignment", "kta", "ridge_train_loss", "ridge_test_loss",
                   "student_train_loss", "spike_ratio", "n_spikes", "spike_step", "tail_step", "time_s")


@dataclass
class SweepResult:
    """``history``: every measured step of every run; ``table``: one row per run (its last step, the onsets of
    spike and tail, status, time); ``evals[(optimizer, lr, repeat)][step]``: kept eigenvalues."""

    base: SingleIndexConfig
    optimizers: tuple[str, ...]
    lrs: tuple[float, ...]
    repeats: int
    history: pd.DataFrame
    table: pd.DataFrame
    evals: dict[tuple[str, float, int], dict[int, np.ndarray]] = field(default_factory=dict)
    time_s: float = 0.0

    def summary(self) -> pd.DataFrame:
        """Mean and standard deviation (``<col>_std``, ddof 1; NaN for one repeat) over repeats, plus the init row
        (``optimizer="init"``, ``lr=0``) averaged over repeats."""
        ok = self.table[self.table["status"] == "ok"]
        cols = [c for c in SUMMARY_COLUMNS if c in ok.columns]
        g = ok.groupby(["optimizer", "lr"], sort=False)[cols]
        mean, std = g.mean(), g.std(ddof=1).add_suffix("_std")
        out = mean.join(std).reset_index()
        out.insert(2, "n_runs", g.size().to_numpy())
        init = self.history[self.history["step"] == 0].drop_duplicates("repeat")
        init_row = {"optimizer": "init", "lr": 0.0, "n_runs": len(init)}
        for c in cols:
            if c in init.columns:
                init_row[c] = float(init[c].mean())
        return pd.concat([pd.DataFrame([init_row]), out], ignore_index=True)

    def save(self, directory: str | Path) -> list[Path]:
        """Write ``runs.csv``, ``history.csv``, ``summary.csv``, ``results.json`` and ``esd.npz`` (kept eigenvalues)
        atomically into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        summary = self.summary()
        paths = [write_table(directory / "runs.csv", self.table), write_table(directory / "history.csv", self.history),
                 write_table(directory / "summary.csv", summary)]
        paths.append(write_json(directory / "results.json", {
            "schema": SCHEMA, "base_config": self.base.as_dict(), "optimizers": list(self.optimizers),
            "lrs": list(self.lrs), "repeats": self.repeats, "time_s": self.time_s,
            "summary": summary.to_dict(orient="records"), "runs": self.table.to_dict(orient="records"),
        }))
        arrays = {f"{o}_lr{lr:g}_r{r}_step{s}": ev for (o, lr, r), d in self.evals.items() for s, ev in d.items()}

        def w(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, **arrays)

        paths.append(atomic_write(directory / "esd.npz", w))
        return paths


def _check_grid(optimizers: Sequence[str], lrs: Sequence[float], repeats: int) -> tuple[tuple[str, ...], tuple]:
    opts = tuple(optimizers)
    if not opts or any(o not in OPTIMIZERS for o in opts):
        raise ConfigError(f"optimizers must be a non-empty subset of {', '.join(OPTIMIZERS)}, got {list(opts)}")
    rates = tuple(float(x) for x in lrs)
    if not rates or any(not (math.isfinite(x) and x > 0) for x in rates):
        raise ConfigError(f"learning rates must be a non-empty list of finite numbers > 0, got {list(lrs)}")
    if not isinstance(repeats, int) or repeats < 1:
        raise ConfigError(f"repeats must be an integer >= 1, got {repeats!r}")
    return opts, rates


@functools.lru_cache(maxsize=1)
def _repeat_data(cfg_r: SingleIndexConfig) -> tuple[Any, Any]:
    """One repeat's data and initial measurement, shared by its runs in this process (the runs of a repeat are
    consecutive cells, so a worker computes them once)."""
    data = make_data(cfg_r)
    return data, measure(data.W0, data, cfg_r)


def single_index_cell(repeat: int, optimizer: str, lr: float, *, base: dict[str, Any],
                      keep_evals: tuple[int, ...] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """One run of the sweep (a cell of :func:`htsr.experiments.run_sweep`, plain values only): repeat ``repeat``
    (seed ``base.seed + repeat``), the optimiser and rate. Returns (its table row, {history, eigenvalues}); a
    diverged run (:class:`~htsr.training.TrainingError`) is a result too: a row with its ``diverged`` reason."""
    cfg_r = SingleIndexConfig.from_dict(base).replace(seed=int(base.get("seed", 0)) + int(repeat))
    data, init = _repeat_data(cfg_r)
    cfg = cfg_r.replace(optimizer=optimizer, lr=float(lr))
    try:
        run = run_single_index(cfg, data, keep_evals=keep_evals, init=init)
    except TrainingError as e:
        return {"seed": cfg.seed, "diverged": str(e)}, {"history": [], "evals": {}}
    row: dict[str, Any] = {"seed": cfg.seed}
    row.update({k: v for k, v in run.final.items() if k not in ("optimizer", "lr", "repeat", "seed", "status",
                                                                  "reason")})
    row.update(onsets(run.history))
    row["measure_time_s"] = run.measure_time_s
    details = {"history": run.history.to_dict(orient="records"),
               "evals": {str(step): np.asarray(ev, dtype=float).tolist() for step, ev in run.evals.items()}}
    return row, details


def sweep(base: SingleIndexConfig | None = None, optimizers: Sequence[str] = OPTIMIZERS,
          lrs: Sequence[float] = LR_GRID, repeats: int = 1, *, keep_evals: Sequence[int] | None = (0, 1, -1),
          progress: bool | None = None, on_run: Callable[[dict[str, Any]], None] | None = None,
          executor: Any = None) -> SweepResult:
    """Run every (optimizer, lr, repeat) with ``base``'s other settings; repeat ``r`` uses seed ``base.seed + r``.

    Each run is a cell of :func:`htsr.experiments.run_sweep` (``executor``: ``None``/``"local"`` in this process,
    ``"ray"`` or a Ray executor). A run whose loss becomes non-finite is kept in ``table`` with
    ``status="diverged"`` and its reason. ``on_run`` is called with each run's table row as it finishes (for
    logging). ``progress``: a tqdm bar over runs (default: when stderr is a terminal).
    """
    import tempfile

    from htsr.experiments import ResultStore, grid, run_sweep

    base = base or SingleIndexConfig()
    opts, rates = _check_grid(optimizers, lrs, repeats)
    keep = None if keep_evals is None else tuple(int(k) for k in keep_evals)
    fn = functools.partial(single_index_cell, base=base.to_dict(), keep_evals=keep)
    cells = grid(repeat=list(range(repeats)), optimizer=list(opts), lr=list(rates))
    t0 = time.perf_counter()
    histories, rows, evals = [], [], {}

    with tempfile.TemporaryDirectory(prefix="htsr-single-index-") as tmp:
        store = ResultStore(tmp)

        def record(r: dict[str, Any]) -> None:
            opt, lr, rep = r["optimizer"], float(r["lr"]), int(r["repeat"])
            row: dict[str, Any] = {"optimizer": opt, "lr": lr, "repeat": rep, "seed": base.seed + rep}
            if r.get("status") == "ok" and isinstance(r.get("diverged"), str):
                row.update(status="diverged", reason=r["diverged"])
            elif r.get("status") == "ok":
                row.update(status="ok", reason="")
                row.update({k: v for k, v in r.items() if k not in ("key", "status", "wall_s", *row)})
                d = store.details(r["key"])
                h = pd.DataFrame(d["history"])
                h.insert(2, "repeat", rep)
                histories.append(h)
                evals[(opt, lr, rep)] = {int(k): np.asarray(v) for k, v in d["evals"].items()}
            else:
                row.update(status="error", reason=str(r.get("error", "")))
            row["time_s"] = r.get("wall_s", math.nan)
            rows.append(row)
            if on_run is not None:
                on_run(row)

        run_sweep(fn, cells, store, executor=executor, progress=progress, on_row=record)
    # cells finish in any order on a parallel executor: tables in grid order (repeat, optimizer, rate)
    order = {(c.params["repeat"], c.params["optimizer"], float(c.params["lr"])): i for i, c in enumerate(cells)}
    rows.sort(key=lambda r: order[(r["repeat"], r["optimizer"], r["lr"])])
    histories.sort(key=lambda h: order[(int(h["repeat"].iloc[0]), h["optimizer"].iloc[0], float(h["lr"].iloc[0]))])
    history = pd.concat(histories, ignore_index=True) if histories else pd.DataFrame()
    return SweepResult(base, opts, rates, repeats, history, pd.DataFrame(rows), evals, time.perf_counter() - t0)


__all__ = ["LR_GRID", "SCHEMA", "SweepResult", "single_index_cell", "sweep"]
