"""Small, plottable summaries of one layer's eigenvalues: what a report inlines instead of the eigenvalues.

A 7B-shaped model has 224 matrices of about 4,096 eigenvalues each (~900,000 numbers); a report keeps per layer
at most :data:`MAX_BINS` density bins (log-spaced, one edge at xmin, as ``htsr analyze --plot``), at most
:data:`MAX_CCDF` points of the complementary CDF (every one of the largest eigenvalues, log-spaced ranks below:
the tail is exact, the bulk thinned), and the two end points of each fitted line (a power law is straight in
log-log). Numbers are rounded to :data:`DIGITS` significant digits.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from htsr.spectra.display import log_bins

MAX_BINS = 60
MAX_CCDF = 150
DIGITS = 4
#: Eigenvalues below this fraction of the largest are round-off zeros and are not drawn (as ``htsr analyze --plot``).
REL_FLOOR = 1e-12


def tail_density(x: np.ndarray, alpha: float, xmin: float, frac: float) -> np.ndarray:
    """The fitted power law as a density over all eigenvalues: ``frac * (alpha - 1) / xmin * (x / xmin)^-alpha``,
    ``frac`` the tail's share of the eigenvalues."""
    return frac * (alpha - 1.0) / xmin * (x / xmin) ** (-alpha)


def _r(v: float) -> float:
    return float(f"{v:.{DIGITS}g}")


def _rounded(a: np.ndarray) -> list[float]:
    """``a`` rounded to :data:`DIGITS` significant digits, as a list (vectorised :func:`_r`)."""
    a = np.asarray(a, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = np.floor(np.log10(np.abs(a)))
    mag[~np.isfinite(mag)] = 0.0
    scale = 10.0 ** (DIGITS - 1 - mag)
    return (np.round(a * scale) / scale).tolist()


def finite_or_none(v: Any) -> float | None:
    """``float(v)`` when it is a finite number, else None (JSON-safe values for the charts)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _positive(x: Any) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).ravel()
    a = np.sort(a[np.isfinite(a)])
    if not a.size:
        return a
    return a[a > a[-1] * REL_FLOOR]


def ccdf_ranks(n: int, max_points: int = MAX_CCDF) -> np.ndarray:
    """Ascending 0-based indices into ``n`` sorted values, at most ``max_points``: all of them when ``n`` is
    small; else the ``max_points // 3`` largest values exactly, then log-spaced ranks down to the smallest."""
    if n <= max_points:
        return np.arange(n)
    top = max_points // 3
    rest = np.round(np.logspace(math.log10(top + 1), math.log10(n), max_points - top)).astype(int)
    ranks = np.unique(np.concatenate([np.arange(1, top + 1), rest]))  # rank 1 = the largest
    return np.sort(n - ranks)


def esd_digest(evals: Any, row: dict, randomized: Any = None, *, max_bins: int = MAX_BINS,
               max_points: int = MAX_CCDF) -> dict[str, Any]:
    """The plottable summary of one layer: ``hist`` ([left, right, density] per non-empty log bin, density over the
    positive eigenvalues), ``ccdf`` ([lambda, P(Lambda >= lambda)]), ``fit`` and ``fit_ccdf`` (the fitted power
    law's end points, when the fit succeeded), ``rand_hist`` / ``rand_ccdf`` for the randomised ESD, and ``n``
    (eigenvalues shown) and ``n_zero`` (round-off zeros not shown)."""
    raw = np.asarray(evals, dtype=np.float64).ravel()
    lam = _positive(raw)
    rlam = _positive(randomized) if randomized is not None else np.empty(0)
    out: dict[str, Any] = {"n": int(lam.size), "n_zero": int(np.isfinite(raw).sum() - lam.size)}
    if not lam.size:
        return out
    lo, hi = lam[0], lam[-1]
    if rlam.size:
        lo, hi = min(lo, rlam[0]), max(hi, rlam[-1])
    alpha, xmin, xmax = (finite_or_none(row.get(k)) for k in ("alpha", "xmin", "xmax"))
    fitted = row.get("status") == "success" and alpha is not None and xmin is not None and xmin > 0 and alpha > 1
    n_bins = int(np.clip(round(1.5 * math.sqrt(lam.size)), 10, max_bins))
    bins = log_bins(lo, hi, n_bins, xmin if fitted else None)

    def hist(x: np.ndarray) -> list[list[float]]:
        dens, edges = np.histogram(x, bins=bins, density=True)
        keep = dens > 0
        return [list(t) for t in zip(_rounded(edges[:-1][keep]), _rounded(edges[1:][keep]), _rounded(dens[keep]),
                                     strict=True)]

    def ccdf(x: np.ndarray) -> list[list[float]]:
        idx = ccdf_ranks(x.size, max_points)
        return [list(t) for t in zip(_rounded(x[idx]), _rounded(1.0 - idx / x.size), strict=True)]

    out["hist"] = hist(lam)
    out["ccdf"] = ccdf(lam)
    if rlam.size:
        out["rand_hist"] = hist(rlam)
        out["rand_ccdf"] = ccdf(rlam)
    if fitted:
        upper = xmax if xmax is not None and xmax > xmin else hi
        n_tail = finite_or_none(row.get("n_tail")) or float(np.count_nonzero((lam >= xmin) & (lam <= upper)))
        frac = min(1.0, n_tail / lam.size)
        xs = np.array([xmin, upper])
        out["fit"] = [[_r(x), _r(y)] for x, y in zip(xs, tail_density(xs, alpha, xmin, frac), strict=True)]
        out["fit_ccdf"] = [[_r(x), _r(frac * (x / xmin) ** (1.0 - alpha))] for x in xs]
        out["xmin"] = _r(xmin)
    return out
