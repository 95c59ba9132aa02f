"""Single-index study: the optimiser x rate x repeat sweep, its files, figures and the CLI (small sizes)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from htsr.errors import ConfigError
from htsr.theory.single_index import SingleIndexConfig
from htsr.theory.sweep import LR_GRID, sweep

TINY = SingleIndexConfig(n=80, n_test=20, d=40, h=60, steps=3)
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _one_thread(torch_one_thread):
    yield


@pytest.fixture(scope="module")
def small_sweep():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return sweep(TINY, ("gd", "adam"), (0.01, 1.0), repeats=2, progress=False)
    finally:
        torch.set_num_threads(n)


def test_package_exports_load_lazily():
    import htsr.theory as T

    assert T.SingleIndexConfig is SingleIndexConfig and T.LR_GRID is LR_GRID and callable(T.plot_esds)
    with pytest.raises(AttributeError):
        T.no_such_name  # noqa: B018


def test_grid_is_the_papers():
    """LR_GRID against the grid the research notes record from the reference's configs/bulk_lr.yml (parsed)."""
    import re

    from tests.theory_notes import theory_notes

    m = re.search(r"\*\*Learning-rate grid\*\* \(`bulk_lr.yml`\), identical for GD and Adam: η ∈ \{([^}]*)\}",
                  theory_notes())
    assert m, "the notes changed: update the parser"
    grid = tuple(float(x) for x in m.group(1).split(","))
    assert len(grid) == 9 and LR_GRID == grid


def test_sweep_tables(small_sweep):
    res = small_sweep
    t = res.table
    assert len(t) == 8 and (t["status"] == "ok").all()
    assert set(zip(t["optimizer"], t["lr"], t["repeat"], strict=True)) == {
        (o, lr, r) for o in ("gd", "adam") for lr in (0.01, 1.0) for r in (0, 1)}
    assert list(t.loc[t["repeat"] == 1, "seed"].unique()) == [TINY.seed + 1]
    h = res.history
    assert len(h) == 8 * 4
    # every run of one repeat starts from the same init; the two repeats differ
    init = h[h["step"] == 0]
    for r in (0, 1):
        assert init.loc[init["repeat"] == r, "alpha_hill"].nunique() == 1
    assert init.loc[init["repeat"] == 0, "alpha_hill"].iloc[0] != init.loc[init["repeat"] == 1, "alpha_hill"].iloc[0]
    s = res.summary()
    assert list(s["optimizer"]) == ["init", "gd", "gd", "adam", "adam"]
    assert (s.loc[1:, "n_runs"] == 2).all()
    assert np.isfinite(s.loc[1:, "alpha_hill_std"]).all()
    row = s[(s["optimizer"] == "adam") & (s["lr"] == 1.0)].iloc[0]
    expect = t[(t["optimizer"] == "adam") & (t["lr"] == 1.0)]["alpha_hill"]
    assert row["alpha_hill"] == pytest.approx(expect.mean()) and row["alpha_hill_std"] == pytest.approx(expect.std())


def test_sweep_save(small_sweep, tmp_path):
    paths = small_sweep.save(tmp_path / "out")
    names = sorted(p.name for p in paths)
    assert names == ["esd.npz", "history.csv", "results.json", "runs.csv", "summary.csv"]
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert data["schema"] == "htsr.theory.single_index/1" and data["repeats"] == 2 and len(data["runs"]) == 8
    assert data["base_config"]["d"] == 40
    runs = pd.read_csv(tmp_path / "out" / "runs.csv")
    assert len(runs) == 8 and "alpha_ks" in runs.columns
    with np.load(tmp_path / "out" / "esd.npz") as z:
        assert z["adam_lr1_r0_step3"].shape == (40,)


def test_bad_grid_is_a_clear_error():
    with pytest.raises(ConfigError, match="optimizers"):
        sweep(TINY, ("sgd",), (1.0,))
    with pytest.raises(ConfigError, match="learning rates"):
        sweep(TINY, ("gd",), (0.0,))
    with pytest.raises(ConfigError, match="learning rates"):
        sweep(TINY, ("gd",), ())
    with pytest.raises(ConfigError, match="repeats"):
        sweep(TINY, ("gd",), (1.0,), repeats=0)


def test_a_diverging_run_is_reported_not_fatal():
    # a trainable last layer with an absurd GD rate overflows to inf/NaN within a few steps
    res = sweep(TINY.replace(fix_last_layer=False, steps=5), ("gd",), (1e-2, 1e30), progress=False)
    t = res.table.set_index("lr")
    assert t.loc[1e-2, "status"] == "ok"
    assert t.loc[1e30, "status"] == "diverged" and "non-finite" in t.loc[1e30, "reason"]
    assert math.isnan(t.loc[1e30].get("alpha_hill", math.nan))
    assert list(res.summary()["optimizer"]) == ["init", "gd"]
    # weights that overflow while the loss before the step was finite are caught by the measuring callback
    from htsr.theory.single_index import run_single_index
    from htsr.training import TrainingError

    with pytest.raises(TrainingError, match="non-finite"):
        run_single_index(TINY.replace(optimizer="gd", lr=1e300, dtype="float64", steps=2))


def test_figures(small_sweep, tmp_path):
    from htsr.theory.plots import plot_esds, plot_metrics_vs_lr, plot_steps

    # the default choices are drawn by the CLI test; here the explicit ones
    p = plot_esds(small_sweep.evals, tmp_path / "esd1.png", lrs={"gd": [1.0], "adam": [0.01, 1.0]}, repeat=1)
    assert p.read_bytes()[:8] == PNG and p.stat().st_size > 5000
    with pytest.raises(ConfigError, match="not run"):
        plot_esds(small_sweep.evals, tmp_path / "x.png", lrs=[5.0])
    with pytest.raises(ConfigError, match="repeat"):
        plot_esds(small_sweep.evals, tmp_path / "x.png", repeat=7)
    with pytest.raises(ConfigError, match="columns"):
        plot_metrics_vs_lr(pd.DataFrame({"lr": [1.0]}), tmp_path / "x.png")
    with pytest.raises(ConfigError, match="repeat"):
        plot_steps(small_sweep.history, tmp_path / "x.png", repeat=7)


def test_cli_single_index(tmp_path, capsys):
    from htsr.cli.main import main

    out = tmp_path / "si"
    rc = main(["theory", "single-index", "--n", "80", "--n-test", "20", "--d", "40", "--h", "60", "--steps", "3",
               "--optimizers", "adam", "--lrs", "0.01,1", "--out-dir", str(out), "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "alpha_hill" in text and "2/2 runs ok" in text and "d=40, h=60" in text
    for name in ("runs.csv", "history.csv", "summary.csv", "results.json", "esd.npz", "metrics_vs_lr.png", "esd.png",
                 "steps.png"):
        assert (out / name).stat().st_size > 0, name
    assert json.loads((out / "results.json").read_text())["base_config"]["feature_scaling"] == "intended"


@pytest.mark.parametrize("argv, word", [
    (["--optimizers", "sgd"], "unknown sgd"),
    (["--optimizers", ",,"], "expected comma-separated names"),
    (["--lrs", "-1"], "learning rates must be finite and > 0"),
    (["--repeats", "0"], "0 is outside [1, inf]"),
    (["--d", "1"], "1 is outside [4, inf]"),
    (["--threads", "0"], "0 is outside [1, inf]"),
    (["--seed", "-1"], "-1 is outside [0, inf]"),
    (["--lr-gamma", "1.5"], "1.5 is outside (0, 1]"),
    (["--set", "n_test=abc"], "n_test must be an integer"),
    (["--set", "stepz=3"], "unknown option(s) for SingleIndexConfig 'stepz'"),
    (["--set", "d=2"], "d and h must be >= 4"),
])
def test_cli_bad_input_exits_2(argv, word, capsys):
    from htsr.cli.main import main

    try:
        rc = main(["theory", "single-index", "--quick", "--steps", "1", *argv])
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and word in err and "Traceback" not in err


def test_cli_json_and_out_dir_safety(tmp_path, capsys):
    from htsr.cli.main import main

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("x")
    args = ["theory", "single-index", "--quick", "--d", "40", "--h", "60", "--n", "80", "--n-test", "20",
            "--steps", "1", "--optimizers", "gd", "--lrs", "1", "--no-plots"]
    assert main([*args, "--out-dir", str(mine), "--overwrite"]) == 2  # not an htsr output: never deleted
    assert "not written by htsr" in capsys.readouterr().err and (mine / "keep.txt").read_text() == "x"
    assert main([*args, "--json", "--set", "momentum=0.5"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["config"]["momentum"] == 0.5 and len(res["runs"]) == 1


def test_cli_quick_sizes_and_reference_scaling(tmp_path, capsys):
    from htsr.cli.main import main

    out = tmp_path / "q"
    rc = main(["theory", "single-index", "--quick", "--d", "40", "--h", "60", "--n", "80", "--n-test", "20",
               "--steps", "2", "--optimizers", "gd", "--lrs", "1", "--reference-scaling", "--out-dir", str(out),
               "--no-plots"])
    assert rc == 0
    assert not (out / "esd.png").exists()
    assert json.loads((out / "results.json").read_text())["base_config"]["feature_scaling"] == "reference"
