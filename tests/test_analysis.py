"""analyze(): parity with WeightWatcher on real weights, presets, invariances, summary, outputs."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math

import numpy as np
import pandas as pd
import pytest
import torch

import htsr
from htsr.errors import ConfigError
from tests.conftest import heavy_tailed


@pytest.fixture(scope="module")
def ww_minilm(minilm_model):
    import weightwatcher as ww

    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()):
        df = ww.WeightWatcher(model=minilm_model).analyze()
    return df.set_index("longname")


def test_weightwatcher_preset_reproduces_ww077_on_real_minilm(minilm_model, ww_minilm):
    """Same layers and the same alpha (|diff| <= 1e-4) as WeightWatcher 0.7.7's default analyze()."""
    ours = htsr.analyze(minilm_model, preset="weightwatcher").to_pandas().set_index("name")
    fitted = ours[ours.status == "success"]
    assert set(fitted.index) == set(ww_minilm.index)
    j = ww_minilm.join(fitted, rsuffix="_h", how="inner")
    assert len(j) == 39
    assert (j.alpha - j.alpha_h).abs().max() <= 1e-4
    assert np.allclose(j.xmin, j.xmin_h, rtol=1e-6)
    assert np.allclose(j.D, j.D_h, rtol=1e-6, atol=1e-9)
    assert np.allclose(j.num_pl_spikes, j.n_tail)
    for col in ("log_norm", "log_spectral_norm", "stable_rank", "alpha_weighted"):
        other = "alpha_hat" if col == "alpha_weighted" else col
        assert np.allclose(j[col], j[other + ("_h" if other in ww_minilm.columns else "")], rtol=1e-5), col
    # the skipped layer (token_type_embeddings, 2 eigenvalues) is reported, not dropped
    skipped = ours[ours.status == "skipped"]
    assert "embeddings.token_type_embeddings" in skipped.index
    assert "too few eigenvalues" in skipped.loc["embeddings.token_type_embeddings", "reason"]


def test_presets_record_conventions(minilm_model):
    a = htsr.analyze(minilm_model, preset="tempbalance", layers=["encoder.layer.0.*"])
    assert a.metadata["preset"] == "tempbalance"
    assert a.metadata["config"]["xmin_rule"] == "median"
    assert a.metadata["schema"].startswith("htsr.analysis/")
    r = a.rows[0]
    # median rule: xmin is the median eigenvalue -> half the spectrum in the tail
    assert r["n_tail"] == r["num_evals"] - int(r["num_evals"] / 2)
    p = htsr.analyze(minilm_model, preset="alphapruning", layers=["encoder.layer.0.*"])
    assert all(r["status"] == "success" for r in p.rows)
    assert p.metadata["config"]["xmin_rule"] == "peak"


def test_unknown_preset_or_option_is_a_clear_error():
    with pytest.raises(ConfigError, match="unknown preset 'ww'.*expected one of"):
        htsr.analyze({}, preset="ww")
    with pytest.raises(ConfigError, match="unknown analysis option.*xmin_rul"):
        htsr.analyze({}, xmin_rul="ks")
    with pytest.raises(ConfigError, match="xmin_rule"):
        htsr.analyze({}, xmin_rule="best")


@pytest.mark.parametrize("rule", ["ks", "median", "peak"])
def test_alpha_invariant_to_scaling_and_transpose(rule):
    w = heavy_tailed(300, 150, seed=11)
    base = htsr.analyze({"w.weight": w}, xmin_rule=rule, threshold=0.0).rows[0]["alpha"]
    scaled = htsr.analyze({"w.weight": 7.5 * w}, xmin_rule=rule, threshold=0.0).rows[0]["alpha"]
    trans = htsr.analyze({"w.weight": w.T.contiguous()}, xmin_rule=rule, threshold=0.0).rows[0]["alpha"]
    assert math.isfinite(base)
    assert scaled == pytest.approx(base, rel=1e-6)
    assert trans == pytest.approx(base, rel=1e-9)


def test_heavier_tails_give_smaller_alpha():
    light = htsr.analyze({"w.weight": torch.randn(400, 200, generator=torch.Generator().manual_seed(0))})
    heavy = htsr.analyze({"w.weight": heavy_tailed(400, 200, seed=0, df=2)})
    assert heavy.rows[0]["alpha"] < light.rows[0]["alpha"]


def test_summary_skips_failed_rows_and_counts_them():
    sd = {"good.weight": heavy_tailed(200, 100, seed=1), "zero.weight": torch.zeros(50, 50),
          "nan.weight": torch.full((40, 40), float("nan")), "tiny.weight": torch.randn(1, 30)}
    a = htsr.analyze(sd)
    s = a.summary()
    assert (s["n_rows"], s["n_success"], s["n_failed"], s["n_error"], s["n_skipped"]) == (4, 1, 1, 1, 1)
    assert s["alpha"] == pytest.approx(a["good"]["alpha"])
    assert not any(r.get("alpha") == -1 for r in a.rows)
    assert math.isnan(a.alphas()["zero"])


def test_mp_fit_and_randomize_are_seeded(minilm_model):
    kw = dict(layers=["encoder.layer.2.*"], mp_fit=True, randomize=True)
    a = htsr.analyze(minilm_model, seed=3, **kw).to_pandas()
    b = htsr.analyze(minilm_model, seed=3, **kw).to_pandas()
    c = htsr.analyze(minilm_model, seed=4, **kw).to_pandas()
    pd.testing.assert_frame_equal(a.drop(columns="time_s"), b.drop(columns="time_s"))
    assert not np.allclose(a.rand_distance, c.rand_distance)
    for col in ("num_spikes", "mp_softrank", "bulk_max", "rand_distance", "ww_softrank", "rand_num_spikes"):
        assert a[col].notna().all(), col
    # trained weights carry structure above the shuffled spectrum's edge
    assert (a.ww_softrank < 1).all()
    assert (a.rand_distance > 0).all()


def test_workers_do_not_change_results(minilm_model):
    kw = dict(layers=["encoder.layer.0.*", "embeddings.*"], include_embeddings=True)
    a = htsr.analyze(minilm_model, workers=1, **kw).to_pandas().drop(columns="time_s")
    b = htsr.analyze(minilm_model, workers=3, **kw).to_pandas().drop(columns="time_s")
    assert len(a) == 9
    pd.testing.assert_frame_equal(a, b)


def test_outputs_json_csv_parquet(tmp_path, minilm_model):
    a = htsr.analyze(minilm_model, layers=["encoder.layer.0.*"])
    pj = a.save(tmp_path / "out" / "a.json")
    data = json.loads(pj.read_text())
    assert data["schema"] == "htsr.analysis/1"
    assert len(data["rows"]) == 6 and data["summary"]["n_success"] == 6
    assert data["metadata"]["config"]["xmin_rule"] == "ks"
    csv = pd.read_csv(a.save(tmp_path / "a.csv"))
    pq = pd.read_parquet(a.save(tmp_path / "a.parquet"))
    assert list(csv.name) == list(pq.name) == [r["name"] for r in a.rows]
    np.testing.assert_allclose(csv.alpha, pq.alpha)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "a.parquet", "out"]  # no temp files left
    with pytest.raises(ValueError, match="unsupported file type"):
        a.save(tmp_path / "a.xlsx")


def test_failed_output_write_leaves_existing_file(tmp_path, monkeypatch):
    a = htsr.analyze({"w.weight": heavy_tailed(50, 20)})
    target = tmp_path / "a.json"
    target.write_text("previous")

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(json, "dumps", boom)
    with pytest.raises(RuntimeError):
        a.save(target)
    assert target.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_gof_and_tpl_columns():
    a = htsr.analyze({"w.weight": heavy_tailed(400, 200, seed=5)}, gof=True, n_boot=20, tpl=True, seed=1)
    r = a.rows[0]
    assert 0.0 <= r["gof_p"] <= 1.0
    for k in ("lr_lognormal", "lr_lognormal_p", "lr_exponential", "lr_exponential_p", "tpl_alpha", "Lambda"):
        assert k in r and math.isfinite(r[k]), k
    b = htsr.analyze({"w.weight": heavy_tailed(400, 200, seed=5)}, gof=True, n_boot=20, seed=1)
    assert b.rows[0]["gof_p"] == r["gof_p"]


def test_clip_xmax_fingers_column():
    w = heavy_tailed(300, 150, seed=8)
    u, s, vt = torch.linalg.svd(w, full_matrices=False)
    s[:3] *= 25  # three outsized "finger" eigenvalues
    a = htsr.analyze({"w.weight": (u * s) @ vt}, fingers="clip_xmax")
    r = a.rows[0]
    assert {"num_fingers", "raw_alpha"} <= set(r)
    assert r["alpha"] <= r["raw_alpha"]


def test_no_side_effects_at_import():
    import subprocess
    import sys

    code = (
        "import logging, warnings, sys, io\n"
        "import numpy, scipy, pandas, torch, safetensors, matplotlib, tqdm  # third-party first\n"
        "before = list(warnings.filters)\n"
        "buf = io.StringIO(); sys.stdout = buf\n"
        "import htsr, htsr.spectra.analysis, htsr.spectra.plots, htsr.cli.main\n"
        "sys.stdout = sys.__stdout__\n"
        "assert not logging.getLogger().handlers, logging.getLogger().handlers\n"
        "assert list(warnings.filters) == before\n"
        "assert buf.getvalue() == '', buf.getvalue()\n"
        "import matplotlib; assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_analysis_matches_cpu():
    sd = {"a.weight": heavy_tailed(512, 256, seed=1),
          "conv.weight": heavy_tailed(64, 32 * 9, seed=2).reshape(64, 32, 3, 3)}
    for prec in ("float64", "float32"):
        cpu = htsr.analyze(sd, precision=prec).to_pandas()
        gpu = htsr.analyze(sd, precision=prec, device="cuda").to_pandas()
        assert list(gpu.status) == ["success", "success"]
        np.testing.assert_allclose(gpu.alpha, cpu.alpha, rtol=1e-8 if prec == "float64" else 1e-3)
