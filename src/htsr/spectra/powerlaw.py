"""Power-law fits of eigenvalue tails: one module of pure functions on 1-D arrays.

Every method in htsr that needs a power-law exponent calls :func:`fit_power_law`.
The estimator is the continuous Hill / Clauset maximum-likelihood exponent

    alpha(i) = 1 + n / (sum_{j>=i} ln x_j - n ln x_i),     n = N - i,

evaluated for *every* candidate xmin index ``i`` at once from suffix sums (O(N)), and
the one-sided KS distance used by WeightWatcher and the TempBalance family

    D(i) = max_{k<n} | 1 - (x_{i+k}/x_i)^(1-alpha(i)) - k/n |.

Why this is written by hand: ``powerlaw`` re-fits every candidate in Python (O(N^2) with
a large constant, 13 s at N = 15000) and changed its API in 2.0, which silently broke
WeightWatcher's truncated-power-law path. The exact KS scan here uses a branch-and-bound
search (cheap lower bounds on a strided grid, exact D only where the bound can still
win), so it returns exactly the argmin of the full O(N^2) scan at a fraction of the cost.

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
    tail sum is not positive (ties at xmin) get NaN.
    """
    N = x.size
    if N < 2:
        return np.empty(0)
    logx = np.log(x)
    suffix = np.cumsum(logx[::-1])[::-1][:-1]  # sum_{j>=i} ln x_j for i = 0..N-2
    n = (N - np.arange(N - 1)).astype(np.float64)
    denom = suffix - n * logx[:-1]
    num = n - 1.0 if bias_corrected else n
    with np.errstate(divide="ignore", invalid="ignore"):
        a = 1.0 + num / denom
    a[~(denom > 1e-300)] = np.nan
    return a


def ks_distance(x: np.ndarray, i: int, alpha: float) -> float:
    """Exact one-sided KS distance of the tail x[i:] against a power law (alpha, x[i])."""
    tail = x[i:]
    n = tail.size
    if not (alpha > 1.0) or n == 0:
        return math.inf
    cdf = 1.0 - (tail / x[i]) ** (1.0 - alpha)
    return float(np.max(np.abs(cdf - np.arange(n) / n)))


def _ks_exact_many(x: np.ndarray, idx: np.ndarray, alphas: np.ndarray, budget: int = 4_000_000) -> np.ndarray:
    """Exact D for many candidates, vectorised in chunks bounded by ``budget`` elements."""
    N = x.size
    out = np.full(idx.size, np.inf)
    order = np.argsort(idx)
    pos = 0
    while pos < order.size:
        # grow a chunk while its padded size stays within budget
        start = idx[order[pos]]
        width = N - start
        rows = max(1, budget // max(width, 1))
        sel = order[pos : pos + rows]
        pos += rows
        ii = idx[sel]
        aa = alphas[sel]
        valid = aa > 1.0
        if not valid.any():
            continue
        ii, aa, sel = ii[valid], aa[valid], sel[valid]
        j = np.arange(start, N)
        k = j[None, :] - ii[:, None]  # position inside each tail
        n = (N - ii).astype(np.float64)[:, None]
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            ratio = x[None, start:] / x[ii][:, None]
            cdf = 1.0 - ratio ** (1.0 - aa[:, None])
            dev = np.abs(cdf - k / n)
        dev[k < 0] = 0.0
        out[sel] = dev.max(axis=1)
    return out


def ks_distances(x: np.ndarray, alphas: np.ndarray, candidates: np.ndarray | None = None) -> np.ndarray:
    """Exact D for each candidate index (all 0..N-2 by default); inf where alpha <= 1."""
    if candidates is None:
        candidates = np.arange(alphas.size)
    return _ks_exact_many(x, np.asarray(candidates), alphas[candidates])


def ks_argmin(x: np.ndarray, alphas: np.ndarray, candidates: np.ndarray, grid: int = 64) -> tuple[int, float]:
    """Index (into ``x``) of the candidate with the smallest exact KS distance.

    Equivalent to ``candidates[argmin(ks_distances(...))]`` (first index on ties) but
    computes exact distances only where a strided lower bound can still beat the best
    exact value found so far. The lower bound is the maximum deviation over a subset
    of tail points, which can never exceed the maximum over all of them.
    """
    cand = np.asarray(candidates)
    a = alphas[cand]
    ok = a > 1.0
    cand, a = cand[ok], a[ok]
    if cand.size == 0:
        return -1, math.inf
    N = x.size
    if cand.size <= 64 or N <= 2 * grid:
        D = _ks_exact_many(x, cand, a)
        b = int(np.argmin(D))
        return int(cand[b]), float(D[b])
    # lower bounds from a global grid of sample points j (always within the tail j >= i)
    g = np.unique(np.linspace(0, N - 1, grid).astype(np.int64))
    lb = np.zeros(cand.size)
    step = max(1, 2_000_000 // g.size)
    for s in range(0, cand.size, step):
        ci = cand[s : s + step]
        ca = a[s : s + step]
        k = g[None, :] - ci[:, None]
        n = (N - ci).astype(np.float64)[:, None]
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            cdf = 1.0 - (x[g][None, :] / x[ci][:, None]) ** (1.0 - ca[:, None])
            dev = np.abs(cdf - k / n)
        dev[k < 0] = 0.0
        lb[s : s + step] = dev.max(axis=1)
    order = np.lexsort((cand, lb))  # by bound, then by index
    best_i, best_d = -1, math.inf
    pos = 0
    batch = 32
    while pos < order.size:
        sel = order[pos : pos + batch]
        if lb[sel[0]] > best_d:
            break
        D = _ks_exact_many(x, cand[sel], a[sel])
        for c, d in zip(cand[sel], D):
            if d < best_d or (d == best_d and c < best_i):
                best_i, best_d = int(c), float(d)
        pos += batch
        batch = min(batch * 2, 1024)
    # candidates with lb == best_d might tie with a smaller index: check them exactly
    rest = order[pos:]
    tie = rest[lb[rest] == best_d]
    if tie.size:
        D = _ks_exact_many(x, cand[tie], a[tie])
        for c, d in zip(cand[tie], D):
            if d < best_d or (d == best_d and c < best_i):
                best_i, best_d = int(c), float(d)
    return best_i, best_d


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
    alphas = hill_alphas(x, bias_corrected=use_small)
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
        D = ks_distance(x, i, a)
        return _make(x, i, a, D, xmin_rule, extra)

    if xmin_rule == "fixed":
        if xmin is None:
            raise ValueError("xmin_rule='fixed' needs xmin=<value>")
        i = int(np.argmin(np.abs(x[:-1] - xmin)))
        a = alphas[i]
        if not np.isfinite(a) or a <= 1.0:
            return _failed(xmin_rule, N, f"Hill estimate at xmin={x[i]:g} is not > 1", xmax)
        return _make(x, i, a, ks_distance(x, i, a), xmin_rule, extra)

    mask = ntail >= max(min_tail, 8 if use_small else 2)
    if xmin_rule == "peak":
        lo, hi = peak_xmin_bounds(x, peak_bins, peak_legacy_bound)
        mask &= (x[:-1] >= lo) & (x[:-1] <= hi)
        extra["xmin_lo"], extra["xmin_hi"] = lo, hi
    cand = cand[mask]
    if cand.size == 0:
        return _failed(xmin_rule, N, "no xmin candidate satisfies the rule's constraints", xmax)
    i, D = ks_argmin(x, alphas, cand)
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
    from scipy import optimize, special, stats

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

        def nll(p: np.ndarray) -> float:
            mu, ls = p
            s = math.exp(ls)
            lsf = stats.norm.logsf((lx - mu) / s)
            return float(-np.sum(stats.norm.logpdf((lt - mu) / s) - np.log(s) - lt - lsf))

        r = optimize.minimize(nll, np.array([float(lt.mean()), math.log(max(float(lt.std()), 1e-3))]),
                              method="Nelder-Mead", options={"xatol": 1e-7, "fatol": 1e-10, "maxiter": 4000})
        mu, s = r.x[0], math.exp(r.x[1])
        l_alt = stats.norm.logpdf((lt - mu) / s) - math.log(s) - lt - stats.norm.logsf((lx - mu) / s)
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
    xmin. Each sample is refitted with the same rule; p is the fraction of synthetic KS
    distances at least as large as the observed one. Seeded and reproducible.
    """
    if not fit.ok:
        return math.nan
    x = prepare_evals(evals, fit_kwargs.get("threshold", 0.0))
    below = x[x < fit.xmin]
    N = x.size
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
