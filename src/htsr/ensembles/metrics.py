"""Calibration of members and ensembles, and the one report of an ensemble's outputs on one test set.

* :func:`nll` -- mean negative log-likelihood of the true class under probabilities ``p`` (n, C).
* :func:`expected_calibration_error` -- ECE (Guo et al. 2017): confidences ``max_c p(x)`` in ``n_bins`` equal-width
  bins ``(0, 1/B], (1/B, 2/B], ...`` (a confidence of exactly 0 joins the first bin);
  ``ECE = sum_b (|b| / n) |accuracy(b) - mean confidence(b)|``.
* :func:`outputs_report` -- for an (M, n, C) array of member logits on one test set: member and ensemble
  accuracy, NLL and ECE (the ensemble predicts the mean of the members' softmax outputs), and the diversity
  measures of :mod:`htsr.landscape.diversity` (disagreement, disagreement-error ratio, prediction variance,
  KL) and :func:`htsr.landscape.cka.linear_cka` between members' outputs.

All in float64 numpy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from htsr.errors import ConfigError


def _probs(p: Any) -> np.ndarray:
    arr = np.asarray(p, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ConfigError(f"probabilities must be an (n samples, C classes) array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ConfigError("probabilities must be finite and non-negative")
    return arr


def _labels(y: Any, n: int, c: int) -> np.ndarray:
    lab = np.asarray(y).reshape(-1)
    if lab.size != n:
        raise ConfigError(f"labels has {lab.size} entries but there are {n} samples")
    if lab.size and (lab.min() < 0 or lab.max() >= c or not np.all(lab == np.round(lab))):
        raise ConfigError(f"labels must be integer classes in 0..{c - 1}")
    return lab.astype(np.int64)


def softmax(logits: Any) -> np.ndarray:
    """Row-wise softmax in float64 (the last axis)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def nll(probs: Any, labels: Any) -> float:
    """``-mean_x log p(y_x | x)`` (a probability of 0 gives ``log(1e-300)``, not Inf)."""
    p = _probs(probs)
    y = _labels(labels, p.shape[0], p.shape[1])
    return float(-np.log(np.clip(p[np.arange(p.shape[0]), y], 1e-300, None)).mean())


def expected_calibration_error(probs: Any, labels: Any, n_bins: int = 15) -> float:
    """ECE with ``n_bins`` equal-width confidence bins (see the module docstring)."""
    if isinstance(n_bins, bool) or not isinstance(n_bins, int | np.integer) or n_bins < 1:
        raise ConfigError(f"n_bins must be an integer >= 1, got {n_bins!r}")
    p = _probs(probs)
    y = _labels(labels, p.shape[0], p.shape[1])
    conf = p.max(1)
    correct = (p.argmax(1) == y).astype(np.float64)
    # bin b holds confidences in (b/B, (b+1)/B]; ceil(conf * B) - 1, with conf = 0 in bin 0
    idx = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    n = conf.size
    ece = 0.0
    for b in range(n_bins):
        sel = idx == b
        cnt = int(sel.sum())
        if cnt:
            ece += cnt / n * abs(correct[sel].mean() - conf[sel].mean())
    return float(ece)


def cka_matrix(outputs: np.ndarray) -> np.ndarray:
    """(M, M) linear CKA (biased, Kornblith et al.) between members' output matrices (n, C)."""
    from htsr.landscape.cka import linear_cka

    m = outputs.shape[0]
    out = np.eye(m)
    for i in range(m):
        for j in range(i + 1, m):
            out[i, j] = out[j, i] = linear_cka(outputs[i], outputs[j])
    return out


def outputs_report(outputs: Any, labels: Any, *, n_bins: int = 15) -> dict[str, Any]:
    """Everything measured on one test set from the members' logits ``outputs`` (M, n, C) and ``labels`` (n,).

    Keys: ``ensemble_accuracy``, ``ensemble_nll``, ``ensemble_ece``, ``member_accuracy`` / ``member_nll`` /
    ``member_ece`` (lists), ``mean_member_accuracy``, ``mean_member_nll``, ``mean_member_ece``,
    ``disagreement``, ``disagreement_matrix``, ``der``, ``prediction_variance``, ``kl``, ``kl_matrix``,
    ``cka``, ``cka_matrix``, ``n_members``, ``n_samples``.
    """
    from htsr.landscape.diversity import ensemble_metrics, kl_matrix

    arr = np.asarray(outputs, dtype=np.float64)
    res = ensemble_metrics(arr, labels)  # validates shapes and labels, needs M >= 2
    y = np.asarray(labels).reshape(-1).astype(np.int64)
    probs = softmax(arr)
    ens = probs.mean(0)
    res["ensemble_ece"] = expected_calibration_error(ens, y, n_bins)
    res["member_ece"] = [expected_calibration_error(p, y, n_bins) for p in probs]
    res["mean_member_ece"] = float(np.mean(res["member_ece"]))
    res["mean_member_nll"] = float(np.mean(res["member_nll"]))
    km = kl_matrix(arr)
    res["kl_matrix"] = km.tolist()
    cm = cka_matrix(arr)
    res["cka_matrix"] = cm.tolist()
    off = ~np.eye(arr.shape[0], dtype=bool)
    res["cka"] = float(np.nanmean(cm[off])) if np.any(np.isfinite(cm[off])) else float("nan")
    return res


#: the scalar measures averaged over test sets and across seeds
SCALARS = ("ensemble_accuracy", "ensemble_nll", "ensemble_ece", "mean_member_accuracy", "mean_member_nll",
           "mean_member_ece", "disagreement", "der", "prediction_variance", "kl", "cka")


def average_reports(reports: list[dict[str, Any]]) -> dict[str, float]:
    """Mean of each scalar measure over several test sets (corruptions x severities); NaN-aware."""
    if not reports:
        raise ConfigError("no reports to average")
    out = {}
    for k in SCALARS:
        vals = np.array([r.get(k, np.nan) for r in reports], dtype=np.float64)
        out[k] = float(np.nanmean(vals)) if np.any(np.isfinite(vals)) else float("nan")
    return out
