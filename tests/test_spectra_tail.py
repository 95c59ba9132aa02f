"""Tail-only spectrum: top eigenvalues by block Krylov, the exactness guard, the fall-back, bad input.

References are independent of the code under test: numpy's dense ``eigvalsh`` of the float64 Gram
matrix, fitted by the same KS fitter (what the tail path must reproduce is the *spectrum's* fit).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import htsr
from htsr.errors import ConfigError
from htsr.spectra import powerlaw as PL
from htsr.spectra.config import make_config
from htsr.spectra.eigen import TailTooSmallError, _two_stage, top_eigenvalues
from tests.conftest import heavy_tailed


def _dense(w: torch.Tensor) -> np.ndarray:
    a = w.double().numpy()
    a = a if a.shape[0] >= a.shape[1] else a.T
    return np.clip(np.linalg.eigvalsh(a.T @ a), 0, None)


def test_top_eigenvalues_match_dense_solve():
    w = heavy_tailed(600, 300, seed=11, df=3)
    ref = _dense(w)
    top = top_eigenvalues(w, 30, max_basis=280, block=8)
    assert top.converged and top.k == 30 and top.m == 300
    np.testing.assert_allclose(top.values, ref[-30:], rtol=1e-9)
    assert math.isclose(top.trace, float((w.double() ** 2).sum()), rel_tol=1e-12)
    # transposed input: same spectrum
    np.testing.assert_allclose(top_eigenvalues(w.T, 30, max_basis=280, block=8).values, ref[-30:], rtol=1e-9)


def test_top_eigenvalues_too_small_is_a_clear_error():
    with pytest.raises(TailTooSmallError, match="too small for a tail-only spectrum"):
        top_eigenvalues(torch.randn(50, 40), 5)
    with pytest.raises(TailTooSmallError, match="2k = 202"):
        top_eigenvalues(torch.randn(300, 200), 101)
    with pytest.raises(ValueError, match="one matrix"):
        top_eigenvalues(torch.randn(2, 100, 100), 5)


def test_not_converged_is_reported():
    w = heavy_tailed(400, 256, seed=3, df=3)
    top = top_eigenvalues(w, 64, max_basis=96, block=32)
    assert not top.converged


@pytest.mark.parametrize("bad,match", [
    ({"tail_min_side": 16}, "too small for a tail-only"),
    ({"tail_fraction": 0.7}, "tail_fraction"),
    ({"tail_only": True, "mp_fit": True}, "mp_fit"),
    ({"tail_only": True, "randomize": True}, "randomize"),
    ({"tail_only": True, "eig_method": "svd"}, "svd"),
])
def test_bad_tail_options(bad, match):
    with pytest.raises(ConfigError, match=match):
        make_config("htsr", **bad)


def _low_rank(n: int, m: int, r: int, seed: int) -> torch.Tensor:
    """B @ A with heavy-tailed factors (a LoRA-like product): rank r."""
    return heavy_tailed(n, r, seed=seed, df=3) @ heavy_tailed(r, m, seed=seed + 1, df=3) / math.sqrt(r)


def _model(mats):
    mods = [torch.nn.Linear(w.shape[1], w.shape[0], bias=False) for w in mats]
    with torch.no_grad():
        for mod, w in zip(mods, mats, strict=True):
            mod.weight.copy_(w)
    return torch.nn.Sequential(*mods)


@pytest.mark.parametrize("opts", [{}, {"xmin_rule": "median"}, {"preset": "weightwatcher"},
                                  {"fingers": "clip_xmax"}, {"tpl": True, "gof": True, "n_boot": 5}])
def test_tail_only_equals_full_computation_on_low_rank(opts):
    """|dalpha| <= 1e-6 (and every kept metric) against the full solve, for any rule, on rank-r products."""
    mats = [_low_rank(700, 512, 24, 0), _low_rank(512, 600, 40, 2), _low_rank(1024, 512, 8, 4)]
    model = _model(mats)
    opts = dict(opts)
    preset = opts.pop("preset", "htsr")
    tail = htsr.analyze(model, preset, tail_only=True, tail_min_side=256, workers=1, **opts)
    full = htsr.analyze(model, preset, precision="float64", workers=1, **opts)
    for t, f, w in zip(tail.rows, full.rows, mats, strict=True):
        assert t["spectrum"] == "tail", t["spectrum_note"]
        assert t["spectrum_k"] == 64 and t["status"] == f["status"] == "success"
        assert abs(t["alpha"] - f["alpha"]) <= 1e-6
        assert t["n_tail"] == f["n_tail"] and t["xmin"] == pytest.approx(f["xmin"], rel=1e-9)
        lam = _dense(w)  # independent: numpy's dense solve
        assert t["lambda_max"] == pytest.approx(lam[-1], rel=1e-10)
        assert t["norm"] == pytest.approx(float((w.double() ** 2).sum()), rel=1e-10)
        assert t["stable_rank"] == pytest.approx(f["stable_rank"], rel=1e-9)
        assert t["alpha_hat"] == pytest.approx(f["alpha_hat"], abs=1e-6)
        assert t["log_alpha_norm"] == pytest.approx(f["log_alpha_norm"], abs=1e-9)
        assert math.isnan(t["entropy"]) and math.isnan(t["matrix_rank"])
        for col in ("tpl_alpha", "gof_p", "lr_lognormal", "num_fingers"):
            if col in f:
                assert t[col] == pytest.approx(f[col], rel=1e-5, abs=1e-6), col


def test_full_rank_matrix_falls_back_and_says_so():
    w = heavy_tailed(700, 512, seed=0, df=3)
    a = htsr.analyze(_model([w]), tail_only=True, tail_min_side=256, workers=1)
    row = a.rows[0]
    assert row["spectrum"] == "full"
    assert "of the trace" in row["spectrum_note"] and "lies outside the top 64; full solve" in row["spectrum_note"]
    # the give-up happened on the first small basis, not after growing it to m/2
    top = top_eigenvalues(w, 64, max_rest_share=1e-3)
    assert not top.converged and top.basis == 128 and "lies outside the top 64" in top.stopped
    lam = _dense(w)
    assert row["alpha"] == pytest.approx(PL.fit_power_law(lam, "ks", threshold=PL.EVALS_THRESH).alpha, abs=1e-6)
    assert np.isfinite(row["entropy"])  # the full solve's metrics


def test_small_matrix_gets_full_solve_with_reason():
    model = torch.nn.Sequential(torch.nn.Linear(100, 120, bias=False))
    a = htsr.analyze(model, tail_only=True)
    row = a.rows[0]
    assert row["spectrum"] == "full" and row["spectrum_note"] == "smaller side 100 < tail_min_side 2048"
    assert "spectrum" not in htsr.analyze(model).rows[0]  # off by default: rows unchanged


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_two_stage_solver_matches_numpy(dtype):
    solve = _two_stage(np.dtype(dtype))
    if solve is None:
        pytest.skip("no bundled LAPACKE ?syevd_2stage")
    a = np.random.default_rng(0).standard_normal((500, 300))
    g = a.T @ a
    lam = np.sort(solve(np.asfortranarray(np.triu(g).astype(dtype))))
    ref = np.linalg.eigvalsh(g)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    assert np.max(np.abs(lam - ref)) <= tol * ref.max()


def test_cli_bad_tail_option_exits_2_with_one_line(capsys):
    from htsr.cli.main import main

    assert main(["analyze", "--example", "minilm", "--no-progress", "--set", "tail_min_side=16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "too small for a tail-only spectrum" in err[0]
    assert main(["analyze", "--example", "minilm", "--no-progress", "--set", "tail_only=true",
                 "--mp-fit"]) == 2
    assert "tail_only cannot be combined with mp_fit" in capsys.readouterr().err


def test_analysis_through_two_stage_solver_matches_dense_fit(monkeypatch):
    """The two-stage path end to end (threshold lowered so that a 512-wide Gram takes it): alpha to 1e-9."""
    from htsr.spectra import eigen

    if _two_stage(np.dtype(np.float64)) is None:
        pytest.skip("no bundled LAPACKE ?syevd_2stage")
    calls = []
    real = eigen._two_stage

    def spy(dtype):
        calls.append(np.dtype(dtype).char)
        return real(dtype)

    monkeypatch.setattr(eigen, "TWO_STAGE_MIN_DIM", {8: 256, 4: 256})
    monkeypatch.setattr(eigen, "_two_stage", spy)
    w = heavy_tailed(700, 512, seed=5, df=3)
    row = htsr.analyze(_model([w]), preset="weightwatcher", workers=1).rows[0]
    assert calls == ["d"]
    ref = PL.fit_power_law(_dense(w), "ks", threshold=PL.EVALS_THRESH, small_n=20)
    assert abs(row["alpha"] - ref.alpha) <= 1e-9 and row["n_tail"] == ref.n_tail
