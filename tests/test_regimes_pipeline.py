"""The pipeline on real Fashion-MNIST (tiny settings): one cell, the knobs' dense runs, metrics by independent
formulas, the resumable sweep, and the CLI (commands and bad input)."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from htsr.cli.main import main
from htsr.data import fashion_mnist as fm
from htsr.errors import ConfigError
from htsr.regimes.config import RegimeConfig, preset_config

pytestmark = pytest.mark.skipif(not fm.available(), reason="Fashion-MNIST files not installed")

TINY = {"temperatures": (1, 2), "densities": (0.3,), "seeds": (0,), "width": 2, "train_size": 240,
        "test_size": 100, "metric_size": 64, "cka_size": 64, "eval_batch_size": 64, "batch_size": 32,
        "retrain_batch_size": 32, "retrain_epochs": 1, "mc_points": 3}
SETS = [a for k, v in TINY.items() for a in ("--set", f"{k}={json.dumps(list(v) if isinstance(v, tuple) else v)}")]
TIMING = {"wall_s", "dense_s", "retrain_s", "metrics_s"}


def _cfg(**kw) -> RegimeConfig:
    return preset_config("cpu", {**TINY, **kw})


def test_one_cell_keeps_the_mask_and_reports_every_metric(tmp_path):
    from htsr.regimes.pipeline import regime_cell

    m, det = regime_cell(0, 2, 0.3, config=_cfg().to_dict(), work_dir=str(tmp_path))
    from htsr.regimes.masks import prunable_layers
    from htsr.regimes.model import build_model

    sizes = [mod.weight.numel() for mod in prunable_layers(build_model(8, 2)).values()]
    assert m["kept"] == sum(n - int(n * 0.7) for n in sizes) and m["prunable"] == sum(sizes)
    assert m["nonzero"] <= m["kept"]  # pruned weights are still exactly 0 after retraining
    assert m["density_actual"] == pytest.approx(0.3, abs=0.01)
    for k in ("mc", "mc_loss", "cka", "cka_softmax", "test_error", "dense_test_error", "pruned_test_error"):
        assert math.isfinite(m[k]), k
    assert 0 <= m["test_error"] <= 1 and -1 <= m["mc"] <= 1 and 0 < m["cka"] <= 1 + 1e-9
    assert m["test_error"] == pytest.approx(np.mean(det["test_errors"]))
    # the dense run of the epochs knob saved every temperature as a checkpoint of one run
    ck = sorted(p.name for p in tmp_path.glob("dense/*/seed0/epochs2/epoch_*"))
    assert ck == ["epoch_0001", "epoch_0002"]


def test_pair_metrics_against_hand_formulas():
    from htsr.regimes.model import build_model
    from htsr.regimes.pipeline import pair_metrics

    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 1, 12, 12, generator=g)
    y = torch.randint(0, 10, (48,), generator=g)
    batches = [(x[:24], y[:24]), (x[24:], y[24:])]
    a = build_model(8, 2, seed=1).eval()
    same = pair_metrics([a, copy.deepcopy(a)], batches, batches, 3)
    assert same["mc"] == 0.0 and same["cka"] == pytest.approx(1.0)
    b = build_model(8, 2, seed=2).eval()
    got = pair_metrics([a, b], batches, batches, 3)
    with torch.no_grad():
        X, Y = a(x).double(), b(x).double()
    X, Y = X - X.mean(0), Y - Y.mean(0)
    cka = float(torch.linalg.norm(Y.T @ X) ** 2 / (torch.linalg.norm(X.T @ X) * torch.linalg.norm(Y.T @ Y)))
    assert got["cka"] == pytest.approx(cka, rel=1e-9)
    # mc at 3 points by hand: BatchNorm statistics of each point recomputed on all 48 samples
    errs = []
    for t in (0.0, 0.5, 1.0):
        m = copy.deepcopy(a)
        with torch.no_grad():
            for p, pa, pb in zip(m.parameters(), a.parameters(), b.parameters(), strict=True):
                p.copy_((1 - t) * pa + t * pb)
            for mod in m.modules():
                if isinstance(mod, torch.nn.BatchNorm2d):
                    mod.reset_running_stats()
                    mod.momentum = None  # cumulative average
            m.train()
            for xb, _ in batches:
                m(xb)
            m.eval()
            errs.append(float((m(x).argmax(1) != y).float().mean()))
    mid = 0.5 * (errs[0] + errs[2])
    far = max(errs, key=lambda e: abs(e - mid))  # t* = argmax_t |e(t) - mid| (Yang et al. 2021), first on ties
    assert got["mc"] == pytest.approx(mid - far, abs=1e-9)
    assert got["endpoint_train_error"] == pytest.approx(mid) and got["path_error_mid"] == pytest.approx(errs[1])


def test_dense_plans_of_the_three_knobs(tmp_path):
    from htsr.regimes.pipeline import dense_model, dense_plan

    cfg = _cfg(knob="batch_size", temperatures=(16, 48), iterations=20)
    p = dense_plan(cfg, 16)  # 240 images, batch 16: 15 steps per epoch, 20 steps -> 2 epochs
    assert (p["epochs"], p["max_steps"], p["batch_size"], p["rho"]) == (2, 20, 16, None)
    assert dense_plan(cfg, 48)["epochs"] == 4  # 5 steps per epoch
    with pytest.raises(ConfigError, match="last batch of one sample"):
        dense_plan(_cfg(knob="batch_size", temperatures=(16, 239)), 239)
    cfg = _cfg(knob="sam_rho", temperatures=(0.05, 0.5), dense_epochs=1)
    p = dense_plan(cfg, 0.5)
    assert p["rho"] == 0.5 and p["epochs"] == 1
    m_small, meta = dense_model(cfg, 0, 0.05, tmp_path)
    m_big, _ = dense_model(cfg, 0, 0.5, tmp_path)
    assert not torch.equal(m_small.conv1.weight, m_big.conv1.weight)  # rho changed the training
    again, _ = dense_model(cfg, 0, 0.05, tmp_path)  # cached: loaded, not retrained
    assert torch.equal(again.conv1.weight, m_small.conv1.weight) and 0 <= meta["test_error"] <= 1


def test_sweep_interrupted_and_resumed_gives_the_same_table(tmp_path):
    from htsr.regimes.pipeline import sweep

    cfg = _cfg()
    full = sweep(cfg, tmp_path / "full")
    part = sweep(cfg, tmp_path / "part", max_cells=1)
    assert part.attrs["n_run"] == 1 and len(part) == 1
    done = sweep(cfg, tmp_path / "part")
    assert done.attrs["n_resumed"] == 1 and done.attrs["n_run"] == 1
    cols = [c for c in full.columns if c not in TIMING]
    a = full[cols].sort_values(["temperature"]).reset_index(drop=True)
    b = done[cols].sort_values(["temperature"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)


def test_config_bad_input():
    with pytest.raises(ConfigError, match="density must be in"):
        _cfg(densities=(0.0, 0.5))
    with pytest.raises(ConfigError, match="density must be in"):
        _cfg(densities=(1.2,))
    with pytest.raises(ConfigError, match="at least 2 different temperatures"):
        _cfg(temperatures=(5,))
    with pytest.raises(ConfigError, match="at least 2 different temperatures"):
        _cfg(temperatures=(5, 5))
    with pytest.raises(ConfigError, match="integers >= 1"):
        _cfg(temperatures=(1.5, 3))
    with pytest.raises(ConfigError, match="retrain_seeds"):
        _cfg(retrain_seeds=(1,))
    with pytest.raises(ConfigError, match="unknown"):
        preset_config("nope")
    assert preset_config("paper").depth == 20 and preset_config("paper").retrain_epochs == 160


# ----------------------------------------------------------------------------------- CLI
def test_cli_sweep_classify_plot_advise(tmp_path, capsys):
    d = tmp_path / "sw"
    argv = ["regimes", "sweep", *SETS, "--threads", "1", "--out-dir", str(d)]
    assert main(argv) == 0
    for f in ("results.csv", "phase.csv", "summary.json", "plots/phase.png", "plots/regime.png", "plots/mc.png"):
        assert (d / f).is_file(), f
    assert json.loads((d / "sweep.json").read_text())["status"] == "done"
    capsys.readouterr()
    assert main(argv) == 0
    assert "resuming" in capsys.readouterr().err
    out = tmp_path / "phase.json"
    assert main(["regimes", "classify", str(d), "--set", "mc_threshold=-0.5", "--set", "cka_threshold=0.0",
                 "-o", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {r["regime"] for r in doc["phase"]} == {"II-B"}  # nothing below mc -0.5, every CKA >= 0
    assert json.loads(out.read_text())["cutoffs"]["mc_threshold"] == -0.5
    assert main(["regimes", "classify", str(d / "results.csv"), "--set", "mc_threshold=-1", "--set",
                 "cka_threshold=1.0"]) == 0
    assert "II-A" in capsys.readouterr().out  # every CKA < 1 (two different copies), nothing below mc -1
    assert main(["regimes", "plot", str(d), "--out-dir", str(tmp_path / "pl")]) == 0
    assert (tmp_path / "pl" / "phase.png").stat().st_size > 1000
    assert main(["regimes", "advise", str(d), "--json"]) == 0
    adv = json.loads(capsys.readouterr().out)
    assert {"case_study_1", "transition_verdict", "phase", "cutoffs"} <= set(adv)
    assert main(["regimes", "advise", str(d), "--fit", "-o", str(tmp_path / "adv.csv")]) == 0
    assert "advice" in pd.read_csv(tmp_path / "adv.csv").columns


@pytest.mark.parametrize("args, needle", [
    (["--densities", "0,0.5"], "density must be in (0, 1]"),
    (["--densities", "0.5,1.5"], "density must be in (0, 1]"),
    (["--temperatures", "5"], "at least 2 different temperatures"),
    (["--temperatures", "1.5,3"], "integers >= 1"),
    (["--set", "nope=1"], "nope"),
    (["--data", "/nonexistent/fmnist", "--max-cells", "1"], "Fashion-MNIST not found"),
])
def test_cli_sweep_bad_input_one_line_exit_2(tmp_path, capsys, args, needle):
    code = main(["regimes", "sweep", *SETS, *args, "--out-dir", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and err.count("\n") == 1 and "Traceback" not in err, err


def test_cli_knob_without_temperatures(tmp_path, capsys):
    assert main(["regimes", "sweep", "--knob", "sam_rho", "--out-dir", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "needs --temperatures" in err and err.count("\n") == 1


def test_cli_table_bad_input(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"temperature": [1, 2], "density": [0.5, 0.5], "mc": [0.0, 0.0]}).to_csv(bad, index=False)
    one = tmp_path / "one.csv"
    pd.DataFrame({"temperature": [1, 1], "density": [0.5, 0.2], "mc": [0.0, 0.0], "cka": [0.9, 0.9],
                  "test_error": [0.1, 0.2]}).to_csv(one, index=False)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    for argv, needle in ((["classify", str(bad)], "lacks column(s) cka, test_error"),
                         (["advise", str(one)], "at least 2 temperatures"),
                         (["plot", str(bad), "--out-dir", str(tmp_path / "p")], "lacks column"),
                         (["classify", str(tmp_path / "nope.csv")], "no such results table"),
                         (["classify", str(empty)], "is empty"),
                         (["classify", str(one), "--set", "cka_threshold=2"], "cka_threshold")):
        assert main(["regimes", *argv]) == 2
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1, err


def test_sweep_killed_by_ctrl_c_resumes_to_the_same_table(tmp_path, monkeypatch):
    from htsr.regimes import pipeline

    cfg = _cfg(densities=(0.3, 0.6), temperatures=(1, 2))
    full = pipeline.sweep(cfg, tmp_path / "full")
    real = pipeline.regime_cell
    calls = {"n": 0}

    def flaky(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(pipeline, "regime_cell", flaky)
    with pytest.raises(KeyboardInterrupt):
        pipeline.sweep(cfg, tmp_path / "cut")
    monkeypatch.setattr(pipeline, "regime_cell", real)
    assert len(pd.read_csv(tmp_path / "cut" / "results.csv")) == 2  # the cells finished before the interrupt
    done = pipeline.sweep(cfg, tmp_path / "cut")
    assert done.attrs["n_resumed"] == 2 and done.attrs["n_run"] == 2
    cols = [c for c in full.columns if c not in TIMING]
    key = ["temperature", "density"]
    pd.testing.assert_frame_equal(full[cols].sort_values(key).reset_index(drop=True),
                                  done[cols].sort_values(key).reset_index(drop=True))
