"""MD tree (Zhou et al., ICML 2024): fixed-structure diagnosis trees whose thresholds are fitted.

An MD tree is not a learned decision tree: its shape (which feature is tested where, and what each
leaf predicts) is fixed by the paper; only the thresholds are fitted. Fitting is one pass of
coordinate descent in threshold order: each threshold, with the others held, is set by
``scipy.optimize.minimize_scalar(method="bounded")`` on minus the training accuracy. The objective
is piecewise constant; bounded Brent search is what reproduces the published numbers, so it is kept.

Features (one row per trained configuration, all measured on *training* data):

* ``train_error``: training error in %;
* ``mode_connectivity_peak``: minus the peak training error (in %) on the Bezier curve between two
  seeds, so lower means a higher barrier (poorly connected);
* ``hessian_t``: ln of the Hessian trace;
* ``CKA``: output similarity of two seeds (the CKA variant only).

The estimators follow scikit-learn (``fit``/``predict``/``score``, parameters in ``__init__``, learned
state with a trailing underscore) and take a DataFrame (columns picked by name, so any extra columns
are ignored) or an array whose columns are the features in order.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from htsr.config import check_keys
from htsr.diagnosis.config import TreeConfig
from htsr.diagnosis.errors import DiagnosisError
from htsr.errors import ConfigError

SCHEMA = "htsr.mdtree/1"

#: Baseline feature sets of the paper (MD ``scripts/*.sh``).
VALIDATION_FEATURES: tuple[str, ...] = ("train_error", "train_loss", "test_loss", "test_error")
HYPERPARAMETER_FEATURES: tuple[str, ...] = ("log_data_amount", "log_para_amount")
LANDSCAPE_FEATURES: tuple[str, ...] = ("train_error", "mode_connectivity_peak", "CKA", "hessian_t")


# ----------------------------------------------------------------------------- tree structures
@dataclass(frozen=True)
class Leaf:
    """A leaf: predicts ``label``."""

    label: str


@dataclass(frozen=True)
class Split:
    """Go ``left`` when ``x[feature] <= thresholds[threshold]``, else ``right`` (as the reference)."""

    feature: int
    threshold: int
    left: Leaf | Split
    right: Leaf | Split


@dataclass(frozen=True)
class ThresholdSpec:
    """One fitted threshold: a name, the feature it cuts, its initial value and search bounds."""

    name: str
    feature: int
    init: float
    bounds: tuple[float, float]


@dataclass(frozen=True)
class TreeSpec:
    """A fixed tree: default feature columns, class labels, thresholds (in fitting order), root."""

    name: str
    features: tuple[str, ...]
    classes: tuple[str, ...]
    thresholds: tuple[ThresholdSpec, ...]
    root: Leaf | Split

    @functools.cached_property
    def leaves(self) -> tuple[Leaf, ...]:
        """The leaves in depth-first, left-first order (the numbering of :func:`leaf_ids` and the rendering)."""
        def walk(n: Leaf | Split) -> tuple[Leaf, ...]:
            return (n,) if isinstance(n, Leaf) else walk(n.left) + walk(n.right)

        return walk(self.root)

    @functools.cached_property
    def leaf_codes(self) -> np.ndarray:
        """Class index (into ``classes``) of each leaf."""
        return np.array([self.classes.index(leaf.label) for leaf in self.leaves], dtype=np.int64)


_E, _M, _H = 0, 1, 2
_ERR = (0.0, 1.0)
_MC = (-30.0, 0.0)
_HT = (4.0, 9.0)

#: Q1: is the temperature (learning rate / batch size) too large or too small? ``small`` = batch too large.
TEMPERATURE = TreeSpec(
    "temperature", ("train_error", "mode_connectivity_peak", "hessian_t"), ("large", "small"),
    (ThresholdSpec("error", _E, 0.5, _ERR), ThresholdSpec("connectivity", _M, -10.0, _MC),
     ThresholdSpec("sharpness", _H, 7.0, _HT)),
    Split(_E, 0, Leaf("small"),
          Split(_M, 1, Split(_H, 2, Leaf("large"), Leaf("small")),  # poorly connected: flat = too large
                Leaf("large"))))                                      # well connected

#: Q1 with output similarity instead of sharpness; the third split's leaves are swapped.
TEMPERATURE_CKA = TreeSpec(
    "temperature_cka", ("train_error", "mode_connectivity_peak", "CKA"), ("large", "small"),
    (ThresholdSpec("error", _E, 0.5, _ERR), ThresholdSpec("connectivity", _M, -10.0, _MC),
     ThresholdSpec("similarity", _H, 0.5, (0.2, 0.8))),
    Split(_E, 0, Leaf("small"),
          Split(_M, 1, Split(_H, 2, Leaf("small"), Leaf("large")), Leaf("large"))))

#: Q2: is the failure the model size (``width``) or the optimizer setting (``batch``)?
WIDTH_BATCH = TreeSpec(
    "width_batch", ("train_error", "mode_connectivity_peak"), ("batch", "width"),
    (ThresholdSpec("error", _E, 0.5, _ERR), ThresholdSpec("connectivity_low_error", _M, -10.0, _MC),
     ThresholdSpec("connectivity_high_error", _M, -10.0, _MC)),
    Split(_E, 0, Split(_M, 1, Leaf("width"), Leaf("batch")),
          Split(_M, 2, Leaf("width"), Leaf("batch"))))

#: Q2: is the failure too little data (``data``) or the optimizer setting (``batch``)? (paper: width >= 32)
DATA_BATCH = TreeSpec(
    "data_batch", ("train_error", "mode_connectivity_peak", "hessian_t"), ("batch", "data"),
    (ThresholdSpec("error", _E, 0.5, _ERR), ThresholdSpec("connectivity_low_error", _M, -10.0, _MC),
     ThresholdSpec("sharpness_low_error_connected", _H, 7.0, _HT),
     ThresholdSpec("connectivity_high_error", _M, -10.0, _MC),
     ThresholdSpec("sharpness_low_error_poorly_connected", _H, 7.0, _HT),
     ThresholdSpec("sharpness_high_error_connected", _H, 7.0, _HT)),
    Split(_E, 0,
          Split(_M, 1, Split(_H, 4, Leaf("data"), Leaf("batch")), Split(_H, 2, Leaf("data"), Leaf("batch"))),
          Split(_M, 3, Leaf("batch"), Split(_H, 5, Leaf("data"), Leaf("batch")))))


# ----------------------------------------------------------------------------- input checks
def _is_frame(X: Any) -> bool:
    return hasattr(X, "columns") and hasattr(X, "iloc")


def feature_matrix(X: Any, features: Sequence[str], who: str = "X") -> np.ndarray:
    """``X`` as a finite float64 matrix with one column per name in ``features``.

    A DataFrame is indexed by column name (missing columns are an error that names them); an array
    must have exactly ``len(features)`` columns, taken to be those features in order.
    """
    features = tuple(features)
    if _is_frame(X):
        missing = [c for c in dict.fromkeys(features) if c not in X.columns]
        if missing:
            raise DiagnosisError(f"{who}: missing feature column(s) {missing}; expected columns {list(features)}, "
                                 f"got {list(map(str, X.columns))}")
        cols = []
        for c in features:
            col = X[c]
            try:
                cols.append(np.asarray(col, dtype=np.float64))
            except (TypeError, ValueError):
                raise DiagnosisError(f"{who}: feature column {c!r} is not numeric (dtype {col.dtype})") from None
        A = np.column_stack(cols) if cols else np.empty((len(X), 0))
    else:
        try:
            A = np.asarray(X, dtype=np.float64)
        except (TypeError, ValueError):
            raise DiagnosisError(f"{who}: expected a numeric array or a DataFrame, got {type(X).__name__}") from None
        if A.ndim != 2 or A.shape[1] != len(features):
            raise DiagnosisError(f"{who}: expected a 2-D array with {len(features)} columns {list(features)}, "
                                 f"got shape {A.shape}")
    if A.shape[0] == 0:
        raise DiagnosisError(f"{who}: no rows")
    bad = ~np.isfinite(A)
    if bad.any():
        j = int(np.argmax(bad.any(axis=0)))
        rows = np.flatnonzero(bad[:, j])
        where = [X.index[r] for r in rows[:3]] if _is_frame(X) else rows[:3].tolist()
        raise DiagnosisError(f"{who}: feature column {features[j]!r} has {rows.size} NaN/infinite value(s) "
                             f"(rows {where}{'...' if rows.size > 3 else ''}); features must be finite")
    return A


def check_labels(y: Any, n: int, classes: Sequence[str] | None = None, who: str = "y") -> np.ndarray:
    """``y`` as a 1-D object array of ``n`` string labels with at least two classes (all in ``classes``)."""
    a = np.asarray(y, dtype=object)
    if a.ndim != 1:
        a = a.reshape(-1) if a.ndim == 2 and 1 in a.shape else a
    if a.ndim != 1 or a.shape[0] != n:
        raise DiagnosisError(f"{who}: expected {n} labels (one per row of X), got shape {np.shape(y)}")
    a = np.array([str(v) for v in a], dtype=object)
    present = sorted(set(a.tolist()))
    if classes is not None:
        unknown = [c for c in present if c not in classes]
        if unknown:
            hint = " (drop ties first: htsr.diagnosis.drop_optimal)" if "optimal" in unknown else ""
            raise DiagnosisError(f"{who}: unknown label(s) {unknown}; expected labels in {list(classes)}{hint}")
    if len(present) < 2:
        raise DiagnosisError(f"{who}: the population has one class ({present[0]!r} on all {n} rows); "
                             "a diagnosis needs examples of both failure sources")
    return a


def _check_thresholds(spec: TreeSpec, values: Sequence[float] | None, bounds: Sequence[Sequence[float]],
                      what: str) -> np.ndarray:
    k = len(spec.thresholds)
    if values is None:  # the paper's initial values, moved into custom bounds if they fall outside
        return np.array([min(max(t.init, lo), hi) for t, (lo, hi) in zip(spec.thresholds, bounds, strict=True)],
                        dtype=np.float64)
    try:
        v = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise DiagnosisError(f"{what} must be {k} numbers, got {values!r}") from None
    if v.size != k:
        raise DiagnosisError(f"{what} must have {k} values ({[t.name for t in spec.thresholds]}), got {v.size}")
    for t, x, (lo, hi) in zip(spec.thresholds, v, bounds, strict=True):
        if not np.isfinite(x) or not lo <= x <= hi:
            raise DiagnosisError(f"{what}: threshold {t.name!r} (on {spec.features[t.feature]!r}) = {float(x)!r} is "
                                 f"outside its bounds [{lo}, {hi}]")
    return v


def _check_bounds(spec: TreeSpec, bounds: Sequence[Sequence[float]] | None) -> list[tuple[float, float]]:
    if bounds is None:
        return [t.bounds for t in spec.thresholds]
    k = len(spec.thresholds)
    if len(bounds) != k:
        raise DiagnosisError(f"bounds must have {k} (low, high) pairs ({[t.name for t in spec.thresholds]}), "
                             f"got {len(bounds)}")
    out = []
    for t, b in zip(spec.thresholds, bounds, strict=True):
        try:
            lo, hi = (float(x) for x in b)
        except (TypeError, ValueError):
            raise DiagnosisError(f"bounds for threshold {t.name!r} must be a (low, high) pair, got {b!r}") from None
        if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            raise DiagnosisError(f"bounds for threshold {t.name!r} must be finite with low < high, got {b!r}")
        out.append((lo, hi))
    return out


def leaf_ids(spec: TreeSpec, X: np.ndarray, tau: np.ndarray) -> np.ndarray:
    """The leaf (index into ``spec.leaves``) that each row of a feature matrix reaches under thresholds ``tau``:
    the one tree walker (a row goes left when ``x[feature] <= threshold``, as the reference)."""
    out = np.empty(X.shape[0], dtype=np.int64)
    number = iter(range(len(spec.leaves)))

    def route(n: Leaf | Split, idx: np.ndarray) -> None:
        if isinstance(n, Leaf):
            out[idx] = next(number)
            return
        left = X[idx, n.feature] <= tau[n.threshold]
        route(n.left, idx[left])
        route(n.right, idx[~left])

    route(spec.root, np.arange(X.shape[0]))
    return out


def predict_codes(spec: TreeSpec, X: np.ndarray, tau: np.ndarray) -> np.ndarray:
    """Class indices (into ``spec.classes``) of the rows of a feature matrix under thresholds ``tau``."""
    return spec.leaf_codes[leaf_ids(spec, X, tau)]


def fit_thresholds(spec: TreeSpec, X: np.ndarray, codes: np.ndarray, init: np.ndarray,
                   bounds: Sequence[tuple[float, float]], xatol: float = 1e-5, maxiter: int = 500
                   ) -> tuple[np.ndarray, list[int]]:
    """One coordinate pass: each threshold in order by bounded Brent search on minus training accuracy.

    Returns the thresholds and the number of objective evaluations per threshold.
    """
    tau = np.array(init, dtype=np.float64)
    nfev = []
    for j, (lo, hi) in enumerate(bounds):
        def objective(t: float, j: int = j) -> float:
            tau[j] = t
            return -float(np.mean(predict_codes(spec, X, tau) == codes))

        res = minimize_scalar(objective, bounds=(lo, hi), method="bounded",
                              options={"xatol": xatol, "maxiter": maxiter})
        tau[j] = float(res.x)
        nfev.append(int(res.nfev))
    return tau, nfev


def render_tree(spec: TreeSpec, thresholds: Sequence[float], feature_names: Sequence[str] | None = None,
                decimals: int = 4, counts: np.ndarray | None = None) -> str:
    """The tree as text in the style of ``sklearn.tree.export_text``, one line per branch and leaf."""
    names = tuple(feature_names) if feature_names is not None else spec.features
    lines: list[str] = []
    leaf_no = [0]

    def walk(node: Leaf | Split, depth: int) -> None:
        pad = "|   " * depth + "|--- "
        if isinstance(node, Leaf):
            extra = ""
            if counts is not None:
                extra = f"  ({counts[leaf_no[0]]} samples)"
            leaf_no[0] += 1
            lines.append(f"{pad}class: {node.label}{extra}")
            return
        t = spec.thresholds[node.threshold]
        v = f"{thresholds[node.threshold]:.{decimals}f}"
        lines.append(f"{pad}{names[node.feature]} <= {v}  [{t.name}]")
        walk(node.left, depth + 1)
        lines.append(f"{pad}{names[node.feature]} >  {v}")
        walk(node.right, depth + 1)

    walk(spec.root, 0)
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- estimators
class MDTreeClassifier(ClassifierMixin, BaseEstimator):
    """Base class of the fixed-structure MD trees; subclasses set ``spec`` (a :class:`TreeSpec`).

    Parameters
    ----------
    features: column names for the tree's features, in the spec's order (default: the paper's columns,
        ``spec.features``). Lets a population with other column names be used as is.
    init_thresholds: starting thresholds (default: the paper's, clipped into custom ``bounds``); each must
        lie within its bounds. Only the later thresholds' values matter while an earlier one is searched.
    bounds: per-threshold ``(low, high)`` search intervals (default: the paper's).
    xatol, maxiter: options of the bounded scalar search (:class:`~htsr.diagnosis.config.TreeConfig`: scipy's
        defaults, as the reference).

    Attributes after ``fit``: ``thresholds_`` (array, fitting order), ``threshold_names_``,
    ``classes_``, ``feature_names_`` (the columns used), ``n_features_in_``, ``train_accuracy_``,
    ``n_evaluations_`` (objective calls per threshold).
    """

    spec: ClassVar[TreeSpec]

    def __init__(self, features: Sequence[str] | None = None, init_thresholds: Sequence[float] | None = None,
                 bounds: Sequence[Sequence[float]] | None = None, xatol: float = TreeConfig.xatol,
                 maxiter: int = TreeConfig.maxiter):
        self.features = features
        self.init_thresholds = init_thresholds
        self.bounds = bounds
        self.xatol = xatol
        self.maxiter = maxiter

    # -- helpers
    def _feature_names(self) -> tuple[str, ...]:
        if self.features is None:
            return self.spec.features
        if isinstance(self.features, str) or not isinstance(self.features, Sequence | np.ndarray):
            raise DiagnosisError(f"{type(self).__name__}: features must be a list of {len(self.spec.features)} "
                                 f"column names, got {self.features!r}")
        names = tuple(str(f) for f in self.features)
        if len(names) != len(self.spec.features):
            raise DiagnosisError(f"{type(self).__name__}: features must name {len(self.spec.features)} columns "
                                 f"(for {list(self.spec.features)}), got {list(names)}")
        return names

    def _matrix(self, X: Any, who: str) -> np.ndarray:
        return feature_matrix(X, self._feature_names(), who=f"{type(self).__name__}.{who}")

    # -- sklearn API
    def fit(self, X: Any, y: Any) -> MDTreeClassifier:
        """Fit the thresholds to labelled configurations (one coordinate pass of bounded scalar search)."""
        name = type(self).__name__
        try:
            search = TreeConfig(xatol=self.xatol, maxiter=self.maxiter)
        except ConfigError as e:
            raise DiagnosisError(f"{name}: {e}") from None
        bounds = _check_bounds(self.spec, self.bounds)
        init = _check_thresholds(self.spec, self.init_thresholds, bounds, f"{name}: init_thresholds")
        A = self._matrix(X, "fit")
        labels = check_labels(y, A.shape[0], self.spec.classes, who=f"{name}.fit: y")
        code = {c: i for i, c in enumerate(self.spec.classes)}
        codes = np.array([code[v] for v in labels], dtype=np.int64)
        tau, nfev = fit_thresholds(self.spec, A, codes, init, bounds, search.xatol, search.maxiter)
        self._set_fitted(tau, A.shape[1])
        self.n_evaluations_ = nfev
        self.train_accuracy_ = float(np.mean(predict_codes(self.spec, A, tau) == codes))
        return self

    def _set_fitted(self, tau: np.ndarray, n_features: int) -> None:
        self.thresholds_ = np.asarray(tau, dtype=np.float64)
        self.threshold_names_ = tuple(t.name for t in self.spec.thresholds)
        self.classes_ = np.array(self.spec.classes, dtype=object)
        self.feature_names_ = self._feature_names()
        self.n_features_in_ = n_features

    def predict(self, X: Any) -> np.ndarray:
        """The predicted failure source of each configuration (labels from ``classes_``)."""
        check_is_fitted(self, "thresholds_")
        return self.classes_[predict_codes(self.spec, self._matrix(X, "predict"), self.thresholds_)]

    def apply(self, X: Any) -> np.ndarray:
        """Index of the leaf (in the order of :meth:`export_text`) that each row reaches."""
        check_is_fitted(self, "thresholds_")
        return leaf_ids(self.spec, self._matrix(X, "apply"), self.thresholds_)

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """Accuracy on labelled configurations (labels must be classes of the tree)."""
        pred = self.predict(X)
        labels = np.asarray(y, dtype=object).reshape(-1)
        if labels.shape[0] != pred.shape[0]:
            raise DiagnosisError(f"{type(self).__name__}.score: {labels.shape[0]} labels for {pred.shape[0]} rows")
        labels = np.array([str(v) for v in labels], dtype=object)
        unknown = sorted(set(labels.tolist()) - set(self.spec.classes))
        if unknown:
            raise DiagnosisError(f"{type(self).__name__}.score: unknown label(s) {unknown}; expected labels in "
                                 f"{list(self.spec.classes)} (drop ties labelled 'optimal' first)")
        ok = (pred == labels).astype(np.float64)
        if sample_weight is None:
            return float(ok.mean())
        return float(np.average(ok, weights=np.asarray(sample_weight, dtype=np.float64)))

    # -- rendering and persistence
    @property
    def named_thresholds_(self) -> dict[str, float]:
        """``{threshold name: value}`` in fitting order."""
        check_is_fitted(self, "thresholds_")
        return {n: float(v) for n, v in zip(self.threshold_names_, self.thresholds_, strict=True)}

    def export_text(self, decimals: int = 4, X: Any = None) -> str:
        """The fitted tree as text; with ``X``, each leaf shows how many rows of ``X`` reach it."""
        check_is_fitted(self, "thresholds_")
        counts = None
        if X is not None:
            counts = np.bincount(self.apply(X), minlength=len(self.spec.leaves))
        return render_tree(self.spec, self.thresholds_, self.feature_names_, decimals, counts)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description of the fitted tree (no pickle): estimator, parameters, thresholds."""
        check_is_fitted(self, "thresholds_")
        params = self.get_params()
        params = {k: (list(map(list, v)) if k == "bounds" and v is not None else
                      (list(v) if isinstance(v, (tuple, list, np.ndarray)) else v)) for k, v in params.items()}
        return {"schema": SCHEMA, "estimator": type(self).__name__, "params": params,
                "thresholds": self.named_thresholds_, "features": list(self.feature_names_),
                "classes": list(self.spec.classes),
                "train_accuracy": getattr(self, "train_accuracy_", None)}

    @classmethod
    def from_thresholds(cls, thresholds: Sequence[float] | dict[str, float], **params: Any) -> MDTreeClassifier:
        """A ready-to-predict tree with given thresholds (e.g. published ones); each must be within bounds."""
        est = cls(**params)
        bounds = _check_bounds(cls.spec, est.bounds)
        if thresholds is None:  # _check_thresholds would give the initial values: not a fitted tree
            raise DiagnosisError(f"{cls.__name__}: thresholds are required ({[t.name for t in cls.spec.thresholds]})")
        if isinstance(thresholds, dict):
            names = [t.name for t in cls.spec.thresholds]
            extra = sorted(set(thresholds) - set(names))
            missing = [n for n in names if n not in thresholds]
            if extra or missing:
                raise DiagnosisError(f"{cls.__name__}: thresholds must be named {names}; missing {missing}, "
                                     f"unknown {extra}")
            thresholds = [thresholds[n] for n in names]
        tau = _check_thresholds(cls.spec, thresholds, bounds, f"{cls.__name__}: thresholds")
        est._set_fitted(tau, len(cls.spec.features))
        return est


class MDTreeTemperature(MDTreeClassifier):
    """Q1 MD tree: temperature (batch size) too ``large`` or too ``small``, from train error, connectivity, ln trace.

    ``small`` temperature means the batch is too large. Published thresholds at k=8 (mean of 5 seeds):
    train error 0.68 %, connectivity peak -9.37 %, ln trace 6.38.
    """

    spec = TEMPERATURE


class MDTreeTemperatureCKA(MDTreeClassifier):
    """Q1 MD tree with output similarity (``CKA``, bounds [0.2, 0.8]) in place of the Hessian trace."""

    spec = TEMPERATURE_CKA


class MDTreeWidthBatch(MDTreeClassifier):
    """Q2 MD tree: is the failure the model size (``width``) or the optimizer setting (``batch``)?"""

    spec = WIDTH_BATCH


class MDTreeDataBatch(MDTreeClassifier):
    """Q2 MD tree: is the failure too little ``data`` or the optimizer setting (``batch``)? (paper: width >= 32)."""

    spec = DATA_BATCH


#: Estimator class by task name (CLI ``--task`` and JSON ``estimator``); label columns in ``TASK_LABELS``.
TASKS: dict[str, type[MDTreeClassifier]] = {
    "temperature": MDTreeTemperature,
    "temperature-cka": MDTreeTemperatureCKA,
    "width": MDTreeWidthBatch,
    "data": MDTreeDataBatch,
}


def task_of(estimator: MDTreeClassifier) -> str:
    """The task name of an MD tree (its class in :data:`TASKS`)."""
    return next(t for t, c in TASKS.items() if type(estimator) is c)


_TREE_KEYS = ("schema", "estimator", "params", "thresholds", "features", "classes", "train_accuracy")


def load_tree(d: Mapping[str, Any]) -> MDTreeClassifier:
    """Rebuild a fitted MD tree from :meth:`MDTreeClassifier.to_dict` output. Everything is checked: the schema,
    the keys (unknown ones are errors), the estimator, its parameters, the thresholds (required: a tree without
    them is not a fitted tree, never silently the paper's defaults) and their bounds, and the recorded features,
    classes and training accuracy against the rebuilt tree."""
    if not isinstance(d, Mapping) or d.get("schema") != SCHEMA:
        got = d.get("schema") if isinstance(d, Mapping) else type(d).__name__
        raise DiagnosisError(f"not an MD tree description (expected schema {SCHEMA!r}, got {got!r})")
    check_keys(d, _TREE_KEYS, "MD tree key(s)")
    classes = {c.__name__: c for c in TASKS.values()}
    name = d.get("estimator")
    if name not in classes:
        raise DiagnosisError(f"unknown MD tree estimator {name!r}; expected one of {', '.join(sorted(classes))}")
    cls = classes[name]
    params = d.get("params") or {}
    if not isinstance(params, Mapping):
        raise DiagnosisError(f"MD tree 'params' must be an object, got {type(params).__name__}")
    check_keys(params, cls().get_params(), f"{name} parameter(s)")
    try:
        TreeConfig(xatol=params.get("xatol", TreeConfig.xatol), maxiter=params.get("maxiter", TreeConfig.maxiter))
    except ConfigError as e:
        raise DiagnosisError(f"{name}: {e}") from None
    tau = d.get("thresholds")
    names = [t.name for t in cls.spec.thresholds]
    if tau is None:
        raise DiagnosisError(f"{name}: no 'thresholds' (expected {', '.join(names)}); not a fitted tree")
    if not isinstance(tau, Mapping | list):
        raise DiagnosisError(f"{name}: 'thresholds' must be an object {{name: value}} or a list, got {tau!r}")
    est = cls.from_thresholds(dict(tau) if isinstance(tau, Mapping) else tau, **params)
    for key, have in (("features", list(est.feature_names_)), ("classes", list(cls.spec.classes))):
        if d.get(key) is not None and list(d[key]) != have:
            raise DiagnosisError(f"{name}: recorded {key} {d[key]!r} do not match the tree's {have!r}")
    acc = d.get("train_accuracy")
    if acc is not None:
        if isinstance(acc, bool) or not isinstance(acc, int | float) or not 0.0 <= acc <= 1.0:
            raise DiagnosisError(f"{name}: train_accuracy must be a number in [0, 1], got {acc!r}")
        est.train_accuracy_ = float(acc)
    return est


def read_tree(path: str | os.PathLike) -> MDTreeClassifier:
    """A fitted MD tree from a JSON file written by ``htsr mdtree fit``; any problem is one error naming the file."""
    p = Path(path)
    try:
        d = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DiagnosisError(f"{p}: not a JSON model file ({e})") from None
    try:
        return load_tree(d)
    except ConfigError as e:
        raise DiagnosisError(f"{p}: {e}") from None


# ----------------------------------------------------------------------------- baselines
class FeatureTreeClassifier(ClassifierMixin, BaseEstimator):
    """Baseline: a free scikit-learn decision tree on named feature columns (MD ``method/baseline_dt.py``).

    ``features`` picks the columns: :data:`VALIDATION_FEATURES` (train/test error and loss),
    :data:`HYPERPARAMETER_FEATURES` (log #data, log #params; Q2 uses one of them) or
    :data:`LANDSCAPE_FEATURES`. ``DecisionTreeClassifier(criterion, max_depth, random_state)`` as the paper.
    """

    def __init__(self, features: Sequence[str] = VALIDATION_FEATURES, max_depth: int | None = 4,
                 criterion: str = "gini", random_state: int | None = None):
        self.features = features
        self.max_depth = max_depth
        self.criterion = criterion
        self.random_state = random_state

    def _matrix(self, X: Any, who: str) -> np.ndarray:
        if isinstance(self.features, str) or not len(self.features):
            raise DiagnosisError(f"FeatureTreeClassifier: features must be a non-empty list of column names, "
                                 f"got {self.features!r}")
        return feature_matrix(X, tuple(self.features), who=f"FeatureTreeClassifier.{who}")

    def fit(self, X: Any, y: Any) -> FeatureTreeClassifier:
        from sklearn.tree import DecisionTreeClassifier

        A = self._matrix(X, "fit")
        labels = check_labels(y, A.shape[0], None, who="FeatureTreeClassifier.fit: y")
        if "optimal" in set(labels.tolist()):
            raise DiagnosisError("FeatureTreeClassifier.fit: y contains 'optimal' (ties); drop them first "
                                 "(htsr.diagnosis.drop_optimal), as the paper does")
        self.tree_ = DecisionTreeClassifier(criterion=self.criterion, max_depth=self.max_depth,
                                            random_state=self.random_state).fit(A, labels)
        self.classes_ = self.tree_.classes_
        self.feature_names_ = tuple(self.features)
        self.n_features_in_ = A.shape[1]
        self.train_accuracy_ = float(np.mean(self.tree_.predict(A) == labels))
        return self

    def predict(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "tree_")
        return self.tree_.predict(self._matrix(X, "predict"))

    def export_text(self, decimals: int = 4) -> str:
        """The fitted tree as ``sklearn.tree.export_text`` renders it, with the column names."""
        from sklearn.tree import export_text

        check_is_fitted(self, "tree_")
        return export_text(self.tree_, feature_names=list(self.feature_names_), decimals=decimals)


def validation_tree(random_state: int | None = None, max_depth: int | None = 4) -> FeatureTreeClassifier:
    """Baseline "Validation + DT": a depth-4 tree on train/test error and loss."""
    return FeatureTreeClassifier(VALIDATION_FEATURES, max_depth=max_depth, random_state=random_state)


def hyperparameter_tree(features: Sequence[str] = HYPERPARAMETER_FEATURES, random_state: int | None = None,
                        max_depth: int | None = 4) -> FeatureTreeClassifier:
    """Baseline "Hyperparameter + DT": a depth-4 tree on log #data and/or log #params."""
    return FeatureTreeClassifier(tuple(features), max_depth=max_depth, random_state=random_state)


def landscape_tree(random_state: int | None = None, max_depth: int | None = 4) -> FeatureTreeClassifier:
    """A free depth-4 tree on the loss-landscape features (train error, connectivity peak, CKA, ln trace)."""
    return FeatureTreeClassifier(LANDSCAPE_FEATURES, max_depth=max_depth, random_state=random_state)


def export_text(estimator: MDTreeClassifier | FeatureTreeClassifier, decimals: int = 4) -> str:
    """Text rendering of a fitted MD tree or baseline tree (``sklearn.tree.export_text``-like)."""
    if not isinstance(estimator, (MDTreeClassifier, FeatureTreeClassifier)):
        raise DiagnosisError(f"export_text: expected an MD tree or FeatureTreeClassifier, got "
                             f"{type(estimator).__name__}")
    return estimator.export_text(decimals=decimals)
