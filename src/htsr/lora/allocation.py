"""AlphaLoRA's allocation as pure numpy functions: experts (or LoRA ranks) per layer from per-layer quality.

* :func:`expert_counts`: ``n_l`` proportional to ``alpha_l ** beta`` at a fixed total ``budget`` (AlphaLoRA,
  EMNLP 2024: a higher alpha, a less well-trained layer, gets more experts), with a floor, rounded by the
  largest-remainder method (default) or by the reference's repair loop (``rounding="reference"``, bit-exact).
* :func:`top_k`: 2 where a layer has more than one expert, else 1.
* :func:`uniform_counts` and :func:`mola_counts`: the MoLA baselines (uniform, "2-4-6-8" increasing or the
  reverse) at the same budget.
* :func:`rank_allocation`: the same rule turned into per-layer LoRA ranks at the total rank of a uniform LoRA.
* :func:`allocation`: one of the named allocations (:data:`ALLOCATIONS`) by name.

The reference's rounding (``expert_number.py``) is, with ``w = alpha ** beta``::

    n = round(T * w / sum(w))                 # numpy round-half-even
    while sum(n) != T:
        if sum(n) < T: n[argmin(w - n)] += 1   # NB: unnormalised w
        else:          n[argmax(w - n)] -= 1

Here the floor (default 1 expert) is applied after the first rounding and a layer at the floor is never
decremented; with ``floor=0`` the loop is the reference's exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from htsr.errors import ConfigError

__all__ = ["ALLOCATIONS", "ROUNDINGS", "MOLA_PATTERN", "allocation", "check_metrics", "expert_counts",
           "largest_remainder", "mola_counts", "rank_allocation", "reference_rounding", "top_k",
           "uniform_counts"]

#: the named allocations of :func:`allocation`
ALLOCATIONS = ("uniform", "mola_increasing", "mola_decreasing", "alphalora")
ROUNDINGS = ("largest_remainder", "reference")
#: MoLA's increasing pattern (experts per quarter of the layers, shallow to deep): "2-4-6-8"
MOLA_PATTERN = (2, 4, 6, 8)


# ------------------------------------------------------------------ checks
def _check_budget(budget: int, n_layers: int, floor: int, what: str = "budget") -> int:
    if isinstance(budget, bool) or not isinstance(budget, int | np.integer):
        raise ConfigError(f"{what} must be an integer, got {budget!r}")
    if isinstance(floor, bool) or not isinstance(floor, int | np.integer) or floor < 0:
        raise ConfigError(f"floor must be an integer >= 0, got {floor!r}")
    if n_layers < 1:
        raise ConfigError("no layers to allocate to (expected at least one per-layer value)")
    if budget < max(n_layers * floor, 1):
        raise ConfigError(f"{what} {budget} is smaller than the {n_layers} layers x floor {floor} = "
                          f"{n_layers * floor}; expected a {what} of at least {max(n_layers * floor, 1)}")
    return int(budget)


def check_metrics(metrics: Sequence[float] | np.ndarray, names: Sequence[str] | None = None) -> np.ndarray:
    """The per-layer metrics as a 1-D float array, or a :class:`ConfigError` naming the NaN/Inf (failed fits)
    and non-positive ones."""
    m = np.asarray(metrics, dtype=np.float64).reshape(-1)
    if m.size == 0:
        raise ConfigError("no per-layer metrics given (expected one alpha per layer)")
    labels = list(names) if names is not None else [f"layer {i}" for i in range(m.size)]
    bad = [labels[i] for i in np.flatnonzero(~np.isfinite(m))]
    if bad:
        raise ConfigError(f"alpha is NaN/Inf (failed fit) for {len(bad)} layer(s): {', '.join(bad[:5])}"
                          f"{' ...' if len(bad) > 5 else ''}; expected a finite alpha for every layer")
    neg = [labels[i] for i in np.flatnonzero(m <= 0)]
    if neg:
        raise ConfigError(f"alpha must be > 0, got {m[m <= 0][0]!r} for {', '.join(neg[:5])}")
    return m


def _check_beta(beta: float) -> float:
    if isinstance(beta, bool) or not isinstance(beta, int | float | np.floating) or not np.isfinite(beta) \
            or beta <= 0:
        raise ConfigError(f"beta must be a finite number > 0, got {beta!r}")
    return float(beta)


# ------------------------------------------------------------------ rounding
def largest_remainder(weights: Sequence[float] | np.ndarray, total: int, floor: int = 1) -> np.ndarray:
    """Integers ``n >= floor`` summing to ``total`` and proportional to ``weights`` (Hamilton's method: the floor
    of each quota, then one more to the largest remainders, ties to the first layer). A quota below the floor is
    raised to it and the excess is taken from the layers with the smallest remainders that are above the
    floor."""
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    total = _check_budget(total, w.size, floor)
    q = total * w / w.sum()
    n = np.maximum(np.floor(q).astype(np.int64), floor)
    rem = q - n
    while n.sum() < total:
        n[int(np.argmax(rem))] += 1  # argmax: first of ties
        rem = q - n
    while n.sum() > total:
        cand = np.where(n > floor, rem, np.inf)
        n[int(np.argmin(cand))] -= 1
        rem = q - n
    return n


def reference_rounding(weights: Sequence[float] | np.ndarray, total: int, floor: int = 1) -> np.ndarray:
    """The reference implementation's rounding (module docstring): round-half-even quotas, then its repair loop
    comparing the *unnormalised* weights with the counts; ``floor`` applied after the rounding (``floor=0``: the
    reference exactly)."""
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    total = _check_budget(total, w.size, floor)
    n = np.maximum(np.round(total * w / w.sum()).astype(np.int64), floor)
    while n.sum() != total:
        if n.sum() < total:
            n[int(np.argmin(w - n))] += 1
        else:
            n[int(np.argmax(np.where(n > floor, w - n, -np.inf)))] -= 1
    return n


def _round(weights: np.ndarray, total: int, rounding: str, floor: int) -> np.ndarray:
    if rounding == "largest_remainder":
        return largest_remainder(weights, total, floor)
    if rounding == "reference":
        return reference_rounding(weights, total, floor)
    raise ConfigError(f"unknown rounding {rounding!r}; expected one of {', '.join(ROUNDINGS)}")


# ------------------------------------------------------------------ allocations
def expert_counts(metrics: Sequence[float] | np.ndarray, budget: int = 160, beta: float = 2.5, *,
                  rounding: str = "largest_remainder", floor: int = 1) -> np.ndarray:
    """AlphaLoRA's experts per layer: proportional to ``metric ** beta`` (mean PL alpha of the layer's matrices),
    ``budget`` in total, at least ``floor`` each. Defaults: the reference's beta 2.5 and budget 160."""
    m = check_metrics(metrics)
    b = _check_beta(beta)
    return _round(m ** b, budget, rounding, floor)


def top_k(counts: Sequence[int] | np.ndarray, k: int = 2) -> np.ndarray:
    """Experts routed per token: ``k`` (2 in the reference) where a layer has more than one expert, else 1;
    never more than the layer's experts."""
    n = np.asarray(counts, dtype=np.int64).reshape(-1)
    if k < 1:
        raise ConfigError(f"top_k must be >= 1, got {k}")
    if np.any(n < 1):
        raise ConfigError(f"every layer needs at least one expert, got counts {n.tolist()}")
    return np.where(n > 1, np.minimum(k, n), 1)


def uniform_counts(n_layers: int, budget: int) -> np.ndarray:
    """The same number of experts everywhere (largest remainder to the shallow layers when it does not
    divide)."""
    _check_budget(budget, n_layers, 1)
    return largest_remainder(np.ones(n_layers), budget, 1)


def mola_counts(n_layers: int, budget: int, kind: str = "increasing",
                pattern: Sequence[int] = MOLA_PATTERN) -> np.ndarray:
    """MoLA's hand-made allocation: the layers cut into ``len(pattern)`` consecutive groups (layer ``l`` in group
    ``floor(l * len(pattern) / n_layers)``), group ``g`` weighted ``pattern[g]`` (reversed for ``decreasing``),
    scaled to ``budget`` by largest remainder. With 32 layers and budget 160 this is MoLA's "2-4-6-8" exactly
    (8 layers each of 2, 4, 6, 8)."""
    if kind not in ("increasing", "decreasing"):
        raise ConfigError(f"unknown MoLA shape {kind!r}; expected increasing or decreasing")
    p = np.asarray(pattern, dtype=np.float64)
    if p.size == 0 or np.any(~np.isfinite(p)) or np.any(p <= 0):
        raise ConfigError(f"pattern must be positive numbers, got {list(pattern)}")
    _check_budget(budget, n_layers, 1)
    groups = (np.arange(n_layers) * p.size) // n_layers
    w = p[groups]
    if kind == "decreasing":
        w = w[::-1]
    return largest_remainder(w, budget, 1)


def allocation(name: str, budget: int, *, metrics: Sequence[float] | np.ndarray | None = None,
               n_layers: int | None = None, beta: float = 2.5, rounding: str = "largest_remainder",
               floor: int = 1) -> np.ndarray:
    """Experts per layer for one of :data:`ALLOCATIONS` (``alphalora`` needs ``metrics``; the others need
    ``n_layers`` or take it from ``metrics``)."""
    if name not in ALLOCATIONS:
        raise ConfigError(f"unknown allocation {name!r}; expected one of {', '.join(ALLOCATIONS)}")
    if name == "alphalora":
        if metrics is None:
            raise ConfigError("the alphalora allocation needs per-layer metrics (alphas)")
        return expert_counts(metrics, budget, beta, rounding=rounding, floor=floor)
    if n_layers is None:
        if metrics is None:
            raise ConfigError(f"the {name} allocation needs n_layers")
        n_layers = int(np.asarray(metrics).size)
    if name == "uniform":
        return uniform_counts(n_layers, budget)
    return mola_counts(n_layers, budget, name.split("_", 1)[1])


def rank_allocation(metrics: Sequence[float] | np.ndarray, rank: int = 8, beta: float = 2.5, *,
                    budget: int | None = None, rounding: str = "largest_remainder", floor: int = 1) -> np.ndarray:
    """Per-layer LoRA ranks by AlphaLoRA's rule: proportional to ``alpha ** beta`` with the total rank of a
    uniform LoRA of rank ``rank`` (``budget = rank * n_layers`` unless given), at least ``floor``. Every targeted
    matrix of a layer gets that layer's rank, so the adapter's parameter count equals the uniform one's when the
    layers' matrices have the same shapes."""
    m = check_metrics(metrics)
    if isinstance(rank, bool) or not isinstance(rank, int | np.integer) or rank < 1:
        raise ConfigError(f"rank must be an integer >= 1, got {rank!r}")
    total = int(rank) * m.size if budget is None else budget
    return _round(m ** _check_beta(beta), total, rounding, floor)
