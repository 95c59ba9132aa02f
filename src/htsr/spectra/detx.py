"""detX / ERG condition (SETOL's trace-log condition) of one ESD.

WeightWatcher's ``detX_constraint`` (RMT_Util.py, 0.7.5.5): rescale the eigenvalues to mean 1 (lambda~ = lambda *
n / sum(lambda)), then scan from the top down and stop at the first index whose top tail has product
prod_{j >= idx} lambda~_j < 1 (the eigenvalue that crosses counts). The tail above is SETOL's Effective
Correlation Space, where det(X) = 1, i.e. sum log lambda~ = 0 ("volume preserving"); its lower edge lambda_detX is
an xmin, compared with the power-law xmin: SETOL's ideal ("ERG satisfied") is lambda_detX = power-law xmin, near
alpha = 2. Computed with log-sums (the reference's ``np.prod`` can overflow to inf and never cross 1).
"""

from __future__ import annotations

import math

import numpy as np


def detx(evals: np.ndarray) -> tuple[int, int]:
    """``(detx_num, detx_idx)``: tail size and sorted (ascending) index of WeightWatcher's detX condition.

    When no top tail has a product below 1 (all eigenvalues equal), the whole spectrum: ``(n, 0)``.
    """
    lam = np.sort(np.asarray(evals, dtype=np.float64))
    lam = lam[np.isfinite(lam)]
    n = lam.size
    if n == 0:
        raise ValueError("detX needs at least one finite eigenvalue")
    total = lam.sum()
    if total <= 0:
        raise ValueError("detX needs a spectrum with a positive sum")
    with np.errstate(divide="ignore"):
        logs = np.log(lam * (n / total))
    tail = np.cumsum(logs[::-1])[::-1]  # tail[i] = sum_{j >= i} log lambda~_j
    below = np.nonzero(tail[1:] < 0)[0]  # the reference scans idx = n-1 .. 1
    if below.size == 0:
        return n, 0
    idx = int(below[-1]) + 1
    return n - idx, idx


def detx_columns(evals: np.ndarray, xmin: float = math.nan) -> dict:
    """Row columns: ``detx_num`` (tail size), ``detx_xmin`` (lambda at the crossing, in the ESD's units, the
    implied lambda_min; WeightWatcher's ``detX_val``), ``detx_delta`` (power-law xmin minus lambda_detX, both on
    the mean-1 scale, as WeightWatcher PR #295 and SETOL's Delta lambda_min) and ``detx_log_ratio`` =
    log10(xmin / lambda_detX) (0 when the ERG condition holds)."""
    lam = np.sort(np.asarray(evals, dtype=np.float64))
    lam = lam[np.isfinite(lam)]
    if lam.size == 0 or lam.sum() <= 0:
        return {"detx_num": math.nan, "detx_xmin": math.nan, "detx_delta": math.nan, "detx_log_ratio": math.nan}
    num, idx = detx(lam)
    val = float(lam[idx])
    unit = lam.size / float(lam.sum())
    ok = math.isfinite(xmin) and xmin > 0 and val > 0
    return {"detx_num": num, "detx_xmin": val, "detx_delta": (xmin - val) * unit if math.isfinite(xmin) else math.nan,
            "detx_log_ratio": math.log10(xmin / val) if ok else math.nan}
