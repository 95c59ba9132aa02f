"""Spectral metrics (htsr.spectra.metrics): norms, entropy, rank, Marchenko-Pastur, randomised ESDs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from htsr.spectra import metrics as M


def gram_evals(w: np.ndarray) -> np.ndarray:
    """Eigenvalues of W^T W (the smaller side), ascending, in float64."""
    w = np.asarray(w, dtype=np.float64)
    if w.shape[0] < w.shape[1]:
        w = w.T
    return np.linalg.eigvalsh(w.T @ w)


def gaussian(n: int, m: int, sigma: float = 1.0, seed: int = 0) -> np.ndarray:
    return sigma * np.random.default_rng(seed).normal(size=(n, m))


def mp_edge(n: int, m: int, sigma: float) -> float:
    """Upper Marchenko-Pastur edge of the eigenvalues of W^T W: N sigma^2 (1 + 1/sqrt(Q))^2."""
    N, Mm = max(n, m), min(n, m)
    return N * sigma**2 * (1 + 1 / math.sqrt(N / Mm)) ** 2


def with_spikes(w: np.ndarray, strengths, seed: int = 1) -> np.ndarray:
    """W + sum_i s_i u_i v_i^T with orthonormal u, v and s_i given in units of the bulk's top singular value."""
    n, m = w.shape
    rng = np.random.default_rng(seed)
    k = len(strengths)
    u = np.linalg.qr(rng.normal(size=(n, k)))[0]
    v = np.linalg.qr(rng.normal(size=(m, k)))[0]
    top = math.sqrt(mp_edge(n, m, float(w.std())))
    return w + (u * (top * np.asarray(strengths, dtype=np.float64))) @ v.T


@pytest.fixture(autouse=True)
def _single_threaded_blas():
    """The eigensolves here are small: one BLAS thread is fastest and immune to oversubscription."""
    with threadpool_limits(limits=1, user_api="blas"):
        yield


# ------------------------------------------------------------------------ norm metrics
def test_norm_metric_formulas():
    lam = np.array([0.5, 1.0, 2.0, 4.0])
    alpha = 2.5
    out = M.norm_metrics(lam, alpha)
    assert out["lambda_max"] == out["spectral_norm"] == 4.0
    assert out["log_spectral_norm"] == pytest.approx(math.log10(4.0), rel=1e-15)
    assert out["norm"] == 7.5
    assert out["log_norm"] == pytest.approx(math.log10(7.5), rel=1e-15)
    assert out["stable_rank"] == pytest.approx(7.5 / 4.0, rel=1e-15)
    assert out["alpha_hat"] == pytest.approx(alpha * math.log10(4.0), rel=1e-14)
    assert out["log_alpha_norm"] == pytest.approx(math.log10(np.sum(lam**alpha)), rel=1e-13)
    p = lam / lam.sum()
    assert out["entropy"] == pytest.approx(-(p * np.log(p)).sum() / math.log(4), rel=1e-13)


def test_norm_metrics_frobenius_and_spectral_norms_of_a_matrix():
    w = gaussian(120, 80, seed=3)
    out = M.norm_metrics(gram_evals(w), 3.0)
    assert out["norm"] == pytest.approx(np.linalg.norm(w, "fro") ** 2, rel=1e-10)
    assert out["spectral_norm"] == pytest.approx(np.linalg.norm(w, 2) ** 2, rel=1e-10)
    assert 1.0 <= out["stable_rank"] <= 80


def test_log_alpha_norm_does_not_overflow():
    out = M.norm_metrics(np.array([10.0, 1000.0]), 200.0)  # 1000^200 = 1e600 overflows float64
    assert out["log_alpha_norm"] == pytest.approx(600.0, rel=1e-14)
    out = M.norm_metrics(np.array([1000.0, 1000.0]), 200.0)
    assert out["log_alpha_norm"] == pytest.approx(600.0 + math.log10(2.0), rel=1e-14)


def test_norm_metrics_without_alpha_and_edge_cases():
    out = M.norm_metrics(np.array([1.0, 2.0]))
    assert math.isnan(out["alpha_hat"]) and math.isnan(out["log_alpha_norm"])
    assert out["norm"] == 3.0
    assert M.norm_metrics(np.array([])) == {}
    assert M.norm_metrics(np.array([np.nan, np.inf])) == {}
    out = M.norm_metrics(np.array([np.nan, 1.0, 3.0]), 2.0)  # non-finite entries are ignored
    assert out["norm"] == 4.0 and out["log_alpha_norm"] == pytest.approx(1.0)
    out = M.norm_metrics(np.zeros(3), 2.0)
    assert math.isnan(out["log_norm"]) and math.isnan(out["stable_rank"]) and math.isnan(out["alpha_hat"])


# ---------------------------------------------------------------------------- entropy
def test_entropy_flat_spectrum_is_one_and_spike_is_near_zero():
    assert M.matrix_entropy(np.full(50, 3.7)) == pytest.approx(1.0, abs=1e-12)
    spiky = np.r_[1e6, np.full(99, 1e-6)]
    assert 0.0 <= M.matrix_entropy(spiky) < 1e-3
    assert math.isnan(M.matrix_entropy(np.array([2.0])))
    assert math.isnan(M.matrix_entropy(np.array([0.0, 0.0, 5.0])))


@pytest.mark.parametrize("seed", range(5))
def test_entropy_in_unit_interval(seed):
    rng = np.random.default_rng(seed)
    for lam in (gram_evals(rng.standard_t(3, size=(80, 40))), rng.pareto(1.0, 300), rng.uniform(size=10)):
        e = M.matrix_entropy(lam)
        assert 0.0 < e < 1.0
        assert M.norm_metrics(lam, 2.0)["entropy"] == e


def test_entropy_is_scale_invariant_and_uses_the_rank():
    lam = np.random.default_rng(4).pareto(2.0, 200)
    assert M.matrix_entropy(1e-4 * lam) == pytest.approx(M.matrix_entropy(lam), rel=1e-12)
    # rank 8 with a flat nonzero spectrum, plus rounding noise where the zeros are
    lam = np.r_[np.full(8, 2.0), np.full(100, 1e-18)]
    assert M.matrix_entropy(lam) < 0.5  # normalised by ln(108)
    assert M.matrix_entropy(lam, rank=8) == pytest.approx(1.0, abs=1e-12)
    assert M.norm_metrics(lam, 2.0, rank=8)["entropy"] == pytest.approx(1.0, abs=1e-12)
    assert math.isnan(M.matrix_entropy(lam, rank=1))


# ------------------------------------------------------------------------------- rank
def test_rank_metrics_full_rank():
    w = gaussian(60, 40, seed=5)
    lam = gram_evals(w)
    r = M.rank_metrics(lam, 60, 40, np.finfo(np.float64).eps)
    assert r["matrix_rank"] == 40 and r["rank_loss"] == 0 and r["weak_rank_loss"] == 0
    sv = np.linalg.svd(w, compute_uv=False)
    assert r["sv_max"] == pytest.approx(sv.max(), rel=1e-10)
    assert r["sv_min"] == pytest.approx(sv.min(), rel=1e-8)


def test_rank_metrics_from_singular_values_matches_numpy():
    rng = np.random.default_rng(6)
    w = rng.normal(size=(70, 12)) @ rng.normal(size=(12, 50))  # rank 12
    sv = np.linalg.svd(w, compute_uv=False)
    r = M.rank_metrics(sv**2, 70, 50, np.finfo(np.float64).eps)
    assert r["matrix_rank"] == np.linalg.matrix_rank(w) == 12
    assert r["rank_loss"] == 38
    assert r["weak_rank_loss"] == int((sv**2 < 1e-6).sum()) >= 38


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rank_metrics_from_gram_eigenvalues_with_solver_floor(dtype):
    """A Gram eigensolve turns the zeros of a rank-deficient W into ~eps * lambda_max noise."""
    rng = np.random.default_rng(7)
    w = (rng.normal(size=(300, 20)) @ rng.normal(size=(20, 200))).astype(dtype)
    g = w.T.astype(dtype) @ w
    lam = np.linalg.eigvalsh(g).astype(np.float64)  # solved in W's precision
    eps = float(np.finfo(dtype).eps)
    r = M.rank_metrics(lam, 300, 200, eps, eig_eps=eps)
    assert r["matrix_rank"] == np.linalg.matrix_rank(w) == 20
    assert r["rank_loss"] == 180
    # the floor never removes genuine eigenvalues of a full-rank matrix
    lam_full = gram_evals(gaussian(300, 200, seed=8))
    assert M.rank_metrics(lam_full, 300, 200, 2.2e-16, eig_eps=2.2e-16)["matrix_rank"] == 200


def test_rank_metrics_empty():
    assert M.rank_metrics(np.array([]), 3, 2, 1e-7) == {"matrix_rank": 0, "rank_loss": 0, "weak_rank_loss": 0}


# ------------------------------------------------------------------- Marchenko-Pastur
@pytest.mark.parametrize(("n", "m"), [(2000, 500), (800, 800), (1000, 250)])
@pytest.mark.parametrize("sigma", [1.0, 0.02, 30.0])
def test_mp_fit_pure_noise(n, m, sigma):
    w = gaussian(n, m, sigma, seed=n + m)
    lam = gram_evals(w)
    r = M.mp_fit(lam, n, m)
    edge = mp_edge(n, m, sigma)
    assert r["num_spikes"] == 0
    assert r["bulk_max"] == pytest.approx(edge, rel=0.03)
    assert r["sigma_mp"] == pytest.approx(sigma, rel=0.02)
    Q = n / m
    assert r["bulk_min"] == pytest.approx(n * sigma**2 * (1 - 1 / math.sqrt(Q)) ** 2, rel=0.05, abs=1e-9 * edge)
    assert r["mp_softrank"] == pytest.approx(r["bulk_max"] / lam.max(), rel=1e-12)
    assert 0.9 < r["mp_softrank"] < 1.1
    # the orientation of W does not matter
    r_t = M.mp_fit(gram_evals(w.T), m, n)
    assert r_t["num_spikes"] == 0 and r_t["bulk_max"] == pytest.approx(r["bulk_max"], rel=1e-9)


@pytest.mark.parametrize(("n", "m"), [(2000, 500), (800, 800)])
@pytest.mark.parametrize("sigma", [1.0, 0.02, 30.0])
def test_mp_fit_counts_planted_spikes(n, m, sigma):
    """num_spikes must not depend on the scale of W (regression: the Tracy-Widom margin was
    evaluated in the raw units, so at sigma = 0.02 it swamped the spikes)."""
    w = with_spikes(gaussian(n, m, sigma, seed=n * m), [2.0, 2.5, 3.0])
    lam = gram_evals(w)
    r = M.mp_fit(lam, n, m)
    assert r["num_spikes"] == 3
    assert r["bulk_max"] == pytest.approx(mp_edge(n, m, sigma), rel=0.03)
    assert r["mp_softrank"] < 0.5
    one = M.mp_fit(gram_evals(with_spikes(gaussian(n, m, sigma, seed=n * m), [3.0])), n, m)
    assert one["num_spikes"] == 1


def test_mp_fit_degenerate_inputs():
    r = M.mp_fit(np.array([1.0, 2.0, 3.0]), 10, 3)
    assert all(math.isnan(r[k]) for k in ("sigma_mp", "bulk_max", "bulk_min", "num_spikes", "mp_softrank"))
    r = M.mp_fit(np.zeros(10), 20, 10)
    assert math.isnan(r["bulk_max"])


# ------------------------------------------------------------------ density distance
def test_density_distance_properties():
    rng = np.random.default_rng(9)
    a = gram_evals(rng.standard_t(3, size=(300, 150)))
    b = gram_evals(rng.normal(size=(300, 150)))
    assert M.density_distance(a, a) == 0.0
    assert M.density_distance(a, a.copy()[::-1]) == 0.0  # order does not matter, only the density
    d = M.density_distance(a, b)
    assert d == M.density_distance(b, a)
    assert 0.0 < d < 1.0
    # disjoint supports are at the maximum distance
    assert M.density_distance(a, a * 1e6) == pytest.approx(1.0)
    # closer densities are closer
    c = gram_evals(rng.standard_t(3, size=(300, 150)))
    assert M.density_distance(a, c) < d
    # scale-free only in the trivial sense: a shift in log space is a different density
    assert M.density_distance(a, 2 * a) > 0
    assert math.isnan(M.density_distance(np.array([]), a))
    assert M.density_distance(np.array([2.0, 2.0]), np.array([2.0])) == 0.0


def test_random_esd_metrics():
    n, m = 600, 300
    w = with_spikes(gaussian(n, m, 0.05, seed=10), [2.0, 3.0])
    rng = np.random.default_rng(11)
    shuffled = rng.permutation(w.ravel()).reshape(w.shape)
    lam, rlam = gram_evals(w), gram_evals(shuffled)
    out = M.random_esd_metrics(lam, rlam, n, m)
    assert set(out) == {"rand_lambda_max", "rand_distance", "ww_softrank", "ww_maxdist", "rand_num_spikes",
                        "rand_sigma_mp", "rand_bulk_max"}
    assert out["rand_lambda_max"] == rlam.max()
    assert out["ww_softrank"] == pytest.approx(rlam.max() / lam.max())
    assert out["ww_maxdist"] == pytest.approx(lam.max() - rlam.max())
    assert out["ww_softrank"] < 0.7  # the planted structure sits far above the shuffled spectrum
    assert out["rand_num_spikes"] == 0  # shuffling destroys it
    assert out["rand_distance"] == M.density_distance(lam, rlam)
    mp = M.mp_fit(rlam, n, m)
    assert (out["rand_sigma_mp"], out["rand_bulk_max"]) == (mp["sigma_mp"], mp["bulk_max"])
    assert M.random_esd_metrics(lam, np.array([]), n, m) == {}
