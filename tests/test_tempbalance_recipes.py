"""TempBalance recipes, plots and CLI at tiny sizes (real data, real models, real training)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from htsr.cli.main import main
from htsr.errors import ConfigError
from htsr.tempbalance.recipes import get_recipe, run_cell
from tests.esd_reference import esd, hill_alpha_median, tb_linear_map, tb_sigmoid_map

TINY = {
    "digits": {"epochs": 1, "min_steps": 3, "width": 8, "interval": 2},
    "burgers": {"n_pool": 16, "n_test": 8, "n_grid": 32, "solver_grid": 64, "modes": 8, "width": 16, "epochs": 1,
                "min_steps": 3, "interval": 2},
    "minilm": {"n_pool": 16, "n_test": 8, "epochs": 1, "min_steps": 2, "interval": 1},
}


def _digits_by_hand(r, fraction, seed):
    """The digits baseline written out in plain PyTorch from the recipe's documented defaults (SGD + momentum,
    cosine over all steps, cross-entropy, at least min_steps steps): the recipe must give exactly this."""
    import torch.nn.functional as F

    from htsr.data.digits import digits_split
    from htsr.models.vision import make_vision_model
    from htsr.training import seeded_loader

    xtr, ytr, xte, yte = digits_split(fraction, seed, test_size=r.test_size)
    loader = seeded_loader(xtr, ytr, r.batch_size, seed)
    model = make_vision_model(r.arch, width=r.width, seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay)
    epochs = max(r.epochs, math.ceil(r.min_steps / len(loader)))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * len(loader))
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        out = model(xte)
    return {"accuracy": float((out.argmax(1) == yte).float().mean()), "test_loss": float(F.cross_entropy(out, yte)),
            "steps": epochs * len(loader), "n_train": int(ytr.numel())}, model


def test_digits_cells_match_a_hand_written_loop_and_the_reference_multipliers(torch_one_thread):
    """Baseline = the same training written out by hand; TempBalance with s1 = s2 = 1 (every multiplier 1) = the
    baseline exactly (TB changes nothing but the rates); the first TB update's per-layer alphas and multipliers are
    the reference estimator's (numpy) and np.interp's; a cell is deterministic."""
    from htsr.models.vision import make_vision_model

    r = get_recipe("digits", **TINY["digits"])
    fr, seed = 0.05, 0
    want, _ = _digits_by_hand(r, fr, seed)
    mb, db = r.run("baseline", fr, seed)
    for k, v in want.items():
        assert mb[k] == pytest.approx(v, rel=1e-6, abs=1e-9), k
    assert mb["tb_updates"] == 0 and db["tb_history"] == []

    flat = r.replace(s1=1.0, s2=1.0)
    mf, _ = flat.run("tb", fr, seed)
    assert mf["accuracy"] == mb["accuracy"] and mf["test_loss"] == pytest.approx(mb["test_loss"], rel=1e-6)

    mt, dt = r.run("tb", fr, seed)
    assert mt["steps"] == want["steps"] and mt["tb_updates"] == 1 + want["steps"] // r.interval
    first = [row for row in dt["tb_history"] if row["update"] == 0]
    init = make_vision_model(r.arch, width=r.width, seed=seed)
    convs = [(n, m) for n, m in init.named_modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)][1:-1]
    ref = {n: hill_alpha_median(esd(m)) for n, m in convs if esd(m).size >= 50}
    assert [row["unit"] for row in first] == list(ref)
    np.testing.assert_allclose([row["value"] for row in first], list(ref.values()), rtol=1e-9)
    mult = tb_linear_map(np.array(list(ref.values())), r.s1, r.s2)
    np.testing.assert_allclose([row["multiplier"] for row in first], mult, rtol=1e-9)
    np.testing.assert_allclose([row["lr"] for row in first], r.lr * mult, rtol=1e-9)  # cosine at step 0
    mt2, _ = r.run("tb", fr, seed)
    assert mt2["accuracy"] == mt["accuracy"] and mt2["test_loss"] == mt["test_loss"]
    assert 0 < mt["tb_overhead"] < 1


def test_burgers_tb_with_unit_multipliers_is_the_baseline(torch_one_thread):
    """s_min = s_max = 0 makes the sigmoid map 10 ** 0 = 1 for every layer: the TB cell must reproduce the
    baseline's nRMSE exactly, while updating the metric on schedule; the default map must change the result."""
    r = get_recipe("burgers", **TINY["burgers"])
    mb, _ = r.run("baseline", 0.25, 0)
    m0, d0 = r.replace(s_min=0.0, s_max=0.0).run("tb", 0.25, 0)
    assert m0["nrmse"] == mb["nrmse"] and math.isfinite(mb["nrmse"])
    assert m0["tb_updates"] == 1 + m0["steps"] // r.interval and {row["multiplier"] for row in d0["tb_history"]} == {
        1.0}
    mt, dt = r.run("tb", 0.25, 0)
    first = [row for row in dt["tb_history"] if row["update"] == 0]
    np.testing.assert_allclose([row["multiplier"] for row in first],
                               tb_sigmoid_map([row["value"] for row in first], r.s_min, r.s_max, r.temperature),
                               rtol=1e-9)
    assert mt["nrmse"] != mb["nrmse"]


@pytest.mark.slow
def test_minilm_recipe_tiny(torch_one_thread):
    """Block units are the six encoder blocks; the first update's block values are the means of the reference
    estimator's alphas (xmin at N / 1.5) over each block's Linears of the pretrained model, and the multipliers the
    sigmoid map of them; with s_min = s_max = 0 the TB cell is the baseline exactly."""
    from htsr.models.text import load_minilm_classifier

    m, d = run_cell("minilm", "tb", 0.5, 0, **TINY["minilm"])
    mb, _ = run_cell("minilm", "baseline", 0.5, 0, **TINY["minilm"])
    m0, _ = run_cell("minilm", "tb", 0.5, 0, **TINY["minilm"], s_min=0.0, s_max=0.0)
    assert m0["accuracy"] == mb["accuracy"] and m["n_train"] == 8
    first = [row for row in d["tb_history"] if row["update"] == 0]
    assert [row["unit"] for row in first] == [f"encoder.encoder.layer.{i}" for i in range(6)]
    model, _ = load_minilm_classifier(8, seed=0)
    for row in first:
        blk = model.get_submodule(row["unit"])
        ref = [hill_alpha_median(esd(x), xmin_pos=1.5) for x in blk.modules() if isinstance(x, torch.nn.Linear)]
        assert row["value"] == pytest.approx(np.mean(ref), rel=1e-9)
    np.testing.assert_allclose([row["multiplier"] for row in first],
                               tb_sigmoid_map([row["value"] for row in first], 1.0, 1.0, 10.0), rtol=1e-9)


def test_recipe_bad_options():
    with pytest.raises(ConfigError, match="unknown option"):
        get_recipe("digits", epoch=3)
    with pytest.raises(ConfigError, match="unknown recipe"):
        get_recipe("cifar")
    with pytest.raises(ConfigError, match="epochs must be an integer"):
        get_recipe("digits", epochs="abc")
    with pytest.raises(ConfigError, match="mapping"):
        get_recipe("digits", mapping="cubic")
    with pytest.raises(ConfigError, match="unknown method"):
        run_cell("digits", "sam", 1.0, 0)
    with pytest.raises(ConfigError, match="fraction"):
        run_cell("digits", "tb", 0.0, 0)


def _png(path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 2000


def _sets(recipe="digits", **extra):
    out = []
    for k, v in {**TINY[recipe], **extra}.items():
        out += ["--set", f"{k}={v}"]
    return out


def test_cli_run_compare_report(tmp_path, capsys, torch_one_thread):
    sets = _sets()
    code = main(["tempbalance", "run", "digits", "--method", "tb", "--fraction", "0.05", "--json",
                 "-o", str(tmp_path / "cell.json"), "--plot", str(tmp_path / "traj.png"), *sets])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "tb" and 0 <= out["accuracy"] <= 1
    cell = json.loads((tmp_path / "cell.json").read_text())
    assert cell["tb_history"] and cell["config"]["epochs"] == 1
    assert _png(tmp_path / "traj.png")

    res = tmp_path / "cmp"
    argv = ["tempbalance", "compare", "digits", "--out-dir", str(res), "--fractions", "0.05", "--seeds", "0",
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
    capsys.readouterr()
    assert main(["tempbalance", "report", str(res), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["digits"]["summary"][0]["n"] == 1

    # issue 15: other --set values into the same directory are refused, never pooled as seeds
    assert main([*argv[:-len(sets)], *_sets(lr=0.02)]) == 2
    err = capsys.readouterr().err
    assert "another configuration" in err and "lr 0.05 -> 0.02" in err
    assert len(pd.read_csv(res / "results.csv")) == 2
    # ... unless replaced with --overwrite (a previous htsr output): then only the new configuration is there
    assert main([*argv[:-len(sets)], *_sets(lr=0.02), "--overwrite", "--methods", "baseline"]) == 0
    table = pd.read_csv(res / "results.csv")
    assert len(table) == 1 and table["config_id"].nunique() == 1


def test_report_never_pools_configurations(tmp_path, capsys):
    """A results table holding two configurations (written before the refusal existed) is reported per
    configuration: summarize groups by config_id."""
    from htsr.experiments import summarize

    rows = [{"key": f"k{i}", "recipe": "digits", "config_id": cid, "method": m, "fraction": 1.0, "seed": sd,
             "status": "ok", "accuracy": acc}
            for i, (cid, m, sd, acc) in enumerate([("a", "baseline", 0, 0.5), ("a", "tb", 0, 0.6),
                                                   ("b", "baseline", 0, 0.9), ("b", "tb", 0, 0.7)])]
    table = pd.DataFrame(rows)
    s = summarize(table, "accuracy")
    assert len(s) == 4 and set(s["n"]) == {1}
    d = tmp_path / "old"
    d.mkdir()
    table.to_csv(d / "results.csv", index=False)
    assert main(["tempbalance", "report", str(d), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert set(rep) == {"digits_a", "digits_b"}
    assert [p["mean"] for p in rep["digits_b"]["paired"]] == [pytest.approx(-0.2)]


@pytest.mark.parametrize("content, msg", [
    ("", "holds no rows"),
    ("key,recipe\n", "holds no rows"),
    ('a,b\n1,"2\n', "not a results table"),
    ("x,y\n1,2\n", "not a results table"),
    (b"\xff\xfe\x00bad", "not a results table"),
    ("key,recipe,method,fraction,seed,status,accuracy\nk,cifar,tb,1.0,0,ok,0.5\n", "unknown recipe"),
    ("key,recipe,method,fraction,status\nk,digits,tb,1.0,ok\n", "no column"),
    ("key,recipe,method,fraction,seed,status,error\nk,digits,tb,1.0,0,error,boom\n", "no finished cell"),
    ("key,recipe,method,fraction,seed,status,loss\nk,digits,tb,1.0,0,ok,0.5\n", "no 'accuracy' values"),
])
def test_report_bad_results_file_is_one_line(tmp_path, capsys, content, msg):
    d = tmp_path / "res"
    d.mkdir()
    (d / "results.csv").write_bytes(content.encode() if isinstance(content, str) else content)
    assert main(["tempbalance", "report", str(d)]) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_bad_input(tmp_path, capsys):
    assert main(["tempbalance", "run", "digits", "--set", "nope=1"]) == 2
    assert "unknown option" in capsys.readouterr().err
    assert main(["tempbalance", "run", "digits", "--set", "epochs=abc"]) == 2
    assert "epochs must be an integer" in capsys.readouterr().err
    assert main(["tempbalance", "report", str(tmp_path)]) == 2
    for argv in (["run", "digits", "--fraction", "1.5"], ["compare", "digits", "--out-dir", str(tmp_path / "x"),
                                                           "--fractions", "2.0"],
                 ["compare", "digits", "--out-dir", str(tmp_path / "x"), "--methods", ",,"],
                 ["compare", "digits", "--out-dir", str(tmp_path / "x"), "--seeds", "-1"],
                 ["run", "digits", "--seed", "-1"], ["run", "digits", "--threads", "0"],
                 ["run", "digits", "--set", "noequals"], ["run", "digits", "--plot", str(tmp_path / "p.txt")]):
        with pytest.raises(SystemExit) as e:
            main(["tempbalance", *argv])
        assert e.value.code == 2, argv
    assert not (tmp_path / "x").exists()


def test_unwritable_output_fails_before_training(tmp_path, capsys, monkeypatch):
    """issue 15: an output that cannot be written is an error before any training (never a lost result)."""
    import htsr.tempbalance.recipes as R

    def no_training(*a, **k):
        raise AssertionError("training started")

    monkeypatch.setattr(R.Recipe, "run", no_training)
    blocked = tmp_path / "a-file"  # a file where a directory is needed: unwritable for root too
    blocked.write_text("x")
    for extra in (["-o", str(blocked / "cell.json")], ["--plot", str(blocked / "t.png")]):
        assert main(["tempbalance", "run", "digits", *extra]) == 2
        assert "cannot write" in capsys.readouterr().err
    assert main(["tempbalance", "compare", "digits", "--out-dir", str(blocked / "cmp")]) == 2
    assert "cannot write" in capsys.readouterr().err


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


def test_fashion_recipe_on_real_images(torch_one_thread):
    """The Fashion-MNIST recipe: a stratified pool and fraction (checked against the raw IDX labels), a ResNet-18
    layout (4 stages x 2 basic blocks), TempBalance with unit multipliers = the baseline, and the first TB update's
    alphas = the reference estimator's on the initial weights (first and last layer excluded, as the reference)."""
    from htsr.data import fashion_mnist as F

    if not F.available():
        pytest.skip("apt-get install dataset-fashion-mnist")
    from htsr.models.vision import SmallResNet, seeded_init

    r = get_recipe("fashion", width=4, n_pool=200, n_test=100, epochs=1, min_steps=4, interval=2)
    mb, _ = r.run("baseline", 0.5, 3)
    assert mb["n_train"] == 100 and mb["steps"] == 4  # 100 images, batch 64 -> 2 steps/epoch, 2 epochs
    _, ytr, _, _ = F.fashion_mnist()
    assert np.bincount(ytr).tolist() == [6000] * 10  # the pool's stratification has equal classes to draw from
    mf, _ = r.replace(s1=1.0, s2=1.0).run("tb", 0.5, 3)
    assert mf["accuracy"] == mb["accuracy"] and mf["test_loss"] == pytest.approx(mb["test_loss"], rel=1e-6)
    mt, dt = r.run("tb", 0.5, 3)
    assert mt["tb_updates"] == 1 + mt["steps"] // r.interval
    with seeded_init(3):
        init = SmallResNet(1, 10, widths=(4, 8, 16, 32), blocks=(2, 2, 2, 2))
    convs = [(n, m) for n, m in init.named_modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    assert sum(isinstance(m, torch.nn.Conv2d) for _, m in convs) == 1 + 16 + 3  # stem, 8 blocks x 2, 3 shortcuts
    ref = {n: hill_alpha_median(esd(m)) for n, m in convs[1:-1] if esd(m).size >= 50}
    first = [row for row in dt["tb_history"] if row["update"] == 0]
    assert [row["unit"] for row in first] == list(ref)
    np.testing.assert_allclose([row["value"] for row in first], list(ref.values()), rtol=1e-9)
    with pytest.raises(ConfigError, match="60,000 training"):
        get_recipe("fashion", n_pool=70000)
