"""TempBalance recipes, plots and CLI at tiny sizes (real data, real models, real training)."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from htsr.cli.main import main
from htsr.errors import ConfigError
from htsr.tempbalance.recipes import RECIPES, get_recipe, run_cell

TINY = {
    "digits": {"epochs": 1, "min_steps": 3, "width": 8, "interval": 2},
    "burgers": {"n_pool": 16, "n_test": 8, "n_grid": 32, "solver_grid": 64, "modes": 8, "width": 16, "epochs": 1,
                "min_steps": 3, "interval": 2},
    "minilm": {"n_pool": 16, "n_test": 8, "epochs": 1, "min_steps": 2, "interval": 1},
}


@pytest.mark.parametrize("recipe", ["digits", "burgers"])
def test_recipe_cells_run_and_are_deterministic(recipe, torch_one_thread):
    r = get_recipe(recipe, **TINY[recipe])
    fr = 0.05 if recipe == "digits" else 0.25
    mb, db = r.run("baseline", fr, 0)
    mt, dt = r.run("tb", fr, 0)
    mt2, _ = r.run("tb", fr, 0)
    score = RECIPES[recipe].score
    assert math.isfinite(mb[score]) and math.isfinite(mt[score])
    assert mt[score] == mt2[score]  # same seed, same result
    assert mb["n_train"] == mt["n_train"] and mb["steps"] == mt["steps"] >= 3
    assert mb["tb_updates"] == 0 and mt["tb_updates"] >= 2 and 0 < mt["tb_overhead"] < 1
    assert db["tb_history"] == [] and len(dt["tb_history"]) >= 2
    first = [row for row in dt["tb_history"] if row["update"] == 0]
    assert all(row["lr"] > 0 for row in first) and all(row["lr"] >= 0 for row in dt["tb_history"])


@pytest.mark.slow
def test_minilm_recipe_tiny(torch_one_thread):
    m, d = run_cell("minilm", "tb", 0.5, 0, **TINY["minilm"])
    assert 0 <= m["accuracy"] <= 1 and m["n_train"] == 8
    units = {r["unit"] for r in d["tb_history"]}
    assert units == {f"encoder.encoder.layer.{i}" for i in range(6)}


def test_recipe_bad_options():
    with pytest.raises(ConfigError, match="unknown option"):
        get_recipe("digits", epoch=3)
    with pytest.raises(ConfigError, match="unknown recipe"):
        get_recipe("cifar")
    with pytest.raises(ConfigError, match="unknown method"):
        run_cell("digits", "sam", 1.0, 0)
    with pytest.raises(ConfigError, match="fraction"):
        run_cell("digits", "tb", 0.0, 0)


def _png(path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 2000


def test_cli_run_compare_report(tmp_path, capsys, torch_one_thread):
    sets = []
    for k, v in TINY["digits"].items():
        sets += ["--set", f"{k}={v}"]
    code = main(["tempbalance", "run", "digits", "--method", "tb", "--fraction", "0.05", "--json",
                 str(tmp_path / "cell.json"), "--plot", str(tmp_path / "traj.png"), *sets])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "tb" and 0 <= out["accuracy"] <= 1
    assert json.loads((tmp_path / "cell.json").read_text())["tb_history"]
    assert _png(tmp_path / "traj.png")

    res = tmp_path / "cmp"
    argv = ["tempbalance", "compare", "digits", "--out", str(res), "--fractions", "0.05", "--seeds", "0",
            "--no-progress", *sets]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "| 0.05 |" in text and "paired by seed" in text
    table = pd.read_csv(res / "results.csv")
    assert len(table) == 2 and set(table["method"]) == {"baseline", "tb"}
    assert _png(res / "digits_score_vs_fraction.png") and _png(res / "digits_trajectories.png")
    summary = pd.read_csv(res / "summary_digits.csv")
    assert set(summary["n"]) == {1}
    # re-running resumes: nothing left to train, same table
    assert main(argv) == 0
    assert len(pd.read_csv(res / "results.csv")) == 2
    assert main(["tempbalance", "report", str(res)]) == 0


def test_cli_bad_input(tmp_path, capsys):
    assert main(["tempbalance", "run", "digits", "--set", "nope=1"]) == 2
    assert "unknown option" in capsys.readouterr().err
    assert main(["tempbalance", "report", str(tmp_path)]) == 2
    assert main(["tempbalance", "run", "digits", "--fraction", "1.5", "--set", "epochs=1"]) == 2
    with pytest.raises(SystemExit):
        main(["tempbalance", "run", "digits", "--set", "noequals"])


def test_plots_handle_zero_rates_and_reject_empty_input(tmp_path):
    import warnings

    from htsr.tempbalance.plots import plot_score_vs_fraction, plot_trajectories

    h = pd.DataFrame({"step": [0, 0, 5, 5], "unit": ["a", "b", "a", "b"], "value": [2.0, 3.0, 2.1, 2.9],
                      "lr": [0.0, 0.0, 1e-4, 2e-4], "metric": ["alpha"] * 4})  # warmup starts at lr 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _png(plot_trajectories(h, tmp_path / "t.png"))
    with pytest.raises(ConfigError, match="non-empty"):
        plot_trajectories(h.iloc[:0], tmp_path / "e.png")
    with pytest.raises(ConfigError, match="summary table"):
        plot_score_vs_fraction(pd.DataFrame(), tmp_path / "s.png", "accuracy")
