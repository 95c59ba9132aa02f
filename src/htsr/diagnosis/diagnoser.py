"""Fitting the MD trees of an own population: label the grid (room for improvement), drop ties, fit one
fixed-structure tree per task (:class:`DiagnoserConfig`), and keep them together as a :class:`Diagnoser`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from htsr.config import check_keys
from htsr.diagnosis.config import TASK_LABELS, DiagnoserConfig
from htsr.diagnosis.errors import DiagnosisError

__all__ = ["Diagnoser", "fit_diagnoser", "auto_bounds", "SCHEMA"]

SCHEMA = "htsr.mdtree.diagnoser/1"
_FEATURES = ["train_error", "mode_connectivity_peak", "hessian_t"]


def auto_bounds(tree_cls: type, frame: pd.DataFrame) -> list[tuple[float, float]]:
    """Search bounds per threshold from the observed range of its feature (the paper's bounds are in its
    population's units; a small digits CNN has other ranges of ln trace and connectivity)."""
    bounds = []
    for t in tree_cls.spec.thresholds:
        v = frame[tree_cls.spec.features[t.feature]].to_numpy(dtype=float)
        lo, hi = float(np.min(v)), float(np.max(v))
        pad = max(0.01 * (hi - lo), 1e-6 * max(1.0, abs(lo), abs(hi)))
        bounds.append((lo - pad, hi + pad))
    return bounds


@dataclass
class Diagnoser:
    """MD trees fitted on a labelled population: ``trees`` by task, ``constant`` tasks whose population had
    one class (the advice is that class, flagged), ``skipped`` tasks with the reason, ``n_train`` rows per task."""

    trees: dict[str, Any] = field(default_factory=dict)
    constant: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    n_train: dict[str, int] = field(default_factory=dict)

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        """One column per task with the predicted label."""
        out = pd.DataFrame(index=frame.index)
        for task, tree in self.trees.items():
            out[task] = tree.predict(frame)
        for task, label in self.constant.items():
            out[task] = label
        return out

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per fitted or constant task: training rows, training accuracy (None for a constant), constant flag."""
        out: dict[str, dict[str, Any]] = {}
        for task, tree in self.trees.items():
            out[task] = {"n_train": self.n_train.get(task), "train_accuracy": float(tree.train_accuracy_),
                         "constant": False}
        for task in self.constant:
            out[task] = {"n_train": self.n_train.get(task), "train_accuracy": None, "constant": True}
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "trees": {k: t.to_dict() for k, t in self.trees.items()},
                "constant": dict(self.constant), "skipped": dict(self.skipped), "n_train": dict(self.n_train)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Diagnoser:
        """A diagnoser from :meth:`to_dict` output; unknown keys and tasks are errors."""
        from htsr.diagnosis.mdtree import load_tree

        if not isinstance(d, Mapping) or d.get("schema") != SCHEMA:
            got = d.get("schema") if isinstance(d, Mapping) else type(d).__name__
            raise DiagnosisError(f"not a saved diagnoser (expected schema {SCHEMA!r}, got {got!r})")
        check_keys(d, ("schema", "trees", "constant", "skipped", "n_train"), "diagnoser key(s)")
        parts = {k: d.get(k) or {} for k in ("trees", "constant", "skipped", "n_train")}
        for k, v in parts.items():
            if not isinstance(v, Mapping):
                raise DiagnosisError(f"diagnoser {k!r} must be an object, got {type(v).__name__}")
        check_keys([*parts["trees"], *parts["constant"]], TASK_LABELS, "diagnoser task(s)")
        return cls(trees={k: load_tree(v) for k, v in parts["trees"].items()},
                   constant={k: str(v) for k, v in parts["constant"].items()},
                   skipped={k: str(v) for k, v in parts["skipped"].items()},
                   n_train={k: int(v) for k, v in parts["n_train"].items()})


def fit_diagnoser(population: pd.DataFrame, config: DiagnoserConfig | None = None, *,
                  task_bounds: Mapping[str, Sequence[Sequence[float]]] | None = None, relabel: bool = True,
                  **settings: Any) -> Diagnoser:
    """Label ``population`` (room for improvement of ``config.score`` over the grid) and fit one MD tree per task.

    ``config`` (:class:`DiagnoserConfig`; ``settings`` override its fields, e.g. ``bounds="paper"``): ``bounds``
    ``auto`` searches each threshold over its feature's observed range, ``paper`` in the paper's units (train
    error [0, 1] %, connectivity [-30, 0] %, ln trace [4, 9]); ``task_bounds`` gives explicit per-threshold bounds
    for some tasks. A task whose non-tied rows all have one label becomes a flagged constant; one with no row is
    skipped. ``relabel=False`` uses the label columns already in ``population`` (e.g. computed on a whole grid
    before holding part of it out).
    """
    from htsr.diagnosis.labels import drop_optimal, label_population
    from htsr.diagnosis.mdtree import TASKS
    from htsr.diagnosis.population import GRID_COLUMNS, validate_population

    config = config or DiagnoserConfig()
    if settings:
        config = config.replace(**settings)
    task_bounds = dict(task_bounds or {})
    check_keys(task_bounds, config.tasks, "task(s) in task_bounds")
    if relabel:
        validate_population(population, [*_FEATURES, config.score, *GRID_COLUMNS], name="fit_diagnoser population")
        labelled = label_population(population, score=config.score)
    else:
        validate_population(population, _FEATURES, name="fit_diagnoser population")
        labelled = population
    diag = Diagnoser()
    for task in config.tasks:
        label = TASK_LABELS[task]
        if label not in labelled:
            diag.skipped[task] = f"the population has no {label!r} label (its grid axis is missing)"
            continue
        rows = drop_optimal(labelled, label)
        diag.n_train[task] = len(rows)
        classes = sorted(set(rows[label]))
        if not classes:
            diag.skipped[task] = "every configuration is a tie ('optimal'): nothing to learn"
        elif len(classes) == 1:
            diag.constant[task] = classes[0]
        else:
            cls = TASKS[task]
            b = task_bounds.get(task) or (auto_bounds(cls, rows) if config.bounds == "auto" else None)
            init = None if b is None else [0.5 * (lo + hi) for lo, hi in b]
            diag.trees[task] = cls(bounds=b, init_thresholds=init, xatol=config.xatol,
                                   maxiter=config.maxiter).fit(rows, rows[label])
    if not diag.trees and not diag.constant:
        raise DiagnosisError(f"no task could be fitted: {diag.skipped}")
    return diag
