"""Layer-wise sparsity allocation: AlphaPruning, OWL and uniform, as pure numpy functions.

Every allocation returns one sparsity per matrix whose parameter-weighted mean equals the
target exactly (to rounding), so methods are compared at the same global sparsity.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from htsr.pruning.errors import PruningError

#: OWL defaults (Yin et al. 2023, ``--Lamda 0.08 --Hyper_m 5`` for LLaMA-7B).
OWL_LAMBDA = 0.08
OWL_M = 5.0


def check_sparsity(target: float, what: str = "sparsity") -> float:
    """``target`` as a float, or a :class:`PruningError` unless it is finite and in [0, 1)."""
    try:
        t = float(target)
    except (TypeError, ValueError):
        raise PruningError(f"{what} must be a number in [0, 1), got {target!r}") from None
    if not np.isfinite(t) or not 0.0 <= t < 1.0:
        raise PruningError(f"{what} must be in [0, 1), got {target!r}")
    return t


def _as_1d(x: Sequence[float] | np.ndarray, name: str, n: int | None = None) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    if a.size == 0:
        raise PruningError(f"{name} is empty")
    if n is not None and a.size != n:
        raise PruningError(f"{name} has {a.size} values, expected {n}")
    return a


def _params(params: Sequence[float] | np.ndarray | None, n: int) -> np.ndarray:
    if params is None:
        return np.ones(n)
    p = _as_1d(params, "params", n)
    if not np.all(np.isfinite(p)) or np.any(p <= 0):
        raise PruningError("params (parameter counts) must be finite and > 0")
    return p


def weighted_mean(sparsities: np.ndarray, params: np.ndarray | None = None) -> float:
    """Parameter-weighted mean sparsity: the global fraction of pruned weights."""
    s = np.asarray(sparsities, dtype=np.float64)
    p = np.ones_like(s) if params is None else np.asarray(params, dtype=np.float64)
    return float(np.sum(s * p) / np.sum(p))


def block_mean(metrics: Sequence[float] | np.ndarray, blocks: Sequence[int] | np.ndarray) -> np.ndarray:
    """Replace each matrix's metric by the unweighted mean over its block (AlphaPruning's ``block_wise``)."""
    m = _as_1d(metrics, "metrics")
    b = np.asarray(blocks).reshape(-1)
    if b.size != m.size:
        raise PruningError(f"blocks has {b.size} entries, metrics {m.size}")
    out = np.empty_like(m)
    for blk in np.unique(b):
        sel = b == blk
        out[sel] = m[sel].mean()
    return out


def uniform_allocation(params: Sequence[float] | np.ndarray, target: float) -> np.ndarray:
    """The same sparsity for every matrix."""
    t = check_sparsity(target)
    p = _as_1d(params, "params")
    return np.full(p.size, t)


def restore_mean(sparsities: np.ndarray, params: np.ndarray, target: float, max_ratio: float) -> np.ndarray:
    """Clip to [0, max_ratio] and rescale the unclipped ratios so the weighted mean is ``target`` again.

    Iterative water-filling: ratios above ``max_ratio`` are pinned there and the others are
    multiplied by one common factor (keeping their order); repeat until none exceeds the cap.
    Raises when the target cannot be reached (``target > max_ratio``).
    """
    t = check_sparsity(target)
    if not 0.0 < max_ratio < 1.0:
        raise PruningError(f"max_ratio must be in (0, 1), got {max_ratio}")
    if t > max_ratio:
        raise PruningError(f"target sparsity {t} exceeds max_ratio {max_ratio}: no allocation can reach it")
    s = np.clip(np.asarray(sparsities, dtype=np.float64), 0.0, None)
    p = np.asarray(params, dtype=np.float64)
    pinned = np.zeros(s.size, dtype=bool)
    for _ in range(s.size + 1):
        pinned |= s >= max_ratio
        s[pinned] = max_ratio
        free = ~pinned
        need = t * p.sum() - max_ratio * p[pinned].sum()
        have = float(np.sum(s[free] * p[free]))
        if not free.any() or have <= 0.0:
            if abs(need) <= 1e-12 * p.sum():
                return s
            raise PruningError(f"cannot reach target sparsity {t} with every ratio in [0, {max_ratio}]")
        s[free] *= need / have
        if not np.any(s[free] > max_ratio):
            return s
    raise PruningError("restoring the mean sparsity did not converge")  # pragma: no cover


def _finish(s: np.ndarray, p: np.ndarray, t: float, max_ratio: float | None, method: str) -> np.ndarray:
    """Validate the ratios of an allocation: inside [0, 1), or clipped to max_ratio with the mean restored."""
    if max_ratio is not None:
        return restore_mean(s, p, t, max_ratio)
    bad = np.flatnonzero((s < 0.0) | (s >= 1.0))
    if bad.size:
        i = int(bad[np.argmax(np.abs(s[bad] - 0.5))])
        raise PruningError(
            f"{method}: matrix #{i} would get sparsity {s[i]:.4f}, outside [0, 1) "
            f"({bad.size} matrices in all); lower epsilon/lambda, or pass max_ratio (e.g. 0.95) to clip the "
            "ratios with the mean sparsity restored")
    return s


def alpha_allocation(
    metrics: Sequence[float] | np.ndarray,
    params: Sequence[float] | np.ndarray | None,
    target: float,
    epsilon: float = 0.3,
    *,
    blocks: Sequence[int] | np.ndarray | None = None,
    max_ratio: float | None = None,
    larger_prunes_more: bool = True,
) -> np.ndarray:
    """AlphaPruning: min-max map the metric into [1-eps, 1+eps] x target, weighted mean = target.

    Args:
        metrics: one value per matrix (PL alpha by default; larger = less well trained).
        params: parameter count of each matrix (the weights of the mean); None = equal.
        target: global sparsity in [0, 1).
        epsilon: relative half-width of the band (``s_i`` in ``[(1-eps) c, (1+eps) c]``), in [0, 1].
        blocks: block index per matrix for the block-wise mapping (metric averaged per block,
            the reference default); None = per-matrix.
        max_ratio: clip every ratio to [0, max_ratio] and restore the mean (the reference has no
            guard); None = raise if any ratio leaves [0, 1).
        larger_prunes_more: False for metrics where larger means better trained.
    """
    t = check_sparsity(target)
    m = _as_1d(metrics, "metrics")
    p = _params(params, m.size)
    eps = float(epsilon)
    if not np.isfinite(eps) or not 0.0 <= eps <= 1.0:
        raise PruningError(f"epsilon must be in [0, 1], got {epsilon!r}")
    if not np.all(np.isfinite(m)):
        raise PruningError(f"metrics contain {int(np.sum(~np.isfinite(m)))} non-finite value(s) (failed fits?)")
    if blocks is not None:
        m = block_mean(m, blocks)
    if not larger_prunes_more:
        m = -m
    lo, hi = float(m.min()), float(m.max())
    if hi > lo:
        r = (m - lo) / (hi - lo) * (2.0 * eps) + (1.0 - eps)
    else:
        r = np.ones_like(m)
    s = r * (t * p.sum() / np.sum(p * r))
    return _finish(s, p, t, max_ratio, f"alpha allocation (epsilon={eps})")


def outlier_ratio(scores: Sequence[np.ndarray] | np.ndarray, m: float = OWL_M) -> float:
    """OWL's layerwise outlier ratio: fraction of the scores (e.g. |W|·||X||) above ``m`` times their mean."""
    flat = np.concatenate([np.asarray(s, dtype=np.float64).reshape(-1) for s in
                           (scores if isinstance(scores, (list, tuple)) else [scores])])
    if flat.size == 0:
        raise PruningError("outlier_ratio: no scores")
    if not np.all(np.isfinite(flat)):
        raise PruningError("outlier_ratio: scores contain NaN/Inf (NaN activations?)")
    return float(np.mean(flat > m * flat.mean()))


def owl_allocation(
    outlier_ratios: Sequence[float] | np.ndarray,
    params: Sequence[float] | np.ndarray | None,
    target: float,
    lam: float = OWL_LAMBDA,
    *,
    max_ratio: float | None = None,
) -> np.ndarray:
    """OWL (outlier-weighted layerwise sparsity): more outliers -> lower sparsity.

    As the reference: the ratios are min-max mapped into [0, 2·lam] and the sparsity is
    ``target - (D_i - mean D)``, so the sparsities span a band of width 2·lam around the target
    (exactly [target-lam, target+lam] when the ratios are symmetric). The mean is parameter-weighted
    here (equal to the reference's plain mean when the units have equal size, as LLM blocks do).
    """
    t = check_sparsity(target)
    o = _as_1d(outlier_ratios, "outlier_ratios")
    p = _params(params, o.size)
    lam = float(lam)
    if not np.isfinite(lam) or lam < 0:
        raise PruningError(f"lambda must be >= 0, got {lam}")
    if not np.all(np.isfinite(o)):
        raise PruningError("outlier ratios contain NaN/Inf")
    lo, hi = float(o.min()), float(o.max())
    d = (o - lo) / (hi - lo) * (2.0 * lam) if hi > lo else np.zeros_like(o)
    s = t - (d - weighted_mean(d, p))
    return _finish(s, p, t, max_ratio, f"OWL allocation (lambda={lam})")


def expand(values: Sequence[float] | np.ndarray, blocks: Sequence[int] | np.ndarray) -> np.ndarray:
    """Per-block values -> per-matrix values (``values[blocks[i]]``)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    return v[np.asarray(blocks, dtype=np.int64).reshape(-1)]
