"""TempBalance's maps from per-layer metric values to learning-rate multipliers (pure numpy).

Every map takes a 1-D array of finite metric values (one per tuned unit: a layer or a block) and returns
one multiplier per unit; the unit's learning rate is ``eta_t * multiplier``. Larger metric (alpha: a less
heavy-tailed, less trained layer) always gets a larger multiplier.

The reference code (``tempbalance.py::get_layer_temps``, ModelBalancing ``esd_utils.py``) leaves edge cases
unhandled; here they are defined and documented per map:

* ``linear``: all values equal (max == min) gives every unit the midpoint ``(s1 + s2) / 2`` (the reference's
  ``np.interp`` with a degenerate range returns ``s2`` for every layer, a silent 1.5x boost).
* ``rank``: ties get their average rank (the reference's double ``argsort`` breaks ties by layer order, so the
  result depended on module order).
* ``sqrt`` / ``log2``: need positive ``sqrt(x)`` / ``log2(x)``; values outside the domain raise
  :class:`~htsr.errors.ConfigError` instead of producing negative or infinite learning rates.
* ``sigmoid``: a single unit (or all equal) gets multiplier 1.

NaN handling is the caller's job (:class:`~htsr.tempbalance.scheduler.TempBalance` gives a unit with a NaN
metric the base rate and says so in the log); these functions reject non-finite input.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.stats import rankdata

from htsr.errors import ConfigError

MAPPINGS = ("linear", "rank", "sqrt", "log2", "sigmoid")


def _check(values: np.ndarray | list[float]) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1:
        raise ConfigError(f"metric values must be a 1-D array, got shape {x.shape}")
    if x.size == 0:
        raise ConfigError("no metric values to map (no tuned unit has a finite metric)")
    if not np.all(np.isfinite(x)):
        raise ConfigError(f"metric values must be finite, got {x.tolist()}")
    return x


def linear_map(values: np.ndarray | list[float], s1: float = 0.5, s2: float = 1.5) -> np.ndarray:
    """TB's scale-free linear map: ``s1 + (s2 - s1) * (x - min) / (max - min)`` (midpoint when all equal)."""
    x = _check(values)
    lo, hi = float(x.min()), float(x.max())
    if hi == lo:
        return np.full_like(x, 0.5 * (s1 + s2))
    return s1 + (s2 - s1) * (x - lo) / (hi - lo)


def rank_map(values: np.ndarray | list[float], s1: float = 0.5, s2: float = 1.5) -> np.ndarray:
    """TB's step map: ``s1 + (s2 - s1) * rank / n`` with rank 0 for the smallest value (ties: average rank).

    As in the reference the largest multiplier is ``s1 + (s2 - s1) * (n - 1) / n``, not ``s2``.
    """
    x = _check(values)
    rank = rankdata(x, method="average") - 1.0
    return s1 + (s2 - s1) * rank / x.size


def sqrt_map(values: np.ndarray | list[float]) -> np.ndarray:
    """``n * sqrt(x) / sum(sqrt(x))``: multipliers average to 1 (needs x > 0)."""
    x = _check(values)
    if np.any(x <= 0):
        raise ConfigError(f"the sqrt map needs positive metric values, got min {x.min():.4g}; use metric='alpha' "
                          "or the linear/rank/sigmoid map")
    r = np.sqrt(x)
    return x.size * r / r.sum()


def log2_map(values: np.ndarray | list[float]) -> np.ndarray:
    """``n * log2(x) / sum(log2(x))``: multipliers average to 1 (needs x > 1, true of every Hill alpha)."""
    x = _check(values)
    if np.any(x <= 1):
        raise ConfigError(f"the log2 map needs metric values > 1, got min {x.min():.4g}; use metric='alpha' "
                          "or the linear/rank/sigmoid map")
    r = np.log2(x)
    return x.size * r / r.sum()


def sigmoid_map(values: np.ndarray | list[float], s_min: float = 1.0, s_max: float = 1.0,
                temperature: float = 10.0) -> np.ndarray:
    """Model Balancing's (EMNLP'24) map: ``10 ** f(x - mean(x))`` with
    ``f(d) = s_max * (sigmoid(T d) - 0.5)`` for d > 0 and ``s_min * (sigmoid(T d) - 0.5)`` otherwise.

    Multipliers lie in ``(10 ** (-s_min / 2), 10 ** (s_max / 2))``; the unit at the mean gets 1.
    """
    x = _check(values)
    if s_min < 0 or s_max < 0:
        raise ConfigError(f"s_min and s_max must be >= 0, got {s_min}, {s_max}")
    d = x - x.mean()
    sig = 0.5 * (1.0 + np.tanh(0.5 * temperature * d)) - 0.5  # logistic(T d) - 0.5, overflow-free
    f = np.where(d > 0, s_max * sig, s_min * sig)
    return np.power(10.0, f)


def get_mapping(name: str, *, s1: float = 0.5, s2: float = 1.5, s_min: float = 1.0, s_max: float = 1.0,
                temperature: float = 10.0) -> Callable[[np.ndarray], np.ndarray]:
    """The map called ``name`` (one of :data:`MAPPINGS`) with its parameters bound, validated here."""
    if name not in MAPPINGS:
        raise ConfigError(f"unknown mapping {name!r}; expected one of {', '.join(MAPPINGS)}")
    if name in ("linear", "rank"):
        if not (0 < s1 <= s2):
            raise ConfigError(f"the {name} map needs 0 < s1 <= s2, got s1={s1}, s2={s2}")
        fn = linear_map if name == "linear" else rank_map
        return lambda x: fn(x, s1, s2)
    if name == "sqrt":
        return sqrt_map
    if name == "log2":
        return log2_map
    if s_min < 0 or s_max < 0:
        raise ConfigError(f"the sigmoid map needs s_min, s_max >= 0, got {s_min}, {s_max}")
    if not temperature > 0:
        raise ConfigError(f"the sigmoid map needs temperature > 0, got {temperature}")
    return lambda x: sigmoid_map(x, s_min, s_max, temperature)
