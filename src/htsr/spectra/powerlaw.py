"""Power-law fits of eigenvalue tails: one module of pure functions on 1-D arrays.

Every method in htsr that needs a power-law exponent calls :func:`fit_power_law`.
The estimator is the continuous Hill / Clauset maximum-likelihood exponent

    alpha(i) = 1 + n / (sum_{j>=i} ln x_j - n ln x_i),     n = N - i,

evaluated for *every* candidate xmin index ``i`` at once from suffix sums (O(N)), and
the one-sided KS distance used by WeightWatcher and the TempBalance family

    D(i) = max_{k<n} | 1 - (x_{i+k}/x_i)^(1-alpha(i)) - k/n |.

Why this is written by hand: ``powerlaw`` re-fits every candidate in Python (O(N^2) with
a large constant, 13 s at N = 15000) and changed its API in 2.0, which silently broke
WeightWatcher's truncated-power-law path. The exact KS scan here is a branch and bound:
lower and upper bounds on every candidate's D from a few tail points, refined only for
candidates that can still win, exact D only for the last few. It returns exactly the
argmin of the full O(N^2) scan (same index, ties to the first) at a small fraction of
its cost (measured against WeightWatcher's loop: 13-47x at N = 1000, 70-320x at 4096,
130-770x at 15000, identical xmin and alpha).

Failed fits never return sentinels: ``alpha`` is NaN and ``reason`` says why.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

XminRule = Literal["ks", "median", "fraction", "peak", "fixed"]
XMIN_RULES: tuple[str, ...] = ("ks", "median", "fraction", "peak", "fixed")

#: WeightWatcher's absolute threshold below which eigenvalues count as zero.
EVALS_THRESH = 1e-5


@dataclass(frozen=True)
class PowerLawFit:
    """Result of one power-law fit; NaN fields and a ``reason`` when it failed."""

    alpha: float
    xmin: float
    xmax: float
    D: float
    sigma: float
    n_tail: int
    n_total: int
    xmin_rule: str
    status: str = "success"
    reason: str = ""
    num_fingers: int = 0
    raw_alpha: float = math.nan
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "success"

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(d.pop("extra"))
        return d


def _failed(rule: str, n_total: int, reason: str, xmax: float = math.nan) -> PowerLawFit:
    nan = math.nan
    return PowerLawFit(nan, nan, xmax, nan, nan, 0, n_total, rule, "failed", reason)


def prepare_evals(evals: np.ndarray, threshold: float = 0.0) -> np.ndarray:
    """Sorted float64 copy of the finite eigenvalues strictly above ``threshold``."""
    x = np.asarray(evals, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    x = x[x > threshold]
    x.sort()
    return x


def hill_alphas(x: np.ndarray, bias_corrected: bool = False) -> np.ndarray:
    """Hill/MLE exponent for every candidate xmin index 0..N-2 of sorted ``x`` (O(N)).

    ``bias_corrected`` uses (n - 1) instead of n in the numerator (the small-sample
    estimator WeightWatcher 0.7.7 switches to below 20 eigenvalues). Candidates whose
    tail is all equal to xmin (ties) get NaN.

    The denominators S(i) = sum_{j>=i} ln(x_j / x_i) are accumulated from non-negative
    terms, S(i) = sum_{m>i} (N - m)(ln x_m - ln x_{m-1}), instead of as the difference
    of two large suffix sums: no cancellation, and S(i) is exactly 0 for tied tails.
    """
    N = x.size
    if N < 2:
        return np.empty(0)
    return _hill_from_logs(np.log(x), bias_corrected)


def _hill_from_logs(lx: np.ndarray, bias_corrected: bool = False) -> np.ndarray:
    N = lx.size
    w = np.maximum(np.diff(lx), 0.0) * np.arange(N - 1, 0, -1, dtype=np.float64)
    denom = np.cumsum(w[::-1])[::-1]  # S(i) for i = 0..N-2
    n = np.arange(N, 1, -1, dtype=np.float64)
    num = n - 1.0 if bias_corrected else n
    with np.errstate(divide="ignore", invalid="ignore"):
        a = 1.0 + num / denom
    a[~(denom > 0.0)] = np.nan
    return a


# ------------------------------------------------------------------- KS distance
# D(i) = max_k |F(i, k) - k / n_i| with F(i, k) = 1 - exp(-(alpha_i - 1) (ln x_{i+k} - ln x_i)),
# the fitted CDF at the k-th tail point: the same number as 1 - (x_{i+k}/x_i)^(1 - alpha_i),
# up to rounding, at a fraction of the cost of a pow. Every exact distance (the scan, the
# brute force, single fits) comes from _ks_exact, so they agree bit for bit; bounds may
# differ from it by rounding, which _KS_MARGIN absorbs.
_KS_CHUNK = 1 << 15  # elements per vectorised block: 256 KiB of float64, stays in cache
_KS_MARGIN = 1e-9  # pruning slack, far above rounding noise and far below any real gap
_KS_FINISH = 2  # finish exactly once that costs at most this many refinements (or one chunk)


def _ks_exact(lx: np.ndarray, cand: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact D for candidate indices ``cand`` (any order; b = alpha - 1 > 0).

    Candidates are processed in blocks of nearby indices. A block is one 2-D array whose
    columns are the shared data points x[c0:], c0 the block's first candidate; points
    before a row's own xmin are clamped to k = 0 and F = 0, where the deviation is 0.
    """
    N = lx.size
    out = np.empty(cand.size)
    order = np.argsort(cand, kind="stable")
    cs = cand[order]
    p = 0
    while p < cs.size:
        c0 = int(cs[p])
        W = N - c0
        # at most _KS_CHUNK elements, and at most 25 % padding in the block's last row
        stop = min(cs.size, p + max(1, _KS_CHUNK // W), int(np.searchsorted(cs, c0 + W // 4, side="right")))
        stop = max(stop, p + 1)
        sel, c = order[p:stop], cs[p:stop]
        d = lx[c0:] - lx[c][:, None]  # ln(x_j / x_i)
        np.maximum(d, 0.0, out=d)
        d *= -b[sel][:, None]
        np.exp(d, out=d)
        np.subtract(1.0, d, out=d)  # fitted CDF F
        k = np.arange(c0, N) - c[:, None]
        np.maximum(k, 0, out=k)
        d -= k / (N - c)[:, None]  # minus the empirical CDF k / n
        np.abs(d, out=d)
        out[sel] = d.max(axis=1)
        p = stop
    return out


def _ks_bounds(lx: np.ndarray, cand: np.ndarray, b: np.ndarray, G: int) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds on D from G tail points per candidate, k = floor(q (n - 1)).

    Lower: the largest deviation at the sampled points (any subset of the max's terms).
    Upper: F and k/n are both non-decreasing in k, so between sampled offsets a < b every
    deviation is at most max(F_b - a/n, b/n - F_a); the samples include k = 0 (where F =
    k/n = 0, left implicit) and k = n - 1. Arrays are (G - 1, candidates) so that the
    reductions run across long rows.
    """
    N = lx.size
    lb = np.empty(cand.size)
    ub = np.empty(cand.size)
    q = np.linspace(0.0, 1.0, G)[1:, None]
    cols = max(1, _KS_CHUNK // G)
    for s in range(0, cand.size, cols):
        c = cand[s : s + cols]
        nm1 = (N - 1 - c).astype(np.float64)
        E = q * nm1
        np.floor(E, out=E)  # k, integral floats in 1 .. n - 1
        j = E.astype(np.int64)
        j += c
        F = lx[j]
        F -= lx[c]
        F *= -b[s : s + cols]
        np.exp(F, out=F)
        np.subtract(1.0, F, out=F)
        E /= nm1 + 1.0  # k / n
        dev = F - E
        lb[s : s + cols] = np.maximum(dev.max(axis=0), -dev.min(axis=0))
        up = np.maximum(F[0], E[0])  # the interval from k = 0 to the first sample
        if G > 2:
            np.subtract(F[1:], E[:-1], out=dev[1:])
            np.maximum(up, dev[1:].max(axis=0), out=up)
            np.subtract(E[1:], F[:-1], out=dev[1:])
            np.maximum(up, dev[1:].max(axis=0), out=up)
        ub[s : s + cols] = up
    return lb, ub


def ks_distance(x: np.ndarray, i: int, alpha: float) -> float:
    """Exact one-sided KS distance of the tail x[i:] against a power law (alpha, x[i])."""
    return _ks_one(np.log(x), i, alpha)


def _ks_one(lx: np.ndarray, i: int, alpha: float) -> float:
    if not (1.0 < alpha < math.inf) or not 0 <= i < lx.size:
        return math.inf
    return float(_ks_exact(lx, np.array([i]), np.array([alpha - 1.0]))[0])


def ks_distances(x: np.ndarray, alphas: np.ndarray, candidates: np.ndarray | None = None) -> np.ndarray:
    """Exact D for each candidate index (all 0..N-2 by default); inf where alpha <= 1 or is not finite.

    This is the brute-force O(N^2) scan that :func:`ks_argmin` must agree with.
    """
    cand = np.arange(alphas.size) if candidates is None else np.asarray(candidates, dtype=np.int64)
    a = alphas[cand]
    out = np.full(cand.size, np.inf)
    ok = np.isfinite(a) & (a > 1.0)
    out[ok] = _ks_exact(np.log(x), cand[ok], a[ok] - 1.0)
    return out


def ks_argmin(x: np.ndarray, alphas: np.ndarray, candidates: np.ndarray, grid: int = 4) -> tuple[int, float]:
    """Index (into ``x``) and D of the candidate with the smallest exact KS distance.

    Equal to the brute-force ``argmin(ks_distances(...))``, with ties going to the smallest
    index (candidates are a set). Returns (-1, inf) when no candidate has a finite alpha > 1.
    """
    cand = np.unique(np.asarray(candidates, dtype=np.int64))
    return _ks_argmin(np.log(x), alphas, cand, grid)


def _ks_argmin(lx: np.ndarray, alphas: np.ndarray, cand: np.ndarray, grid: int = 4,
               factor: int = 4, probe: int = 8) -> tuple[int, float]:
    """Branch and bound on sorted unique ``cand``.

    Every candidate gets a lower and an upper bound on D from ``grid`` tail points (tails
    of at most 4 * ``grid`` points are computed exactly). Candidates whose lower bound
    exceeds the best upper bound cannot win and are dropped. Each round first computes
    the ``probe`` candidates with the smallest lower bounds exactly (the likeliest
    winners: this lowers the bar far more than probing the smallest upper bounds),
    prunes, then either finishes the survivors exactly, when that costs at most
    ``_KS_CHUNK`` elements or ``_KS_FINISH`` refinements, or refines them on a grid
    ``factor`` times finer. A candidate is dropped only when its lower bound exceeds the
    bar by ``_KS_MARGIN``, so rounding can never discard the true minimiser or a tie.
    """
    a = alphas[cand]
    ok = np.isfinite(a) & (a > 1.0)
    cand, b = cand[ok], a[ok] - 1.0
    if cand.size == 0:
        return -1, math.inf
    n = lx.size - cand
    G = max(int(grid), 2)
    exact = n <= 4 * G  # short tails: exact is as cheap as bounding
    lb = np.empty(cand.size)
    lb[exact] = _ks_exact(lx, cand[exact], b[exact])
    ub = lb.copy()
    rest = ~exact
    if rest.any():
        lb[rest], ub[rest] = _ks_bounds(lx, cand[rest], b[rest], G)
    while True:
        todo = np.flatnonzero(~exact)
        if todo.size and probe:
            pk = todo[np.argpartition(lb[todo], probe)[:probe]] if todo.size > probe else todo
            lb[pk] = ub[pk] = _ks_exact(lx, cand[pk], b[pk])
            exact[pk] = True
        keep = lb <= ub.min() + _KS_MARGIN
        cand, b, n, lb, ub, exact = cand[keep], b[keep], n[keep], lb[keep], ub[keep], exact[keep]
        todo = np.flatnonzero(~exact)
        if todo.size == 0:
            break
        G *= factor
        cost = int(n[todo].sum())
        small = n[todo] <= 2 * G
        if cost <= max(_KS_CHUNK, _KS_FINISH * G * todo.size):
            small[:] = True
        ex = todo[small]
        if ex.size:
            lb[ex] = ub[ex] = _ks_exact(lx, cand[ex], b[ex])
            exact[ex] = True
        bd = todo[~small]
        if bd.size:
            lo, up = _ks_bounds(lx, cand[bd], b[bd], G)
            lb[bd] = np.maximum(lb[bd], lo)
            ub[bd] = np.minimum(ub[bd], up)
    best = int(np.argmin(lb))  # all exact now; argmin takes the first (smallest index) tie
    return int(cand[best]), float(lb[best])


def peak_xmin_bounds(x: np.ndarray, bins: int = 100, legacy_bound: bool = False) -> tuple[float, float]:
    """xmin search interval around the histogram peak of log10 eigenvalues (AlphaPruning).

    The peak ``p`` is 10 ** (left edge of the fullest of ``bins`` bins of log10 x). The
    interval is [0.95 p, 1.5 p]. ``legacy_bound`` reproduces the reference code, whose
    lower bound is log10(0.95 p) compared against the *linear* eigenvalue (a unit mix-up
    that excludes nothing once p <= ~1.05).
    """
    h, edges = np.histogram(np.log10(x), bins=bins)
    p = 10.0 ** edges[int(np.argmax(h))]
    lo = math.log10(0.95 * p) if legacy_bound else 0.95 * p
    return lo, 1.5 * p


def fit_power_law(
    evals: np.ndarray,
    xmin_rule: XminRule = "ks",
    *,
    threshold: float = 0.0,
    xmin_pos: float = 2.0,
    xmin: float | None = None,
    peak_bins: int = 100,
    peak_legacy_bound: bool = False,
    min_tail: int = 2,
    small_n: int = 0,
) -> PowerLawFit:
    """Fit a continuous power law to the upper tail of ``evals``.

    Args:
        evals: eigenvalues, any order; non-finite values and values <= ``threshold``
            are dropped first.
        xmin_rule: ``"ks"`` scans every candidate and keeps the minimum KS distance
            (WeightWatcher's default); ``"median"`` / ``"fraction"`` take xmin at sorted
            index ``int(N / xmin_pos)`` (TempBalance, ``xmin_pos=2`` is the median);
            ``"peak"`` scans only candidates near the log-histogram peak (AlphaPruning,
            AlphaLoRA); ``"fixed"`` uses the eigenvalue closest to ``xmin``.
        min_tail: smallest tail size a candidate may have.
        small_n: when the number of kept eigenvalues is below this, use WeightWatcher
            0.7.7's small-sample path (bias-corrected alpha, candidates with a tail of at
            least 8). 0 disables it.
    Returns:
        :class:`PowerLawFit`; ``status == "failed"`` with NaN numbers and a reason when
        no valid fit exists.
    """
    if xmin_rule not in XMIN_RULES:
        raise ValueError(f"unknown xmin_rule {xmin_rule!r}; expected one of {', '.join(XMIN_RULES)}")
    x = prepare_evals(evals, threshold)
    N = x.size
    xmax = float(x[-1]) if N else math.nan
    if N < 2:
        return _failed(xmin_rule, N, f"too few positive eigenvalues ({N}) above threshold {threshold:g}", xmax)
    if x[0] == x[-1]:
        return _failed(xmin_rule, N, "all eigenvalues are equal: no tail to fit", xmax)

    use_small = small_n > 0 and N < small_n
    lx = np.log(x)
    alphas = _hill_from_logs(lx, bias_corrected=use_small)
    cand = np.arange(N - 1)
    ntail = N - cand
    extra: dict = {}

    if xmin_rule in ("median", "fraction"):
        if not xmin_pos > 0:
            raise ValueError(f"xmin_pos must be > 0, got {xmin_pos}")
        i = min(int(N / xmin_pos), N - 2)
        a = alphas[i]
        if not np.isfinite(a) or a <= 1.0:
            return _failed(xmin_rule, N, f"Hill estimate at xmin index {i} is not > 1", xmax)
        return _make(x, i, a, _ks_one(lx, i, a), xmin_rule, extra)

    if xmin_rule == "fixed":
        if xmin is None:
            raise ValueError("xmin_rule='fixed' needs xmin=<value>")
        i = int(np.argmin(np.abs(x[:-1] - xmin)))
        a = alphas[i]
        if not np.isfinite(a) or a <= 1.0:
            return _failed(xmin_rule, N, f"Hill estimate at xmin={x[i]:g} is not > 1", xmax)
        return _make(x, i, a, _ks_one(lx, i, a), xmin_rule, extra)

    mask = ntail >= max(min_tail, 8 if use_small else 2)
    if xmin_rule == "peak":
        lo, hi = peak_xmin_bounds(x, peak_bins, peak_legacy_bound)
        mask &= (x[:-1] >= lo) & (x[:-1] <= hi)
        extra["xmin_lo"], extra["xmin_hi"] = lo, hi
    cand = cand[mask]
    if cand.size == 0:
        return _failed(xmin_rule, N, "no xmin candidate satisfies the rule's constraints", xmax)
    i, D = _ks_argmin(lx, alphas, cand)
    if i < 0:
        return _failed(xmin_rule, N, "no candidate gives alpha > 1", xmax)
    return _make(x, i, alphas[i], D, xmin_rule, extra)


def _make(x: np.ndarray, i: int, alpha: float, D: float, rule: str, extra: dict) -> PowerLawFit:
    N = x.size
    n = N - i
    return PowerLawFit(
        alpha=float(alpha),
        xmin=float(x[i]),
        xmax=float(x[-1]),
        D=float(D),
        sigma=float((alpha - 1.0) / math.sqrt(n)),
        n_tail=int(n),
        n_total=int(N),
        xmin_rule=rule,
        extra=extra,
    )


def fit_with_fingers_clipped(
    evals: np.ndarray,
    xmin_rule: XminRule = "ks",
    *,
    max_fingers: int = 10,
    finger_thresh: float = 1.0,
    min_alpha: float = 2.0,
    **kwargs,
) -> PowerLawFit:
    """``clip_xmax`` finger removal: drop the top k eigenvalues while that lowers alpha.

    Refits with the largest k = 1 .. max_fingers - 1 eigenvalues removed and keeps the
    first refit whose alpha is more than ``finger_thresh`` below the raw alpha; stops
    early once a refit's alpha is <= ``min_alpha``. ``num_fingers`` is the number of
    eigenvalues actually removed (WeightWatcher starts at 2 and reports one fewer).
    """
    x = prepare_evals(evals, kwargs.pop("threshold", 0.0))
    raw = fit_power_law(x, xmin_rule, **kwargs)
    if not raw.ok:
        return raw
    best, fingers = raw, 0
    for k in range(1, max_fingers):
        if x.size - k < 4:
            break
        f = fit_power_law(x[:-k], xmin_rule, **kwargs)
        if not f.ok:
            break
        if f.alpha + finger_thresh < raw.alpha:
            best, fingers = f, k
            break
        if min_alpha is not None and f.alpha <= min_alpha:
            break
    d = best.as_dict()
    d.update(num_fingers=fingers, raw_alpha=raw.alpha, xmax=float(x[-1 - fingers]))
    extra = {k: d.pop(k) for k in list(d) if k not in PowerLawFit.__dataclass_fields__}
    d["extra"] = extra
    return PowerLawFit(**d)


# --------------------------------------------------------------------------- TPL
def _log_tpl_norm(alpha: float, lam: float, xmin: float) -> float:
    """log of integral_{xmin}^inf x^-alpha exp(-lam x) dx, computed stably by quadrature."""
    from scipy import integrate

    # substitute x = xmin * (1 + u); scale out the value at xmin
    def f(u: float) -> float:
        return math.exp(-alpha * math.log1p(u) - lam * xmin * u)

    val, _ = integrate.quad(f, 0.0, math.inf, limit=200)
    return math.log(xmin) + (-alpha * math.log(xmin) - lam * xmin) + math.log(val)


def fit_truncated_power_law(evals: np.ndarray, xmin: float, *, threshold: float = 0.0) -> dict:
    """MLE of p(x) ~ x^-alpha exp(-lambda x) on x >= xmin (lambda >= 0).

    Returns ``alpha``, ``Lambda``, ``loglik`` and ``status``/``reason``. Uses its own
    normalisation by quadrature, so it does not depend on ``powerlaw``'s API.
    """
    from scipy import optimize

    x = prepare_evals(evals, threshold)
    tail = x[x >= xmin]
    n = tail.size
    if n < 5 or not np.isfinite(xmin) or xmin <= 0:
        return {"alpha": math.nan, "Lambda": math.nan, "loglik": math.nan, "status": "failed",
                "reason": f"tail too small for a truncated power law ({n} points)"}
    sl = float(np.log(tail).sum())
    sx = float(tail.sum())
    scale = float(tail.mean())

    def nll(p: np.ndarray) -> float:
        alpha, loglam = p
        lam = math.exp(loglam) / scale
        try:
            return alpha * sl + lam * sx + n * _log_tpl_norm(alpha, lam, xmin)
        except (ValueError, OverflowError, ZeroDivisionError):
            return math.inf

    a0 = 1.0 + n / max(sl - n * math.log(xmin), 1e-12)
    best = None
    for ll0 in (-6.0, -2.0, 0.0):
        r = optimize.minimize(nll, np.array([min(a0, 20.0), ll0]), method="Nelder-Mead",
                              options={"xatol": 1e-6, "fatol": 1e-9, "maxiter": 2000})
        if best is None or r.fun < best.fun:
            best = r
    alpha, loglam = best.x
    return {"alpha": float(alpha), "Lambda": float(math.exp(loglam) / scale), "loglik": float(-best.fun),
            "status": "success" if np.isfinite(best.fun) else "failed", "reason": ""}


# --------------------------------------------------------------- goodness of fit
def _pl_loglik(tail: np.ndarray, alpha: float, xmin: float) -> np.ndarray:
    return np.log(alpha - 1.0) - np.log(xmin) - alpha * np.log(tail / xmin)


def likelihood_ratio(evals: np.ndarray, fit: PowerLawFit, alternative: str = "lognormal") -> tuple[float, float]:
    """Clauset-Shalizi-Newman log-likelihood ratio R of the power law vs ``alternative``.

    Both are fitted by maximum likelihood on the same tail x >= xmin. R > 0 favours the
    power law; the returned p is Vuong's two-sided significance of the sign of R.
    ``alternative`` is ``"lognormal"`` (truncated at xmin) or ``"exponential"``.
    """
    from scipy import optimize, special

    if not fit.ok:
        return math.nan, math.nan
    x = prepare_evals(evals)
    tail = x[x >= fit.xmin]
    n = tail.size
    if n < 3:
        return math.nan, math.nan
    l_pl = _pl_loglik(tail, fit.alpha, fit.xmin)
    if alternative == "exponential":
        lam = 1.0 / max(float(np.mean(tail - fit.xmin)), 1e-300)
        l_alt = np.log(lam) - lam * (tail - fit.xmin)
    elif alternative == "lognormal":
        lt = np.log(tail)
        lx = math.log(fit.xmin)
        m, v = float(lt.mean()), float(lt.var())

        # the truncated-lognormal likelihood depends on the data only through n and the mean
        # and variance of ln x, so each evaluation is O(1) (constants dropped)
        def nll(p: np.ndarray) -> float:
            mu, ls = p
            s = math.exp(ls)
            return n * (0.5 * (v + (m - mu) ** 2) / (s * s) + ls + float(special.log_ndtr((mu - lx) / s)))

        r = optimize.minimize(nll, np.array([m, math.log(max(math.sqrt(v), 1e-3))]),
                              method="Nelder-Mead", options={"xatol": 1e-7, "fatol": 1e-10, "maxiter": 4000})
        mu, s = r.x[0], math.exp(r.x[1])
        z = (lt - mu) / s
        l_alt = -0.5 * z * z - 0.5 * math.log(2 * math.pi) - math.log(s) - lt - float(special.log_ndtr((mu - lx) / s))
    else:
        raise ValueError(f"unknown alternative {alternative!r}; expected 'lognormal' or 'exponential'")
    d = l_pl - l_alt
    R = float(d.sum())
    sd = float(d.std())
    p = float(special.erfc(abs(R) / (math.sqrt(2 * n) * sd))) if sd > 0 else math.nan
    return R, p


def bootstrap_pvalue(
    evals: np.ndarray,
    fit: PowerLawFit,
    *,
    n_boot: int = 100,
    seed: int = 0,
    **fit_kwargs,
) -> float:
    """Clauset et al. (2009) semi-parametric bootstrap p-value of a power-law fit.

    Each synthetic sample keeps the data's size: with probability n_tail/N a point is
    drawn from the fitted power law above xmin, otherwise resampled from the data below
    xmin. Each sample is refitted with the same rule (``"fixed"`` keeps the fit's xmin
    unless ``xmin`` is given); p is the fraction of synthetic KS distances at least as
    large as the observed one. Seeded and reproducible.
    """
    if not fit.ok:
        return math.nan
    if fit.xmin_rule == "fixed":
        fit_kwargs.setdefault("xmin", fit.xmin)
    x = prepare_evals(evals, fit_kwargs.get("threshold", 0.0))
    N = x.size
    # the points below the fitted tail (by position, so copies of xmin below it count too)
    below = x[: N - fit.n_tail] if fit.n_total == N else x[x < fit.xmin]
    rng = np.random.default_rng(seed)
    p_tail = fit.n_tail / N
    hits = 0
    valid = 0
    for _ in range(n_boot):
        m = rng.binomial(N, p_tail)
        u = rng.random(m)
        synth_tail = fit.xmin * (1.0 - u) ** (-1.0 / (fit.alpha - 1.0))
        synth_low = rng.choice(below, size=N - m, replace=True) if below.size and N - m > 0 else np.empty(0)
        f = fit_power_law(np.concatenate([synth_low, synth_tail]), fit.xmin_rule, **fit_kwargs)
        if f.ok:
            valid += 1
            hits += f.D >= fit.D
    return hits / valid if valid else math.nan
