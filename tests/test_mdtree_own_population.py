"""MD tree on an own model family: a tiny real population (2 widths x 2 batch sizes x 1 digits fraction x 2 seeds,
2 epochs), its features and units, resuming an interrupted run, and diagnosing a new model with advice."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from htsr.cli.main import main
from htsr.data.reference import mdtree_population
from htsr.diagnosis import DiagnosisError
from htsr.diagnosis.advice import ADVICE, diagnose
from htsr.diagnosis.config import GRIDS, DiagnoserConfig, PopulationConfig
from htsr.diagnosis.diagnoser import Diagnoser, fit_diagnoser
from htsr.diagnosis.own_population import build_population, load_population_dir
from htsr.errors import ConfigError

TINY = GRIDS.get("tiny")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny population, built in two runs: 2 configurations, 'interrupted', then resumed."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("pop")
    first = build_population(TINY, out, max_new=2, progress=False)
    snap = {"rows": first.copy(), "results": (out / "results.csv").read_text(),
            "mtimes": {p: p.stat().st_mtime_ns for p in (out / "models").rglob("model.safetensors")}}
    second = build_population(TINY, out, progress=False)
    return out, first, snap, second


def test_interrupted_run_resumes_without_retraining(tiny):
    out, first, snap, second = tiny
    assert first.attrs["n_trained"] == 2 and first.attrs["n_missing"] == 2 and len(first) == 2
    assert second.attrs["n_trained"] == 2 and second.attrs["n_resumed"] == 2 and second.attrs["n_missing"] == 0
    assert len(second) == TINY.n_configs == 4 and not second.attrs["failed"]
    # the two finished configurations were read back, not retrained: same rows, same saved weights
    keys = ["width", "bs", "data"]
    merged = first.merge(second, on=keys, suffixes=("_a", "_b"))
    assert len(merged) == 2
    for c in ("wall_s", "train_s", "test_acc", "hessian_t", "mode_connectivity_peak"):
        np.testing.assert_array_equal(merged[f"{c}_a"], merged[f"{c}_b"])
    assert len(snap["mtimes"]) == 4  # 2 configurations x 2 seeds
    for p, t in snap["mtimes"].items():
        assert p.stat().st_mtime_ns == t
    assert len(list((out / "models").rglob("model.safetensors"))) == 8
    assert pd.read_csv(out / "population.csv").shape[0] == 4
    # a third run trains nothing
    third = build_population(TINY, out, progress=False)
    assert third.attrs["n_trained"] == 0 and third.attrs["n_resumed"] == 4


def test_features_finite_and_in_paper_units(tiny):
    out, _, _, pop = tiny
    assert sorted(zip(pop["width"], pop["bs"], strict=True)) == [(1, 32), (1, 256), (4, 32), (4, 256)]
    for c in ("train_error", "test_error", "train_loss", "test_loss", "hessian_t", "mode_connectivity_peak", "CKA",
              "log_data_amount", "log_para_amount"):
        assert np.isfinite(pop[c]).all(), c
    assert ((pop["train_error"] >= 0) & (pop["train_error"] <= 100)).all()  # percent, not fractions
    np.testing.assert_allclose(pop["test_acc"] + pop["test_error"], 100.0)
    assert (pop["mode_connectivity_peak"] <= 0).all() and (pop["mode_connectivity_peak"] >= -100).all()
    assert ((pop["CKA"] >= 0) & (pop["CKA"] <= 1 + 1e-9)).all()
    # 2 epochs at batch 256 on ~300 samples barely trains: its error must be far above batch 32's at width 4
    w4 = pop[pop["width"] == 4].set_index("bs")
    assert w4.loc[256, "train_error"] > w4.loc[32, "train_error"] + 10
    # ln of the mean over seeds of the traces, as stored per seed
    cells = {json.loads(p.read_text())["params"]["bs"]: json.loads(p.read_text())
             for p in (out / "cells").glob("*width=4*.json")}
    for bs, cell in cells.items():
        traces = [s["trace"] for s in cell["per_seed"]]
        assert len(traces) == 2
        assert w4.loc[bs, "hessian_t"] == pytest.approx(math.log(np.mean(traces)))
        errs = cell["curve_errors"]  # t = 0, .25, .5, .75, 1 (fractions)
        assert w4.loc[bs, "mode_connectivity_peak"] == pytest.approx(-100 * max(errs[1:4]))
    n = pop["data_amount"].iloc[0]
    assert 250 < n < 350 and np.allclose(pop["log_data_amount"], math.log(n))
    assert (pop.groupby("width")["para_amount"].nunique() == 1).all()
    assert pop.loc[pop["width"] == 4, "para_amount"].iloc[0] > pop.loc[pop["width"] == 1, "para_amount"].iloc[0]


def test_diagnose_reproduces_features_and_gives_advice(tiny, tmp_path, capsys):
    out, _, _, pop = tiny
    frame, config = load_population_dir(out)
    assert config == TINY and len(frame) == 4
    (model_dir,) = [p for p in (out / "models").iterdir() if "width=4" in p.name and "bs=256" in p.name]
    d = diagnose([model_dir / "seed0", model_dir / "seed1"], out, data=0.25)
    row = pop[(pop["width"] == 4) & (pop["bs"] == 256)].iloc[0]
    # measured like the population: same data subset, same Hessian batches and seeds, same curve training
    assert d.features["train_error"] == pytest.approx(row["train_error"])
    assert d.features["hessian_t"] == pytest.approx(row["hessian_t"], rel=1e-6)
    assert d.features["mode_connectivity_peak"] == pytest.approx(row["mode_connectivity_peak"], abs=1e-6)
    assert set(d.predictions) == {"temperature", "width", "data"}
    assert d.advice and all(any(a.startswith(v) for v in ADVICE.values()) for a in d.advice)
    assert "advice: " in str(d)
    assert set(d.trees) <= {"temperature", "width", "data"}
    # a bare .safetensors state dict (outside its checkpoint folder) is read too; the width comes from its shapes
    bare = tmp_path / "w4.safetensors"
    bare.write_bytes((model_dir / "seed1" / "model.safetensors").read_bytes())
    rc = main(["mdtree", "diagnose", "--population", str(out), str(model_dir / "seed0"), str(bare),
               "--data", "0.25", "--out", str(tmp_path / "d.json")])
    text = capsys.readouterr().out
    assert rc == 0
    assert "advice: " in text and "batch size" in text and "tree fitted on" in text
    assert json.loads((tmp_path / "d.json").read_text())["advice"] == d.advice
    # --set reaches the diagnoser: the paper's bounds give the trees of fit_diagnoser(bounds="paper")
    rc = main(["mdtree", "diagnose", "--population", str(out), str(model_dir / "seed0"),
               str(model_dir / "seed1" / "model.safetensors"), "--data", "0.25", "--set", "bounds=paper", "--json"])
    res = json.loads(capsys.readouterr().out)
    paper = fit_diagnoser(pop, bounds="paper")
    assert rc == 0 and res["predictions"] == {k: str(v) for k, v in
                                              paper.predict(pd.DataFrame([d.features])).iloc[0].items()}
    assert {k: v["train_accuracy"] for k, v in res["trees"].items()} == {
        k: v["train_accuracy"] for k, v in paper.summary().items()}

    rc = main(["mdtree", "population", "--out-dir", str(out), "--grid", "tiny"])  # resumes: nothing to train
    text = capsys.readouterr().out
    assert rc == 0 and "4/4 configurations finished (0 trained now, 4 resumed)" in text
    rc = main(["mdtree", "population", "--out-dir", str(out), "--json"])  # no --grid/--set: the folder's own
    res = json.loads(capsys.readouterr().out)
    assert rc == 0 and res["finished"] == 4 and res["trained"] == 0


def test_bad_input(tiny, tmp_path, capsys):
    out = tiny[0]
    (model_dir,) = [p for p in (out / "models").iterdir() if "width=1" in p.name and "bs=32" in p.name]
    rc = main(["mdtree", "diagnose", "--population", str(out), str(model_dir / "seed0")])
    assert rc == 2 and "two models" in capsys.readouterr().err
    bogus = tmp_path / "x.safetensors"
    bogus.write_bytes(b"not a tensor file")
    rc = main(["mdtree", "diagnose", "--population", str(out), str(bogus), str(bogus)])
    assert rc == 2 and "safetensors" in capsys.readouterr().err
    rc = main(["mdtree", "diagnose", "--population", str(tmp_path), str(bogus), str(bogus)])
    assert rc == 2 and "not a population folder" in capsys.readouterr().err
    with pytest.raises(DiagnosisError, match="another configuration"):
        build_population(PopulationConfig(widths=(1,), batch_sizes=(32,), data_fractions=(0.25,), epochs=5), out)
    with pytest.raises(ConfigError, match="2 distinct seeds"):
        PopulationConfig(seeds=(0,))
    with pytest.raises(ConfigError, match=r"data_fractions must be a finite number in \(0.0, 1.0\]"):
        PopulationConfig(data_fractions=(0.0,))
    with pytest.raises(ConfigError, match="unknown option.*'epoch'.*valid: .*epochs"):
        PopulationConfig.from_dict({"epoch": 3})
    with pytest.raises(ConfigError, match="unknown population grid 'huge'; expected one of small, tiny"):
        build_population("huge", tmp_path / "p")
    with pytest.raises(ConfigError, match="unknown task 'depth'"):
        DiagnoserConfig(tasks=("depth",))


def test_fit_diagnoser_on_md_population():
    """On the paper's population (two classes per task) the diagnoser fits real trees in the paper's units."""
    clean = mdtree_population("normal")
    sub = clean[clean["data"].isin([2, 10]) & clean["width"].isin([4, 16, 64])]
    diag = fit_diagnoser(sub, tasks=("temperature", "width"), bounds="paper")
    assert set(diag.trees) == {"temperature", "width"} and not diag.constant
    labelled = sub[sub["bs_failure"] != "optimal"]
    majority = labelled["bs_failure"].value_counts(normalize=True).max()
    assert diag.trees["temperature"].train_accuracy_ > majority
    pred = diag.predict(labelled)
    assert set(pred["temperature"]) <= {"large", "small"}
    # a saved diagnoser (JSON) predicts the same
    back = Diagnoser.from_dict(json.loads(json.dumps(diag.to_dict())))
    assert back.n_train == diag.n_train and set(back.trees) == set(diag.trees)
    pd.testing.assert_frame_equal(back.predict(labelled), pred)
    with pytest.raises(DiagnosisError, match="not a saved diagnoser"):
        Diagnoser.from_dict({"schema": "other"})
    with pytest.raises(ConfigError, match="unknown diagnoser key.*'extra'"):
        Diagnoser.from_dict({**diag.to_dict(), "extra": 1})
    auto = fit_diagnoser(sub, tasks=("temperature",), bounds="auto")
    lo, hi = auto.trees["temperature"].bounds[2]
    assert lo <= sub["hessian_t"].min() and hi >= sub["hessian_t"].max()
