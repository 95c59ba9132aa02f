"""Sweeps on Ray give the local executor's table; failures, killed workers, interrupts and bad clusters."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pandas as pd
import pytest

from htsr.errors import ConfigError
from htsr.experiments import LocalExecutor, RayExecutor, ResultStore, grid, make_executor, run_sweep

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not import the tests
    yield
    ray.shutdown()


def test_bad_addresses_and_missing_ray(monkeypatch):
    assert not ray.is_initialized()  # runs first: before the module's Ray instance starts
    with pytest.raises(ConfigError, match="cannot reach the Ray cluster at 127.0.0.1:1"):
        RayExecutor(address="127.0.0.1:1")
    with pytest.raises(ConfigError, match="not HOST:PORT"):
        RayExecutor(address="nonsense")
    with pytest.raises(ConfigError, match="unknown executor 'dask'"):
        make_executor("dask")
    with pytest.raises(ConfigError, match="the local executor takes no options"):
        make_executor("local", address="x:1")
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ConfigError, match=r"pip install 'htsr\[ray\]'"):
        RayExecutor()


def square_cell(x: int, y: int) -> tuple[dict, dict]:
    return {"value": x * x + y, "pid_parity": 0}, {"trace": [x, y]}


def failing_cell(x: int, y: int) -> tuple[dict, dict]:
    if x == 1:
        raise ValueError(f"cell x={x} is bad")
    return square_cell(x, y)


def dying_cell(x: int, y: int, marker: str) -> tuple[dict, dict]:
    """Kills its own worker process the first time it runs for x == 0 (a crashed or OOM-killed worker)."""
    m = Path(marker) / f"{x}-{y}"
    if x == 0 and not m.exists():
        m.write_text("died once")
        os.kill(os.getpid(), signal.SIGKILL)
    return square_cell(x, y)


def _clean(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=["wall_s"], errors="ignore").sort_values("key").reset_index(drop=True)


def test_ray_sweep_equals_local(tmp_path, local_ray):
    cells = grid(x=[0, 1, 2, 3], y=[10, 20])
    local = run_sweep(square_cell, cells, ResultStore(tmp_path / "local"), executor=LocalExecutor())
    with RayExecutor() as ex:
        remote = run_sweep(square_cell, cells, ResultStore(tmp_path / "ray"), executor=ex)
    pd.testing.assert_frame_equal(_clean(local), _clean(remote))
    assert ResultStore(tmp_path / "ray").details("x=3__y=20")["trace"] == [3, 20]
    assert (remote.wall_s >= 0).all()


def test_a_failing_cell_is_reported_with_its_cell_and_the_rest_completes(tmp_path, local_ray):
    cells = grid(x=[0, 1, 2], y=[0])
    table = run_sweep(failing_cell, cells, ResultStore(tmp_path), executor=RayExecutor())
    bad = table[table.status == "error"]
    assert list(bad.x) == [1] and "ValueError: cell x=1 is bad" in bad.error.iloc[0]
    assert sorted(table[table.status == "ok"].x) == [0, 2]


def test_a_killed_worker_task_is_retried(tmp_path, local_ray):
    marker = tmp_path / "markers"
    marker.mkdir()
    cells = grid(x=[0, 1], y=[5], marker=[str(marker)])
    table = run_sweep(dying_cell, cells, ResultStore(tmp_path / "s"), executor=RayExecutor(max_retries=2))
    assert (table.status == "ok").all() and sorted(table.value) == [5, 6]
    assert (marker / "0-5").read_text() == "died once"


class _InterruptAfter:
    """An executor whose driver is interrupted (Ctrl-C) after ``n`` results."""

    def __init__(self, inner, n: int) -> None:
        self.inner, self.n = inner, n

    def map(self, fn, cells):
        for i, item in enumerate(self.inner.map(fn, cells)):
            if i == self.n:
                raise KeyboardInterrupt
            yield item


def test_resume_after_interrupting_the_driver(tmp_path, local_ray):
    cells = grid(x=[0, 1, 2, 3, 4], y=[1])
    with pytest.raises(KeyboardInterrupt):
        run_sweep(square_cell, cells, ResultStore(tmp_path / "s"), executor=_InterruptAfter(RayExecutor(), 2))
    assert len(ResultStore(tmp_path / "s")) == 2
    resumed = run_sweep(square_cell, cells, ResultStore(tmp_path / "s"), executor=RayExecutor())
    full = run_sweep(square_cell, cells, ResultStore(tmp_path / "full"), executor=LocalExecutor())
    pd.testing.assert_frame_equal(_clean(resumed), _clean(full))


def test_missing_resources_and_version_mismatch_are_clear_errors(local_ray, monkeypatch):
    with pytest.raises(ConfigError, match="no node of the Ray cluster can run a task needing 1 CPU and 4 GPU"):
        RayExecutor(num_gpus=4)
    with pytest.raises(ConfigError, match="no node of the Ray cluster can run a task needing 64 CPU"):
        RayExecutor(num_cpus=64)
    import htsr._version

    monkeypatch.setattr(htsr._version, "__version__", "0.0.0-driver")
    with pytest.raises(ConfigError, match=r"Ray nodes run other versions than this driver \(htsr 0.0.0-driver"):
        RayExecutor()


def _sharded(tmp_path: Path) -> Path:
    import json

    import torch
    from safetensors.torch import save_file

    tmp_path.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    wm = {}
    for s in range(3):
        t = {f"model.layers.{2 * s + i}.mlp.w{j}.weight": torch.randn(80 + 8 * j, 48, generator=g)
             for i in range(2) for j in range(3)}
        t[f"model.layers.{2 * s}.norm.weight"] = torch.ones(48)
        fn = f"model-{s + 1:05d}-of-00003.safetensors"
        save_file(t, tmp_path / fn)
        wm.update({k: fn for k in t})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}))
    return tmp_path


def test_distributed_analysis_is_identical_to_the_local_one(tmp_path, local_ray, capsys):
    import numpy as np

    import htsr
    from htsr.cli.main import main

    src = _sharded(tmp_path / "m")
    local = htsr.analyze(src, randomize=True)
    remote = htsr.analyze(src, randomize=True, executor=RayExecutor())
    pd.testing.assert_frame_equal(local.to_pandas().drop(columns="time_s"), remote.to_pandas().drop(columns="time_s"))
    assert len(local) == 18 and remote.metadata["executor"] == "ray" and remote.metadata["parts"] > 1
    for k in local.evals:
        np.testing.assert_array_equal(local.evals[k], remote.evals[k])
        np.testing.assert_array_equal(local.randomized_evals[k], remote.randomized_evals[k])
    assert main(["analyze", str(src), "--executor", "ray", "-q", "-o", str(tmp_path / "a.json")]) == 0
    assert "18/18 layers fitted" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="needs a checkpoint path"):
        htsr.analyze({"w": np.ones((4, 4))}, executor=RayExecutor())


def test_split_parts_balances_contiguous_slices():
    from htsr.spectra.distributed import split_parts

    assert split_parts([10, 10, 10, 10], 2) == [slice(0, 2), slice(2, 4)]
    assert split_parts([100, 1, 1, 1], 3) == [slice(0, 1), slice(1, 2), slice(2, 4)]
    assert split_parts([5], 8) == [slice(0, 1)] and split_parts([], 3) == []
    parts = split_parts(list(range(1, 50)), 7)
    assert [i for s in parts for i in range(s.start, s.stop)] == list(range(49)) and len(parts) <= 7


def test_tinymem_compare_on_ray_gives_the_local_table(tmp_path, local_ray, capsys):
    """Each TinyMem method is a sweep cell; a Ray worker loads the saved base model from disk and gives the same
    numbers as the in-process run (the methods are deterministic on the CPU)."""
    from htsr.cli.main import main

    data = ["--preset", "tiny", "--set", "data.n_main=200", "--set", "data.n_aux=100", "--set", "data.n_test=20",
            "--data", "n_noise=6", "--set", "data.dup=[40]", "--layers", "1", "--epochs", "3", "--threads", "1"]
    base = tmp_path / "base"
    assert main(["tinymem", "train", *data, "--out-dir", str(base)]) == 0
    tables = {}
    for ex in ("local", "ray"):
        out = tmp_path / ex
        assert main(["tinymem", "compare", "--base", str(base), "--methods", "durable,finetune_clean",
                     "--ft-epochs", "1", "--retain-size", "32", "--out-dir", str(out), "--executor", ex]) == 0
        tables[ex] = pd.read_csv(out / "table.csv").set_index("method")
        cells = pd.read_csv(out / "methods" / "results.csv")
        assert sorted(cells["method"]) == ["durable", "finetune_clean"] and set(cells["status"]) == {"ok"}
    cols = ["mem_before", "mem_after", "acc_before", "acc_after", "score"]
    pd.testing.assert_frame_equal(tables["local"][cols], tables["ray"][cols])
    assert list(tables["ray"].index) == ["base", "durable", "finetune_clean"]


def test_every_sweep_command_offers_the_executor_choice(capsys):
    from htsr.cli.main import main

    for cmd in (["tempbalance", "compare"], ["tinymem", "compare"], ["sharpbalance", "compare"],
                ["mdtree", "population"], ["analyze"],
                ["theory", "single-index"], ["regimes", "sweep"], ["phish", "sweep"], ["lora", "train"]):
        with pytest.raises(SystemExit):
            main([*cmd, "--help"])
        text = capsys.readouterr().out
        assert "--executor" in text and "--ray-address" in text, cmd


def test_single_index_sweep_on_ray_gives_the_local_tables(local_ray):
    """The single-index study's runs are sweep cells too: on Ray, the same tables and kept eigenvalues."""
    import numpy as np

    from htsr.theory.single_index import SingleIndexConfig
    from htsr.theory.sweep import sweep

    tiny = SingleIndexConfig(n=200, n_test=50, d=40, h=60, steps=3)
    local = sweep(tiny, ("gd", "adam"), (0.01, 1.0), repeats=2, progress=False)
    remote = sweep(tiny, ("gd", "adam"), (0.01, 1.0), repeats=2, progress=False, executor=RayExecutor())
    drop = ["time_s", "measure_time_s"]
    pd.testing.assert_frame_equal(local.table.drop(columns=drop), remote.table.drop(columns=drop))
    pd.testing.assert_frame_equal(local.history.drop(columns=[c for c in local.history if "time" in c]),
                                  remote.history.drop(columns=[c for c in remote.history if "time" in c]))
    assert local.evals.keys() == remote.evals.keys()
    for k in local.evals:
        for step in local.evals[k]:
            np.testing.assert_array_equal(local.evals[k][step], remote.evals[k][step])
