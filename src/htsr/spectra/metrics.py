"""Per-matrix spectral metrics: pure functions of eigenvalue arrays (numbers in, numbers out).

Conventions (recorded in every Analysis' metadata):
- ``evals`` are the eigenvalues lambda = sigma^2 of W^T W (no 1/N normalisation), after
  any convention scaling (e.g. the 0.5 factor on conv kernels).
- Norms use base-10 logarithms, as WeightWatcher does.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np


def norm_metrics(evals: np.ndarray, alpha: float = math.nan, rank: int | None = None) -> dict:
    """Norm-based metrics of one ESD.

    spectral_norm = lambda_max, norm = sum(lambda) = ||W||_F^2, stable_rank = norm /
    spectral_norm, alpha_hat (WeightWatcher's ``alpha_weighted``) = alpha log10 lambda_max,
    log_alpha_norm = log10 sum(lambda^alpha), entropy = Shannon entropy of lambda/sum
    divided by ln(rank) (1 = flat spectrum; ``rank`` as in :func:`matrix_entropy`).
    """
    lam = np.asarray(evals, dtype=np.float64)
    lam = lam[np.isfinite(lam)]
    out: dict = {}
    if lam.size == 0:
        return out
    lmax = float(lam.max())
    total = float(lam.sum())
    out["lambda_max"] = lmax
    out["spectral_norm"] = lmax
    out["log_spectral_norm"] = _log10(lmax)
    out["norm"] = total
    out["log_norm"] = _log10(total)
    out["stable_rank"] = total / lmax if lmax > 0 else math.nan
    out["alpha_hat"] = alpha * _log10(lmax) if np.isfinite(alpha) else math.nan
    if np.isfinite(alpha) and lmax > 0:
        # log10 sum lambda^alpha, computed in log space to avoid overflow for large alpha
        pos = lam[lam > 0]
        la = alpha * np.log(pos)
        m = la.max()
        out["log_alpha_norm"] = float((m + np.log(np.exp(la - m).sum())) / math.log(10))
    else:
        out["log_alpha_norm"] = math.nan
    out["entropy"] = matrix_entropy(lam, rank)
    return out


def _log10(v: float) -> float:
    return math.log10(v) if v > 0 else math.nan


def matrix_entropy(evals: np.ndarray, rank: int | None = None) -> float:
    """Normalised spectral entropy: -sum p ln p / ln(rank), p = lambda / sum(lambda).

    ``rank`` defaults to the number of positive eigenvalues. Pass the numerical rank
    (:func:`rank_metrics`' ``matrix_rank``, as WeightWatcher does) for rank-deficient
    matrices whose zero eigenvalues come out as tiny positive rounding noise. NaN when
    the rank is below 2.
    """
    lam = np.asarray(evals, dtype=np.float64)
    lam = lam[np.isfinite(lam) & (lam > 0)]
    r = lam.size if rank is None else int(rank)
    if lam.size < 2 or r < 2:
        return math.nan
    p = lam / lam.sum()
    p = p[p > 0]  # an underflowed share contributes 0 to the sum
    return float(-(p * np.log(p)).sum() / math.log(r))


def rank_metrics(evals: np.ndarray, n_rows: int, n_cols: int, eps: float, eig_eps: float | None = None) -> dict:
    """Numerical rank from singular values sigma = sqrt(lambda) with numpy's tolerance.

    matrix_rank = #(sigma > sigma_max * max(N, M) * eps); rank_loss = #evals - rank;
    weak_rank_loss = #(lambda < 1e-6). ``eps`` is the machine epsilon of W's dtype.

    ``eig_eps``: the epsilon of the solver, when ``evals`` are eigenvalues of the Gram
    matrix W^T W rather than squared singular values. Such a solve resolves eigenvalues
    only down to ~lambda_max * eps_solver, so the zero eigenvalues of a rank-deficient W
    come out as noise of that size (sigma ~ sqrt(eps_solver) sigma_max, far above the
    sigma tolerance); eigenvalues below lambda_max * M * eig_eps (numpy's matrix_rank
    tolerance for the M x M Gram matrix) then count as zero too. None: no such floor.
    """
    lam = np.clip(np.asarray(evals, dtype=np.float64), 0, None)
    if lam.size == 0:
        return {"matrix_rank": 0, "rank_loss": 0, "weak_rank_loss": 0}
    sv = np.sqrt(lam)
    tol = sv.max() * max(n_rows, n_cols) * eps
    keep = sv > tol
    if eig_eps is not None:
        keep &= lam > lam.max() * max(min(n_rows, n_cols), 1) * eig_eps
    rank = int(keep.sum())
    return {
        "matrix_rank": rank,
        "rank_loss": int(lam.size - rank),
        "weak_rank_loss": int((lam < 1e-6).sum()),
        "sv_max": float(sv.max()),
        "sv_min": float(sv.min()),
    }


def noise_floor(lambda_max: float, n_rows: int, n_cols: int, eps: float, eig_eps: float | None = None) -> float:
    """The eigenvalue below which :func:`rank_metrics` counts an eigenvalue as zero (rounding noise).

    lambda_max * (max(N, M) * eps)^2 (numpy's singular-value tolerance, squared), raised to
    lambda_max * min(N, M) * eig_eps for a Gram eigensolve. Scale-free: a power-law tail that starts at or
    below it is fitted to rounding noise, whatever the matrix's magnitude."""
    floor = float(lambda_max) * (max(n_rows, n_cols) * eps) ** 2
    if eig_eps is not None:
        floor = max(floor, float(lambda_max) * max(min(n_rows, n_cols), 1) * eig_eps)
    return floor


def storage_noise_floor(evals: np.ndarray, n_rows: int, n_cols: int, storage_eps: float) -> float:
    """Upper estimate of the largest eigenvalue of W's storage rounding error E (|E_ij| <= eps/2 |W_ij|).

    ||E||^2 <= (storage_eps * rms(W) * (sqrt(N) + sqrt(M)))^2 with rms(W)^2 = sum(lambda) / (N M): the top of
    the Marchenko-Pastur bulk of a random matrix of E's size, with eps (twice the unit roundoff) for margin. Far
    below the bulk of any real layer (storage_eps^2 times its bulk edge: 6e-5 for bfloat16), and above every
    eigenvalue that only rounding made non-zero (a rank-1 matrix stored in bfloat16)."""
    lam = np.asarray(evals, dtype=np.float64)
    if lam.size == 0 or n_rows * n_cols == 0:
        return 0.0
    n_mats = max(1, lam.size // max(min(n_rows, n_cols), 1))  # conv plans hold one spectrum per kernel position
    ms = float(np.clip(lam, 0, None).sum()) / (n_rows * n_cols * n_mats)
    return float((storage_eps * (math.sqrt(n_rows) + math.sqrt(n_cols))) ** 2 * ms)


# ---------------------------------------------------------------- Marchenko-Pastur
@lru_cache(maxsize=256)
def _mp_unit_quantiles(Q: float, probs: tuple) -> np.ndarray:
    """Quantiles of the Marchenko-Pastur law with variance 1 and aspect ratio Q >= 1.

    Computed once per Q on a fine grid (cumulative trapezoid of the density); the
    law is a scale family, so fits only rescale these.
    """
    lo = (1 - 1 / math.sqrt(Q)) ** 2
    hi = (1 + 1 / math.sqrt(Q)) ** 2
    # grid dense near the edges, where the density has square-root behaviour
    t = (1 - np.cos(np.linspace(0, math.pi, 4001))) / 2
    x = lo + (hi - lo) * t
    dens = Q / (2 * math.pi * x.clip(1e-300)) * np.sqrt(np.clip((hi - x) * (x - lo), 0, None))
    if Q == 1.0:
        dens[0] = 0.0  # integrable 1/sqrt singularity at 0: trapezoid handles the rest
    cdf = np.concatenate([[0.0], np.cumsum((dens[1:] + dens[:-1]) / 2 * np.diff(x))])
    cdf /= cdf[-1]
    return np.interp(np.asarray(probs), cdf, x)


def mp_fit(evals: np.ndarray, n_rows: int, n_cols: int, bulk_fraction: float = 0.8) -> dict:
    """Fit a Marchenko-Pastur bulk to an ESD and count the spikes above it.

    The ESD of X = W^T W / N is compared with MP(Q = N / M, sigma^2). sigma^2 is the
    least-squares scale that maps the MP quantiles onto the empirical quantiles of the
    lower ``bulk_fraction`` of the spectrum (spikes sit at the top, so they barely move
    those quantiles). Cost: O(M) plus a one-off quantile table per Q, a small fraction
    of the eigensolve (WeightWatcher instead refits a KDE ~195 times per layer).

    Returns sigma_mp (the fitted per-entry scale of W: MP(Q, sigma_mp^2) describes
    W^T W / N), bulk_min, bulk_max (in the units of ``evals``), num_spikes (eigenvalues
    above bulk_max plus WeightWatcher's Tracy-Widom-sized margin) and mp_softrank =
    bulk_max / lambda_max. The margin sqrt(Q^-1/2 bulk_max^2/3 M^-2/3) is not scale-free,
    so, as in WeightWatcher, it is evaluated with the spectrum rescaled to mean 1 and M the
    smaller matrix dimension; num_spikes therefore does not change when W is rescaled.
    """
    lam = np.sort(np.asarray(evals, dtype=np.float64))
    lam = lam[np.isfinite(lam)]
    M = lam.size
    N = max(n_rows, n_cols)
    if M < 4 or lam[-1] <= 0:
        return {"sigma_mp": math.nan, "bulk_min": math.nan, "bulk_max": math.nan, "num_spikes": math.nan,
                "mp_softrank": math.nan}
    Q = max(n_rows, n_cols) / max(min(n_rows, n_cols), 1)
    x = lam / N
    k = max(3, int(bulk_fraction * M))
    probs = tuple(((np.arange(k) + 0.5) / M).round(12))
    q = _mp_unit_quantiles(round(float(Q), 9), probs)
    s2 = float(np.dot(x[:k], q) / np.dot(q, q))
    bulk_max = s2 * (1 + 1 / math.sqrt(Q)) ** 2
    bulk_min = s2 * (1 - 1 / math.sqrt(Q)) ** 2
    unit = float(x.mean())  # WeightWatcher's rescaling: sum(lambda) = number of eigenvalues
    m_dim = max(min(n_rows, n_cols), 1)
    margin = unit * math.sqrt(Q ** -0.5 * (bulk_max / unit) ** (2 / 3) * m_dim ** (-2 / 3))
    spikes = int((x > bulk_max + margin).sum())
    return {
        "sigma_mp": math.sqrt(s2),
        "bulk_min": bulk_min * N,
        "bulk_max": bulk_max * N,
        "num_spikes": spikes,
        "mp_softrank": bulk_max * N / lam[-1],
    }


# ---------------------------------------------------------------- randomised ESD
def density_distance(a: np.ndarray, b: np.ndarray, bins: int = 100) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) between the densities of two ESDs.

    Both are histogrammed on one common grid of log10(lambda) bins; this compares the
    distributions, unlike WeightWatcher's rand_distance, which treats the two sorted
    eigenvalue vectors themselves as probability vectors.
    """
    from scipy.spatial.distance import jensenshannon

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a = a[a > 0]
    b = b[b > 0]
    if a.size == 0 or b.size == 0:
        return math.nan
    la, lb = np.log10(a), np.log10(b)
    lo, hi = min(la.min(), lb.min()), max(la.max(), lb.max())
    if hi <= lo:
        return 0.0
    edges = np.linspace(lo, hi, bins + 1)
    ha, _ = np.histogram(la, edges)
    hb, _ = np.histogram(lb, edges)
    return float(jensenshannon(ha / ha.sum(), hb / hb.sum(), base=2))


def random_esd_metrics(evals: np.ndarray, rand_evals: np.ndarray, n_rows: int, n_cols: int) -> dict:
    """Compare an ESD with the ESD of the same matrix with its entries shuffled.

    Shuffling destroys correlations but keeps the entry distribution; what stays
    above the randomised spectrum's edge is learned structure (or a correlation trap).
    """
    lam = np.asarray(evals, dtype=np.float64)
    rnd = np.asarray(rand_evals, dtype=np.float64)
    if lam.size == 0 or rnd.size == 0:
        return {}
    lmax, rmax = float(lam.max()), float(rnd.max())
    mp = mp_fit(rnd, n_rows, n_cols)
    return {
        "rand_lambda_max": rmax,
        "rand_distance": density_distance(lam, rnd),
        "ww_softrank": rmax / lmax if lmax > 0 else math.nan,
        "ww_maxdist": lmax - rmax,
        "rand_num_spikes": mp["num_spikes"],
        "rand_sigma_mp": mp["sigma_mp"],
        "rand_bulk_max": mp["bulk_max"],
    }
