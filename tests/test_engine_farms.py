"""FARMS windows and pooled ESD, the aspect-ratio claim on seeded random matrices, detX / ERG condition."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from htsr.errors import ConfigError
from htsr.spectra.analysis import analyze
from htsr.spectra.detx import detx, detx_columns
from htsr.spectra.farms import farms_eigenvalues, grid, starts


def test_starts_follow_the_reference_formula():
    # LLaMA-7B 4096 x 4096, r=2000, ops=10 (method note: stride 232, 10 starts per side, 100 windows)
    s = starts(4096, 2000, 10)
    assert s == [232 * i for i in range(10)]
    assert starts(100, 100, 10) == [0]  # window = side: one window
    assert starts(50, 10, 1) == [0]  # ops=1: one window (the reference divides by zero)
    assert starts(50, 10, 3, stride=15) == [0, 15, 30]
    # span 7, ops 10: stride max(1, 7 // 9) = 1, count min(10, 8) = 8
    assert starts(17, 10, 10) == list(range(8))
    (wr, wc), pos = grid(4096, 4096, 2000, 1.0, 10)
    assert (wr, wc) == (2000, 2000) and len(pos) == 100


def test_pooled_eigenvalues_equal_the_windows_svd():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(20, 50, generator=g, dtype=torch.float64)  # wide: oriented to 50 x 20 first
    lam, n, shape = farms_eigenvalues(w, r=8, q=1.5, windows=3)
    assert shape == (8, 12) and n == 9
    wt = w.T.numpy()
    # independent placement: rows 50-8=42 -> stride 21 -> 0, 21, 42; cols 20-12=8 -> stride 4 -> 0, 4, 8
    ref = np.sort(np.concatenate([np.linalg.svd(wt[i:i + 8, j:j + 12], compute_uv=False) ** 2
                                  for i in (0, 21, 42) for j in (0, 4, 8)]))
    np.testing.assert_allclose(lam, ref, rtol=1e-9, atol=1e-12)


def _matrix(dist: str, n: int, m: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, m, generator=g)
    if dist == "gauss":
        return z
    chi2 = sum(torch.randn(n, m, generator=g) ** 2 for _ in range(3))
    return z / torch.sqrt(chi2 / 3)


@pytest.mark.parametrize("dist", ["gauss", "t3"])
def test_farms_removes_the_aspect_ratio_drift(dist, torch_one_thread):
    # median xmin (TempBalance's rule): the Hill alpha is a function of the ESD's shape, which depends on
    # Q = N/M for the whole matrix but not for FARMS's fixed square windows
    plain, farms = [], []
    for a in (1, 2, 4, 8):
        sd = {"w.weight": _matrix(dist, 128 * a, 128, seed=a)}
        plain.append(analyze(sd, xmin_rule="median", workers=1).rows[0]["alpha"])
        farms.append(analyze(sd, xmin_rule="median", estimator="farms", workers=1).rows[0]["alpha"])
    assert plain[-1] - plain[0] > 1.5  # plain alpha drifts up with the aspect ratio (2.1 -> 4+)
    assert np.ptp(farms) < 0.1 * np.ptp(plain)


def test_farms_ks_flatter_on_heavy_tails(torch_one_thread):
    plain, farms = [], []
    for a in (1, 2, 4, 8):
        sd = {"w.weight": _matrix("t3", 256 * a, 256, seed=a)}
        plain.append(analyze(sd, workers=1).rows[0]["alpha"])
        farms.append(analyze(sd, estimator="farms", workers=1).rows[0]["alpha"])
    assert np.ptp(farms) < 0.5 * np.ptp(plain)


def test_farms_row_columns_and_norms_of_the_whole_matrix(torch_one_thread):
    sd = {"w.weight": _matrix("t3", 300, 100, seed=1)}
    p = analyze(sd, workers=1).rows[0]
    f = analyze(sd, estimator="farms", farms_windows=4, workers=1).rows[0]
    assert f["farms_windows"] == 16 and f["farms_window"] == "50x50"
    assert f["log_spectral_norm"] == pytest.approx(p["log_spectral_norm"])
    assert f["stable_rank"] == pytest.approx(p["stable_rank"])
    assert f["alpha"] != pytest.approx(p["alpha"])


def test_farms_bad_input():
    sd = {"big.weight": torch.randn(300, 100), "small.weight": torch.randn(40, 30)}
    a = analyze(sd, estimator="farms", farms_rows=64, workers=1)
    assert a["big"]["status"] == "success"
    assert a["small"]["status"] == "skipped" and "FARMS window 64x64" in a["small"]["reason"]
    assert "larger than the matrix 40x30" in a["small"]["reason"]
    for bad, msg in [({"estimator": "farm"}, "unknown estimator"), ({"farms_q": 0.0}, "farms_q"),
                     ({"farms_windows": 0}, "farms_windows"), ({"farms_rows": 1}, "farms_rows"),
                     ({"farms_stride": 0}, "farms_stride")]:
        with pytest.raises(ConfigError, match=msg):
            analyze(sd, **bad)


def test_farms_through_tempbalance_options_and_cli(capsys):
    from htsr.cli.main import main
    from htsr.tempbalance.config import TempBalanceConfig

    cfg = TempBalanceConfig(analysis_options={"estimator": "farms", "farms_rows": 64})
    assert cfg.analysis_config().estimator == "farms"
    with pytest.raises(ConfigError, match="farms_q"):
        TempBalanceConfig(analysis_options={"estimator": "farms", "farms_q": -1.0})
    assert main(["analyze", "--example", "minilm", "--layers", "encoder.layer.0.intermediate.dense",
                 "--set", "estimator=farms", "--set", "farms_rows=128", "--all-columns"]) == 0
    out = capsys.readouterr().out
    assert "128x128" in out
    assert main(["analyze", "--example", "minilm", "--layers", "encoder.layer.0.intermediate.dense",
                 "--estimator", "farms", "--detx", "--json"]) == 0
    import json

    row = json.loads(capsys.readouterr().out)["rows"][0]
    assert row["farms_window"] == "192x192" and row["detx_num"] > 0


# ------------------------------------------------------------------ detX
def test_detx_reference_unit_case():
    # WeightWatcher tests/test.py test_detX_constraint: 90 zeros and 10 ones -> (11, 89)
    assert detx(np.r_[np.zeros(90), np.ones(10)]) == (11, 89)
    assert detx(np.ones(5)) == (5, 0)  # product never below 1


def test_detx_small_exact_case():
    lam = np.array([0.1, 0.5, 1.0, 2.0, 6.4])  # mean 2 -> rescaled 0.05, 0.25, 0.5, 1, 3.2
    # top-down products: 3.2, 3.2, 1.6, 0.4 < 1 at index 1 -> num 4
    assert detx(lam) == (4, 1)
    cols = detx_columns(lam, xmin=2.0)
    assert cols["detx_xmin"] == 0.5 and cols["detx_num"] == 4
    assert cols["detx_delta"] == pytest.approx((2.0 - 0.5) / 2.0)
    assert cols["detx_log_ratio"] == pytest.approx(math.log10(4.0))


def test_detx_no_overflow_and_columns_in_rows(torch_one_thread):
    lam = np.r_[np.full(400, 1e-3), np.full(10, 1e30)]  # np.prod of the rescaled tail overflows to inf
    num, idx = detx(lam)
    assert 10 < num <= 410 and idx == 410 - num
    sd = {"w.weight": _matrix("t3", 200, 100, seed=3)}
    r = analyze(sd, detx=True, workers=1).rows[0]
    lam = np.linalg.svd(sd["w.weight"].double().numpy(), compute_uv=False) ** 2
    ref_num, ref_idx = detx(lam)
    assert r["detx_num"] == ref_num and r["detx_xmin"] == pytest.approx(np.sort(lam)[ref_idx], rel=1e-8)
    assert math.isfinite(r["detx_log_ratio"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_farms_cuda_matches_cpu():
    w = _matrix("t3", 1024, 256, seed=4)
    cpu, n, _ = farms_eigenvalues(w, precision="float64")
    gpu, m, _ = farms_eigenvalues(w, precision="float64", device="cuda")
    assert n == m == 100
    np.testing.assert_allclose(gpu, cpu, rtol=1e-9, atol=1e-9 * cpu.max())
    sd = {"w.weight": w}
    a = analyze(sd, estimator="farms", precision="float64")["w"]["alpha"]
    b = analyze(sd, estimator="farms", precision="float64", device="cuda")["w"]["alpha"]
    assert a == pytest.approx(b, rel=1e-9)


def test_farms_evals_are_the_fitted_pooled_esd(torch_one_thread):
    sd = {"w.weight": _matrix("t3", 200, 100, seed=5)}
    a = analyze(sd, estimator="farms", farms_windows=3, workers=1)
    ref, n, _ = farms_eigenvalues(sd["w.weight"], windows=3)
    assert n == 9 and a.evals["w"].size == 9 * 50
    np.testing.assert_allclose(a.evals["w"], ref)
