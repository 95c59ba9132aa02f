"""Sweeps and the resumable result store."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from htsr.errors import ConfigError
from htsr.experiments import Cell, LocalExecutor, ResultStore, cell_key, grid, run_sweep, summarize
from htsr.experiments.store import config_id


def _cell_fn(calls):
    def fn(fraction, seed, method):
        calls.append((fraction, seed, method))
        if method == "bad":
            raise RuntimeError("boom")
        score = fraction * 10 + seed + (0.5 if method == "tb" else 0.0)
        return {"score": score}, {"trace": [seed, fraction]}

    return fn


def test_grid_order_and_keys():
    cells = grid(fraction=[1.0, 0.5], seed=[0, 1], method=["a"])
    assert [c.params for c in cells][:2] == [{"fraction": 1.0, "seed": 0, "method": "a"},
                                             {"fraction": 1.0, "seed": 1, "method": "a"}]
    assert len(cells) == 4 and len({c.key for c in cells}) == 4
    assert cell_key({"b": 1, "a": 0.25}) == "a=0.25__b=1"
    with pytest.raises(ConfigError, match="non-empty list"):
        grid(seed=[])
    with pytest.raises(ConfigError, match="non-empty list"):
        grid(method="tb")


def test_sweep_records_every_cell_and_resumes_after_interrupt(tmp_path):
    cells = grid(fraction=[1.0, 0.5], seed=[0, 1, 2], method=["baseline", "tb"])
    calls: list = []
    inner = _cell_fn(calls)

    def interrupted(fraction, seed, method):
        if len(calls) == 5:
            raise KeyboardInterrupt  # the user pressed Ctrl-C during the 6th cell
        return inner(fraction, seed, method)

    store = ResultStore(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(interrupted, cells, store, extra={"recipe": "toy"}, progress=False)
    on_disk = pd.read_csv(tmp_path / "results.csv")
    assert len(on_disk) == 5 and (on_disk["status"] == "ok").all()
    calls.clear()
    table = run_sweep(inner, cells, ResultStore(tmp_path), extra={"recipe": "toy"}, progress=False)
    assert len(calls) == 7  # only the missing cells ran
    assert len(table) == 12 and set(table["recipe"]) == {"toy"}
    det = ResultStore(tmp_path).details(cell_key({**cells[0].params, "recipe": "toy"}))
    assert det["trace"] == [0, 1.0] and det["metrics"]["score"] == 10.0


def test_failed_cells_are_recorded_and_retried(tmp_path):
    calls: list = []
    fn = _cell_fn(calls)
    cells = grid(fraction=[1.0], seed=[0], method=["tb", "bad"])
    table = run_sweep(fn, cells, ResultStore(tmp_path), progress=False)
    bad = table[table["method"] == "bad"].iloc[0]
    assert bad["status"] == "error" and "boom" in bad["error"]
    assert "RuntimeError" in json.loads((tmp_path / "cells" / f"{bad['key']}.json").read_text())["traceback"]
    calls.clear()
    run_sweep(fn, cells, ResultStore(tmp_path), progress=False)
    assert calls == [(1.0, 0, "bad")]  # the failed cell is retried, the finished one is not


def test_changed_config_does_not_resume_old_rows(tmp_path):
    calls: list = []
    cells = [Cell({"fraction": 1.0, "seed": 0, "method": "tb"})]
    run_sweep(_cell_fn(calls), cells, ResultStore(tmp_path), extra={"config_id": config_id({"lr": 0.1})},
              progress=False)
    run_sweep(_cell_fn(calls), cells, ResultStore(tmp_path), extra={"config_id": config_id({"lr": 0.2})},
              progress=False)
    assert len(calls) == 2 and len(ResultStore(tmp_path)) == 2
    assert config_id({"a": 1, "b": 2}) == config_id({"b": 2, "a": 1})


def test_summarize_mean_std_over_seeds(tmp_path):
    table = run_sweep(_cell_fn([]), grid(fraction=[1.0, 0.5], seed=[0, 1, 2], method=["baseline", "tb"]),
                      ResultStore(tmp_path), extra={"recipe": "toy"}, executor=LocalExecutor(), progress=False)
    s = summarize(table, "score")
    row = s[(s["method"] == "tb") & (s["fraction"] == 0.5)].iloc[0]
    assert row["mean"] == pytest.approx(6.5) and row["std"] == pytest.approx(1.0) and row["n"] == 3
    assert row["min"] == 5.5 and row["max"] == 7.5
    with pytest.raises(ConfigError, match="no column"):
        summarize(table, "accuracy")
    one = summarize(table[table["seed"] == 0], "score")
    assert math.isnan(one["std"].iloc[0])


def test_store_rejects_a_file_path(tmp_path):
    f = tmp_path / "x"
    f.write_text("")
    with pytest.raises(ConfigError, match="not a directory"):
        ResultStore(f)


def test_max_cells_time_boxes_a_sweep_and_attrs_count_the_cells(tmp_path):
    cells = grid(fraction=[1.0, 0.5], seed=[0, 1, 2], method=["tb"])
    calls: list = []
    fn = _cell_fn(calls)
    t = run_sweep(fn, cells, ResultStore(tmp_path), max_cells=4, progress=False)
    assert calls == [(c.params["fraction"], c.params["seed"], "tb") for c in cells[:4]]  # the first 4, in order
    assert len(t) == 4 and t.attrs == {"n_cells": 6, "n_resumed": 0, "n_run": 4}
    t = run_sweep(fn, cells, ResultStore(tmp_path), max_cells=0, progress=False)
    assert len(calls) == 4 and t.attrs == {"n_cells": 6, "n_resumed": 4, "n_run": 0}
    t = run_sweep(fn, cells, ResultStore(tmp_path), progress=False)
    assert len(calls) == 6 and t.attrs == {"n_cells": 6, "n_resumed": 4, "n_run": 2} and len(t) == 6
    for bad in (-1, 1.5, True):
        with pytest.raises(ConfigError, match="max_cells must be an integer >= 0"):
            run_sweep(fn, cells, ResultStore(tmp_path), max_cells=bad)
