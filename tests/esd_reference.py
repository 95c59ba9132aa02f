"""Independent expectations for the TempBalance / AlphaPruning tests, in plain numpy, written from the formulas of
the reference code as the research notes give them (``net_esd_estimator``, ``PL_Alpha_Hill``, ``ww_sparsity``,
``get_layer_temps``), never by calling htsr's fitter, mapper or allocator.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


def esd(module: nn.Module, conv_norm: float = 0.5) -> np.ndarray:
    """Ascending eigenvalues of a layer as the reference pools them: Linear W (out, in) -> sigma(W)^2; Conv2d
    (out, in, kh, kw) -> reshaped (out, in, kh*kw) times sqrt(conv_norm), one (out, in) matrix per kernel position,
    every squared singular value of every position."""
    w = module.weight.detach().to(torch.float64).cpu().numpy()
    if w.ndim == 4:
        w = w.reshape(w.shape[0], w.shape[1], -1) * math.sqrt(conv_norm)
        mats = [w[:, :, k] for k in range(w.shape[2])]
    elif type(module).__name__ == "Conv1D":  # HF Conv1D stores (in, out)
        mats = [w.T]
    else:
        mats = [w]
    sv = np.concatenate([np.linalg.svd(m, compute_uv=False) for m in mats])
    return np.sort(sv ** 2)


def hill_alpha(evals: np.ndarray, i: int) -> float:
    """PL_Alpha_Hill with xmin at sorted index i: 1 + n / (sum_{j>=i} ln l_j - n ln l_i), n = N - i."""
    x = np.sort(np.asarray(evals, dtype=np.float64))
    n = x.size - i
    return 1.0 + n / (np.sum(np.log(x[i:])) - n * np.log(x[i]))


def ks_distance(evals: np.ndarray, i: int, alpha: float) -> float:
    """max_k |1 - (l_{i+k} / l_i)^(1 - alpha) - k / n| over the tail."""
    x = np.sort(np.asarray(evals, dtype=np.float64))
    n = x.size - i
    k = np.arange(n)
    return float(np.max(np.abs(1.0 - (x[i:] / x[i]) ** (1.0 - alpha) - k / n)))


def hill_alpha_median(evals: np.ndarray, xmin_pos: float = 2.0) -> float:
    """``fix_fingers='xmin_mid'``: xmin at index int(N / xmin_pos) (the median for xmin_pos = 2)."""
    return hill_alpha(evals, int(len(evals) / xmin_pos))


def hill_alpha_peak(evals: np.ndarray, bins: int = 100) -> float:
    """``xmin_peak`` with the unit fix documented in htsr (the notes' quirk removed): p = 10 ** (left edge of the
    fullest of ``bins`` bins of log10 l); over the candidates 0.95 p <= l_i <= 1.5 p (tail of >= 2 values) with
    alpha > 1, the alpha of least KS distance (first on ties)."""
    x = np.sort(np.asarray(evals, dtype=np.float64))
    counts, edges = np.histogram(np.log10(x), bins=bins)
    p = 10.0 ** edges[int(np.argmax(counts))]
    best = (math.inf, math.nan)
    for i in range(x.size - 1):
        if not 0.95 * p <= x[i] <= 1.5 * p:
            continue
        a = hill_alpha(x, i)
        if a > 1:
            d = ks_distance(x, i, a)
            if d < best[0]:
                best = (d, a)
    return best[1]


def tb_linear_map(alphas: np.ndarray, s1: float = 0.5, s2: float = 1.5) -> np.ndarray:
    """``tb_linear_map``: np.interp of alpha from [min, max] onto [s1, s2]."""
    a = np.asarray(alphas, dtype=np.float64)
    return np.interp(a, [a.min(), a.max()], [s1, s2])


def tb_sigmoid_map(values: np.ndarray, s_min: float, s_max: float, temperature: float = 10.0) -> np.ndarray:
    """Model Balancing's map: 10 ** f(d), d = x - mean x, f = s (logistic(T d) - 0.5), s = s_max if d > 0 else
    s_min."""
    x = np.asarray(values, dtype=np.float64)
    d = x - x.mean()
    sig = 1.0 / (1.0 + np.exp(-temperature * d)) - 0.5
    return 10.0 ** np.where(d > 0, s_max * sig, s_min * sig)


def ww_sparsity(metrics: np.ndarray, params: np.ndarray, blocks: np.ndarray | None, target: float,
                epsilon: float) -> np.ndarray:
    """AlphaPruning's allocation: block means (block_wise), r = min-max into [1 - eps, 1 + eps],
    s_i = r_i * target * sum P / sum P r."""
    m = np.asarray(metrics, dtype=np.float64).copy()
    if blocks is not None:
        for b in np.unique(blocks):
            m[blocks == b] = m[blocks == b].mean()
    r = (m - m.min()) / (m.max() - m.min()) * (2 * epsilon) + (1 - epsilon)
    return r * target * params.sum() / np.sum(params * r)
