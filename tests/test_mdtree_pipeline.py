"""MD tree on an own model family: a tiny real population (2 widths x 2 batch sizes x 1 digits fraction x 2 seeds,
2 epochs), its features and units, resuming an interrupted run, and diagnosing a new model with advice."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from htsr.cli.main import main
from htsr.diagnosis import DiagnosisError
from htsr.diagnosis.pipeline import (
    ADVICE,
    GRIDS,
    PopulationConfig,
    build_population,
    diagnose,
    fit_diagnoser,
    load_population_dir,
)

MDTREE_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mdtree"
TINY = GRIDS["tiny"]


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


def test_diagnose_reproduces_features_and_gives_advice(tiny, capsys):
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

    rc = main(["mdtree", "diagnose", "--population", str(out), str(model_dir / "seed0"),
               str(model_dir / "seed1" / "model.safetensors"), "--data", "0.25", "--out", str(out / "d.json")])
    text = capsys.readouterr().out
    assert rc == 0
    assert "advice: " in text and "batch size" in text
    assert json.loads((out / "d.json").read_text())["advice"] == d.advice

    rc = main(["mdtree", "population", "--out", str(out), "--grid", "tiny"])  # resumes: nothing to train
    text = capsys.readouterr().out
    assert rc == 0 and "4/4 configurations finished (0 trained now, 4 resumed)" in text


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
    with pytest.raises(DiagnosisError, match="another recipe"):
        build_population(PopulationConfig(widths=(1,), batch_sizes=(32,), data_fractions=(0.25,), epochs=5), out)
    with pytest.raises(DiagnosisError, match="2 distinct seeds"):
        PopulationConfig(seeds=(0,))
    with pytest.raises(DiagnosisError, match="data fractions"):
        PopulationConfig(data_fractions=(0.0,))
    with pytest.raises(DiagnosisError, match="unknown grid"):
        build_population("huge", tmp_path / "p")


@pytest.mark.skipif(not (MDTREE_DATA / "dataframe_normal_public.csv").is_file(), reason="shared MD data absent")
def test_fit_diagnoser_on_md_population():
    """On the paper's population (two classes per task) the diagnoser fits real trees in the paper's units."""
    clean = pd.read_csv(MDTREE_DATA / "dataframe_normal_public.csv")
    sub = clean[clean["data"].isin([2, 10]) & clean["width"].isin([4, 16, 64])]
    diag = fit_diagnoser(sub, tasks=("temperature", "width"), bounds="paper")
    assert set(diag.trees) == {"temperature", "width"} and not diag.constant
    labelled = sub[sub["bs_failure"] != "optimal"]
    majority = labelled["bs_failure"].value_counts(normalize=True).max()
    assert diag.trees["temperature"].train_accuracy_ > majority
    pred = diag.predict(labelled)
    assert set(pred["temperature"]) <= {"large", "small"}
    # a saved diagnoser (JSON) predicts the same
    import json

    from htsr.diagnosis.pipeline import Diagnoser

    back = Diagnoser.from_dict(json.loads(json.dumps(diag.to_dict())))
    assert back.n_train == diag.n_train and set(back.trees) == set(diag.trees)
    pd.testing.assert_frame_equal(back.predict(labelled), pred)
    with pytest.raises(DiagnosisError, match="not a saved diagnoser"):
        Diagnoser.from_dict({"schema": "other"})
    auto = fit_diagnoser(sub, tasks=("temperature",), bounds="auto")
    lo, hi = auto.trees["temperature"].bounds[2]
    assert lo <= sub["hessian_t"].min() and hi >= sub["hessian_t"].max()
