"""Transfer protocols of the MD paper (MD ``method/method_utils.py``, ``evaluate_diagnosis_acc.py``).

A diagnosis method is fitted on configurations drawn from one population and tested on another:

* **dataset transfer**: train on a subset of the clean population F, test on all of the noisy F';
* **scale transfer**: train only on small scales of F (``data_limit``: data <= k tenths; ``width_limit``:
  width <= k), test on all of F'.

Training subsets (``scheme``):

* ``random``: k (data, width) pairs without replacement, each with all its batch sizes;
* ``random_data`` / ``random_width``: k data fractions / k widths, with everything else;
* ``data_limit`` / ``width_limit``: the configurations with ``data <= k`` / ``width <= k`` (no randomness).

Both populations first lose their ``optimal`` (tied) rows, and optionally the rows with width below
``min_width`` (the data-vs-batch task uses width >= 32). The candidate pairs/values are the sorted
distinct values left in the training pool. Draws use ``numpy.random.RandomState(seed)``: a local
generator (no global seeding) whose stream equals the reference's ``np.random.seed(seed)`` +
``np.random.choice``, which is what reproduces the published subsets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone

from htsr.diagnosis.errors import DiagnosisError
from htsr.diagnosis.labels import drop_optimal
from htsr.diagnosis.population import validate_population

SCHEMES: tuple[str, ...] = ("random", "random_data", "random_width", "data_limit", "width_limit")
#: The seeds of the published table (MD ``evaluate_diagnosis_acc.py``).
PAPER_SEEDS: tuple[int, ...] = (42, 90, 38, 18, 72)


def prepare_task(train: pd.DataFrame, test: pd.DataFrame, label: str,
                 min_width: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The training pool and test set of a task: ``optimal`` rows dropped, and width >= ``min_width``."""
    for name, f in (("train", train), ("test", test)):
        validate_population(f, ["data", "width"], [label], name=f"{name} population")
    tr, te = drop_optimal(train, label), drop_optimal(test, label)
    if min_width is not None:
        tr, te = tr[tr["width"] >= min_width], te[te["width"] >= min_width]
    for name, f in (("training pool", tr), ("test set", te)):
        if len(f) == 0:
            raise DiagnosisError(f"{name} of {label!r} is empty after dropping 'optimal' rows"
                                 f"{'' if min_width is None else f' and widths < {min_width}'}")
    return tr, te


def sample_training_set(pool: pd.DataFrame, scheme: str, k: int | float, seed: int | None = None
                        ) -> pd.DataFrame:
    """The configurations of ``pool`` that the transfer ``scheme`` trains on (row order kept)."""
    if scheme not in SCHEMES:
        raise DiagnosisError(f"unknown transfer scheme {scheme!r}; expected one of {list(SCHEMES)}")
    validate_population(pool, ["data", "width"], name="training pool")
    if scheme in ("data_limit", "width_limit"):
        col = "data" if scheme == "data_limit" else "width"
        out = pool[pool[col] <= k]
        if len(out) == 0:
            raise DiagnosisError(f"{scheme} k={k}: no configuration has {col} <= {k} "
                                 f"(smallest {col} is {pool[col].min()})")
        return out
    if seed is None:
        raise DiagnosisError(f"scheme {scheme!r} is random: pass a seed")
    if int(k) != k or k < 1:
        raise DiagnosisError(f"scheme {scheme!r}: k must be a positive integer, got {k!r}")
    k = int(k)
    rng = np.random.RandomState(seed)
    data_values = sorted(pool["data"].unique().tolist())
    width_values = sorted(pool["width"].unique().tolist())
    if scheme == "random":
        pairs = [(d, w) for d in data_values for w in width_values]
        if k > len(pairs):
            raise DiagnosisError(f"random k={k}: only {len(pairs)} (data, width) pairs in the pool")
        chosen = set(pairs[i] for i in rng.choice(list(range(len(pairs))), size=k, replace=False))
        keys = list(zip(pool["data"].tolist(), pool["width"].tolist(), strict=True))
        return pool[np.array([key in chosen for key in keys], dtype=bool)]
    col, values = ("data", data_values) if scheme == "random_data" else ("width", width_values)
    if k > len(values):
        raise DiagnosisError(f"{scheme} k={k}: only {len(values)} distinct {col} values in the pool")
    chosen_values = rng.choice(values, size=k, replace=False)
    return pool[pool[col].isin(chosen_values)]


@dataclass
class TransferResult:
    """Per-seed test accuracies of one method in one transfer setting."""

    method: str
    scheme: str
    k: float
    seeds: list[int | None]
    accuracies: list[float]
    n_train: list[int]
    n_test: int
    thresholds: list[list[float]] = field(default_factory=list)

    @property
    def mean_accuracy(self) -> float:
        return float(np.mean(self.accuracies))

    @property
    def mean_n_train(self) -> float:
        return float(np.mean(self.n_train))


def evaluate_transfer(estimator: Any, pool: pd.DataFrame, test: pd.DataFrame, label: str, scheme: str,
                      k: int | float, seeds: Sequence[int] = PAPER_SEEDS, reseed: bool = False,
                      method: str | None = None) -> TransferResult:
    """Fit a fresh clone of ``estimator`` on each seed's training subset of ``pool``; score it on ``test``.

    ``reseed`` sets the clone's ``random_state`` to the seed (for estimators that have one). The reference
    code meant to do this for its decision-tree baselines but, because it assigns its ``dt_seed`` variable
    inside the loop, every seed after the first reuses the first seed; ``reseed=False`` with
    ``random_state=seeds[0]`` reproduces that.
    """
    seeds = list(seeds)
    if not seeds:
        raise DiagnosisError("evaluate_transfer: no seeds")
    test_X, test_y = test, test[label].to_numpy()
    accs, counts, taus = [], [], []
    deterministic = scheme in ("data_limit", "width_limit")
    cache: dict[Any, tuple[float, int, list[float]]] = {}
    for seed in seeds:
        est = clone(estimator)
        if reseed and "random_state" in est.get_params():
            est.set_params(random_state=seed)
        key = None if not deterministic or reseed else "fixed"
        if key is not None and key in cache:
            acc, n, tau = cache[key]
        else:
            train = sample_training_set(pool, scheme, k, seed)
            est.fit(train, train[label].to_numpy())
            acc = float(est.score(test_X, test_y))
            n = len(train)
            tau = [float(v) for v in getattr(est, "thresholds_", [])]
            if key is not None:
                cache[key] = (acc, n, tau)
        accs.append(acc)
        counts.append(n)
        taus.append(tau)
    return TransferResult(method or type(estimator).__name__, scheme, k, seeds, accs, counts, len(test), taus)
