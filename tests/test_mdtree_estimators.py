"""MD tree estimators: structure against the paper's rules, threshold fitting, sklearn API, bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.model_selection import cross_val_score

from htsr.data.reference import mdtree_population
from htsr.diagnosis import DiagnosisError
from htsr.diagnosis.mdtree import (
    FeatureTreeClassifier,
    MDTreeDataBatch,
    MDTreeTemperature,
    MDTreeTemperatureCKA,
    MDTreeWidthBatch,
    export_text,
    load_tree,
    validation_tree,
)


@pytest.fixture(scope="module")
def clean():
    return mdtree_population("normal")


@pytest.fixture(scope="module")
def noisy():
    return mdtree_population("noise")


# The paper's rules written out row by row (independent of the estimators' node structures).
def rule_temperature(e, m, h, t):
    if e <= t[0]:
        return "small"
    if m <= t[1]:
        return "large" if h <= t[2] else "small"
    return "large"


def rule_temperature_cka(e, m, c, t):
    if e <= t[0]:
        return "small"
    if m <= t[1]:
        return "small" if c <= t[2] else "large"
    return "large"


def rule_width(e, m, t):
    if e <= t[0]:
        return "width" if m <= t[1] else "batch"
    return "width" if m <= t[2] else "batch"


def rule_data(e, m, h, t):
    if e <= t[0]:
        if m <= t[1]:
            return "data" if h <= t[4] else "batch"
        return "data" if h <= t[2] else "batch"
    if m <= t[3]:
        return "batch"
    return "data" if h <= t[5] else "batch"


RULES = [
    (MDTreeTemperature, rule_temperature, ["train_error", "mode_connectivity_peak", "hessian_t"]),
    (MDTreeTemperatureCKA, rule_temperature_cka, ["train_error", "mode_connectivity_peak", "CKA"]),
    (MDTreeWidthBatch, rule_width, ["train_error", "mode_connectivity_peak"]),
    (MDTreeDataBatch, rule_data, ["train_error", "mode_connectivity_peak", "hessian_t"]),
]


@pytest.mark.parametrize("cls,rule,cols", RULES, ids=lambda x: getattr(x, "__name__", ""))
def test_structure_matches_paper_rules(clean, cls, rule, cols):
    rng = np.random.default_rng(0)
    for _ in range(5):
        tau = [rng.uniform(lo, hi) for lo, hi in (t.bounds for t in cls.spec.thresholds)]
        est = cls.from_thresholds(tau)
        expect = [rule(*row, tau) for row in clean[cols].to_numpy()]
        assert list(est.predict(clean)) == expect


def _synthetic(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Configurations labelled by the Q1 tree at known thresholds, with a margin around each threshold."""
    rng = np.random.default_rng(seed)
    e = np.where(rng.random(n) < 0.3, rng.uniform(0.0, 0.25, n), rng.uniform(0.55, 40.0, n))
    m = np.where(rng.random(n) < 0.5, rng.uniform(-30.0, -14.0, n), rng.uniform(-6.0, 0.0, n))
    h = np.where(rng.random(n) < 0.5, rng.uniform(4.0, 6.0, n), rng.uniform(6.6, 9.0, n))
    X = pd.DataFrame({"train_error": e, "mode_connectivity_peak": m, "hessian_t": h, "unused": rng.random(n)})
    y = np.array([rule_temperature(*r, (0.4, -10.0, 6.3)) for r in X.to_numpy()[:, :3]], dtype=object)
    return X, y


def test_fit_recovers_separating_thresholds():
    X, y = _synthetic(400, 0)
    est = MDTreeTemperature().fit(X, y)
    assert est.train_accuracy_ == 1.0
    assert 0.25 <= est.thresholds_[0] < 0.55
    assert -14.0 <= est.thresholds_[1] < -6.0
    assert 6.0 <= est.thresholds_[2] < 6.6
    Xt, yt = _synthetic(300, 1)
    assert est.score(Xt, yt) == 1.0
    assert len(est.n_evaluations_) == 3 and all(n > 0 for n in est.n_evaluations_)


def test_sklearn_api_and_array_input():
    X, y = _synthetic(200, 2)
    est = MDTreeTemperature(xatol=1e-4)
    assert est.get_params() == {"features": None, "init_thresholds": None, "bounds": None, "xatol": 1e-4,
                                "maxiter": 500}
    c = clone(est).set_params(maxiter=100)
    assert c.maxiter == 100 and not hasattr(c, "thresholds_")
    est.fit(X, y)
    A = X[["train_error", "mode_connectivity_peak", "hessian_t"]].to_numpy()
    assert np.array_equal(MDTreeTemperature(xatol=1e-4).fit(A, y).thresholds_, est.thresholds_)
    assert list(est.classes_) == ["large", "small"]
    assert est.threshold_names_ == ("error", "connectivity", "sharpness")
    assert set(est.named_thresholds_) == {"error", "connectivity", "sharpness"}
    scores = cross_val_score(MDTreeTemperature(), X, y, cv=3)
    assert scores.shape == (3,) and np.all(scores > 0.9)
    # renamed columns through ``features``
    R = X.rename(columns={"train_error": "err"})
    est2 = MDTreeTemperature(features=["err", "mode_connectivity_peak", "hessian_t"]).fit(R, y)
    assert np.array_equal(est2.thresholds_, MDTreeTemperature().fit(X, y).thresholds_)


def test_custom_bounds_clip_default_init():
    X, y = _synthetic(200, 5)
    est = MDTreeTemperature(bounds=[(0, 1), (-30, 0), (8, 9)]).fit(X, y)
    assert 8 <= est.thresholds_[2] <= 9 and est.train_accuracy_ < 1.0
    back = load_tree(est.to_dict())
    assert np.array_equal(back.predict(X), est.predict(X))


def test_export_text_and_json_roundtrip(tmp_path):
    X, y = _synthetic(200, 3)
    est = MDTreeTemperature().fit(X, y)
    text = export_text(est)
    assert text.splitlines()[0].startswith("|--- train_error <= ")
    assert text.count("class:") == 4 and "hessian_t <= " in text
    counted = est.export_text(X=X)
    assert sum(int(s.split("(")[1].split()[0]) for s in counted.splitlines() if "samples" in s) == len(X)
    p = tmp_path / "m.json"
    p.write_text(json.dumps(est.to_dict()))
    back = load_tree(json.loads(p.read_text()))
    assert type(back) is MDTreeTemperature
    assert np.array_equal(back.thresholds_, est.thresholds_)
    assert np.array_equal(back.predict(X), est.predict(X))
    assert np.array_equal(np.bincount(est.apply(X), minlength=4), np.bincount(back.apply(X), minlength=4))


def test_bad_input_errors():
    X, y = _synthetic(100, 4)
    with pytest.raises(DiagnosisError, match=r"missing feature column\(s\) \['hessian_t'\]"):
        MDTreeTemperature().fit(X.drop(columns="hessian_t"), y)
    Xn = X.copy()
    Xn.loc[7, "mode_connectivity_peak"] = np.nan
    with pytest.raises(DiagnosisError, match=r"'mode_connectivity_peak' has 1 NaN.*rows \[7\]"):
        MDTreeTemperature().fit(Xn, y)
    with pytest.raises(DiagnosisError, match=r"one class \('small'"):
        MDTreeTemperature().fit(X, np.full(len(X), "small"))
    with pytest.raises(DiagnosisError, match=r"unknown label\(s\) \['optimal'\].*drop_optimal"):
        MDTreeTemperature().fit(X, np.where(np.arange(len(X)) == 0, "optimal", y))
    with pytest.raises(DiagnosisError, match=r"threshold 'sharpness' \(on 'hessian_t'\) = 12.0 is outside its bounds "
                                             r"\[4.0, 9.0\]"):
        MDTreeTemperature(init_thresholds=[0.5, -10, 12.0]).fit(X, y)
    with pytest.raises(DiagnosisError, match="outside its bounds"):
        MDTreeWidthBatch.from_thresholds([0.5, 3.0, -10])
    with pytest.raises(DiagnosisError, match="low < high"):
        MDTreeTemperature(bounds=[(0, 1), (0, -30), (4, 9)]).fit(X, y)
    with pytest.raises(DiagnosisError, match="3 columns"):
        MDTreeTemperature().fit(np.zeros((5, 2)), y[:5])
    with pytest.raises(DiagnosisError, match="100 labels"):
        MDTreeTemperature().fit(X, y[:50])
    est = MDTreeTemperature().fit(X, y)
    with pytest.raises(DiagnosisError, match="'train_error' has 1 NaN"):
        est.predict(X.assign(train_error=np.where(np.arange(len(X)) == 3, np.nan, X["train_error"])))
    with pytest.raises(DiagnosisError, match="unknown label"):
        est.score(X, np.where(np.arange(len(X)) == 0, "width", y))
    with pytest.raises(DiagnosisError, match="schema"):
        load_tree({"estimator": "MDTreeTemperature"})


def test_baselines(clean, noisy):
    tr = clean[clean["bs_failure"] != "optimal"]
    te = noisy[noisy["bs_failure"] != "optimal"]
    dt = validation_tree(random_state=0).fit(tr, tr["bs_failure"])
    assert dt.tree_.get_depth() <= 4
    acc = dt.score(te, te["bs_failure"])
    assert 0.5 < acc < 1.0
    assert "train_error" in dt.export_text() or "test_error" in dt.export_text()
    with pytest.raises(DiagnosisError, match=r"missing feature column\(s\) \['test_loss'\]"):
        validation_tree().fit(tr.drop(columns="test_loss"), tr["bs_failure"])
    with pytest.raises(DiagnosisError, match="'optimal'"):
        FeatureTreeClassifier(["train_error"]).fit(clean, clean["bs_failure"])


def test_real_population_fit_is_deterministic(clean, noisy):
    tr = clean[clean["bs_failure"] != "optimal"]
    te = noisy[noisy["bs_failure"] != "optimal"]
    a = MDTreeTemperature().fit(tr, tr["bs_failure"])
    b = MDTreeTemperature().fit(tr.sample(frac=1.0, random_state=1), tr["bs_failure"].sample(frac=1.0, random_state=1))
    assert np.array_equal(a.thresholds_, b.thresholds_)
    assert a.score(te, te["bs_failure"]) > 0.85
