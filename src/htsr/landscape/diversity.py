"""Ensemble diversity metrics, as SharpBalance measures them (``measure_diversity.py``,
``measure_diversity_variance.py``), on arrays of member outputs.

``outputs`` is always an (M, n, C) array (M members, n samples, C outputs; raw network outputs, i.e.
logits) or a sequence of M (n, C) arrays; ``labels`` is (n,) integer classes.

* :func:`disagreement` / :func:`disagreement_matrix`: ``Dis(i, j) = 1 - mean_x 1[argmax f_i(x) = argmax f_j(x)]``.
* :func:`disagreement_error_ratio` (DER, Theisen et al.): ``mean_{i<j} Dis(i, j) / mean_i Err(f_i)``.
* :func:`prediction_variance`: ``M/(M-1) * mean_x [ (1/M) sum_i ||f_i(x)||^2 - ||(1/M) sum_i f_i(x)||^2 ]``
  on raw outputs (the unbiased across-member variance). The reference accumulates members one at a time
  and multiplies *every* running value by ``M/(M-1)`` instead of ``t/(t-1)``; only its last value (the one
  reported) equals this formula.
* :func:`kl_matrix` / :func:`mean_pairwise_kl`: ``KL(i, j) = mean_x KL(softmax(f_i(x)/T) || softmax(f_j(x)/T))``.
  The reference's ``--mode KL`` calls ``loss_fn_kd(preds_i, preds_j)`` and ``evaluate_ensemble_KD``, neither of
  which is defined anywhere in its repository, so that path crashes; the distillation loss it names is
  ``KLDivLoss(log_softmax(f_i/T), softmax(f_j/T)) * T^2`` = ``T^2 KL(p_j || p_i)``, i.e. this matrix transposed
  (times ``T^2``). Here the KL is exact (float64, log-softmax, no clipping) and not multiplied by ``T^2``.
* :func:`ensemble_metrics`: the ensemble is the mean of the members' softmax outputs; accuracy and NLL of
  the ensemble and of each member, plus the diversity numbers above, as one dict.
* :func:`collect_outputs`: run M models over a data loader and stack their outputs (the torch adapter).

All computations are in float64.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from htsr.errors import ConfigError


def _outputs(outputs: Any, min_members: int = 1) -> np.ndarray:
    if isinstance(outputs, (list, tuple)):
        mats = [_np(o) for o in outputs]
        if not mats:
            raise ConfigError("outputs is empty; expected M arrays of shape (n, C)")
        shapes = {m.shape for m in mats}
        if len(shapes) != 1:
            raise ConfigError(f"all members' outputs must have one shape (n, C), got {sorted(shapes)}")
        arr = np.stack(mats)
    else:
        arr = _np(outputs)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise ConfigError(f"outputs must be (M members, n samples, C outputs), got shape {arr.shape}")
    if arr.shape[0] < min_members:
        raise ConfigError(f"this metric needs at least {min_members} members, got {arr.shape[0]}")
    if arr.shape[1] == 0:
        raise ConfigError("outputs hold no samples")
    if not np.all(np.isfinite(arr)):
        raise ConfigError("outputs contain NaN or Inf")
    return arr


def _np(x: Any) -> np.ndarray:
    try:
        import torch

        if isinstance(x, torch.Tensor):
            return x.detach().cpu().to(torch.float64).numpy()
    except ImportError:  # pragma: no cover
        pass
    return np.asarray(x, dtype=np.float64)


def _labels(labels: Any, n: int) -> np.ndarray:
    y = np.asarray(_np(labels) if not isinstance(labels, np.ndarray) else labels).reshape(-1)
    if y.size != n:
        raise ConfigError(f"labels has {y.size} entries but the outputs hold {n} samples")
    if not np.all(np.isfinite(y.astype(np.float64))) or not np.all(y == np.round(y)) or np.any(y < 0):
        raise ConfigError("labels must be non-negative integer class indices")
    return y.astype(np.int64)


def predictions(outputs: Any) -> np.ndarray:
    """(M, n) predicted classes (argmax over the last axis)."""
    return _outputs(outputs).argmax(-1)


def disagreement(output_a: Any, output_b: Any) -> float:
    """Fraction of samples on which two models' predicted classes differ."""
    a, b = _np(output_a), _np(output_b)
    if a.shape != b.shape:
        raise ConfigError(f"the two outputs must have the same shape, got {a.shape} and {b.shape}")
    pa = predictions(a[None])[0]
    pb = predictions(b[None])[0]
    return float(np.mean(pa != pb))


def disagreement_matrix(outputs: Any) -> np.ndarray:
    """(M, M) matrix of pairwise disagreements (symmetric, zero diagonal)."""
    pred = predictions(outputs)
    return (pred[:, None, :] != pred[None, :, :]).mean(-1)


def errors(outputs: Any, labels: Any) -> np.ndarray:
    """(M,) classification error of each member."""
    arr = _outputs(outputs)
    y = _labels(labels, arr.shape[1])
    return (arr.argmax(-1) != y[None]).mean(-1)


def mean_pairwise_disagreement(outputs: Any) -> float:
    """``mean_{i<j} Dis(i, j)`` (needs M >= 2)."""
    arr = _outputs(outputs, 2)
    d = disagreement_matrix(arr)
    iu = np.triu_indices(arr.shape[0], 1)
    return float(d[iu].mean())


def disagreement_error_ratio(outputs: Any, labels: Any) -> float:
    """DER = ``mean_{i<j} Dis(i, j) / mean_i Err(f_i)``; NaN (not Inf) when every member is error-free."""
    arr = _outputs(outputs, 2)
    err = float(errors(arr, labels).mean())
    dis = mean_pairwise_disagreement(arr)
    return float(dis / err) if err > 0 else float("nan")


def prediction_variance(outputs: Any) -> float:
    """Unbiased across-member variance of the raw outputs, averaged over samples (needs M >= 2)."""
    arr = _outputs(outputs, 2)
    m = arr.shape[0]
    mean_sq = (arr**2).sum(-1).mean(0)  # (1/M) sum_i ||f_i(x)||^2
    sq_mean = (arr.mean(0) ** 2).sum(-1)  # ||(1/M) sum_i f_i(x)||^2
    return float(m / (m - 1) * np.mean(mean_sq - sq_mean))


def prediction_bias2(outputs: Any, labels: Any) -> float:
    """``mean_x ||(1/M) sum_i f_i(x) - onehot(y)||^2`` (the reference's MSE bias^2 beside the variance)."""
    arr = _outputs(outputs)
    y = _labels(labels, arr.shape[1])
    if y.max() >= arr.shape[2]:
        raise ConfigError(f"label {int(y.max())} is out of range for {arr.shape[2]} outputs")
    onehot = np.eye(arr.shape[2])[y]
    return float(((arr.mean(0) - onehot) ** 2).sum(-1).mean())


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def kl_matrix(outputs: Any, temperature: float = 1.0) -> np.ndarray:
    """(M, M) matrix ``K[i, j] = mean_x KL(p_i(x) || p_j(x))`` with ``p_i = softmax(f_i / temperature)``
    (zero diagonal, not symmetric)."""
    arr = _outputs(outputs)
    t = float(temperature)
    if not (t > 0) or not np.isfinite(t):
        raise ConfigError(f"temperature must be a finite number > 0, got {temperature!r}")
    logp = _log_softmax(arr / t)  # (M, n, C)
    p = np.exp(logp)
    # sum_c p_i (log p_i - log p_j), averaged over x
    self_term = (p * logp).sum(-1).mean(-1)  # (M,)
    cross = np.einsum("inc,jnc->ij", p, logp) / arr.shape[1]
    k = self_term[:, None] - cross
    np.fill_diagonal(k, 0.0)
    return np.maximum(k, 0.0)


def mean_pairwise_kl(outputs: Any, temperature: float = 1.0) -> float:
    """Mean of :func:`kl_matrix` over ordered pairs ``i != j`` (needs M >= 2)."""
    arr = _outputs(outputs, 2)
    k = kl_matrix(arr, temperature)
    m = arr.shape[0]
    return float(k[~np.eye(m, dtype=bool)].mean())


def ensemble_metrics(outputs: Any, labels: Any) -> dict[str, Any]:
    """Ensemble (mean softmax) and member accuracy/NLL plus disagreement, DER and prediction variance.

    Keys: ``ensemble_accuracy``, ``ensemble_nll``, ``member_accuracy`` (list), ``member_nll`` (list),
    ``mean_member_accuracy``, ``disagreement`` (mean over pairs), ``disagreement_matrix``,
    ``der``, ``prediction_variance``, ``kl`` (mean pairwise KL), ``n_members``, ``n_samples``.
    """
    arr = _outputs(outputs, 2)
    y = _labels(labels, arr.shape[1])
    if y.max() >= arr.shape[2]:
        raise ConfigError(f"label {int(y.max())} is out of range for {arr.shape[2]} classes")
    logp = _log_softmax(arr)  # (M, n, C)
    idx = np.arange(arr.shape[1])
    member_nll = -logp[:, idx, y].mean(-1)
    member_acc = (arr.argmax(-1) == y[None]).mean(-1)
    ens_p = np.exp(logp).mean(0)
    ens_nll = float(-np.log(np.clip(ens_p[idx, y], 1e-300, None)).mean())
    return {
        "ensemble_accuracy": float((ens_p.argmax(-1) == y).mean()),
        "ensemble_nll": ens_nll,
        "member_accuracy": member_acc.tolist(),
        "member_nll": member_nll.tolist(),
        "mean_member_accuracy": float(member_acc.mean()),
        "disagreement": mean_pairwise_disagreement(arr),
        "disagreement_matrix": disagreement_matrix(arr).tolist(),
        "der": disagreement_error_ratio(arr, y),
        "prediction_variance": prediction_variance(arr),
        "kl": mean_pairwise_kl(arr),
        "n_members": int(arr.shape[0]),
        "n_samples": int(arr.shape[1]),
    }


def collect_outputs(
    models: Sequence[Any],
    data: Iterable[Any],
    *,
    forward_fn: Callable[[Any, Any], Any] | None = None,
    with_labels: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Run every model (eval mode, no grad) over ``data`` and return ``(outputs (M, n, C), labels (n,))``.

    Batches are ``(x, y, ...)`` tuples (labels from ``y``) or dicts (labels from ``"labels"``); the
    model output tensor is taken as in :func:`htsr.landscape.objective.model_output_tensor`. Models' modes
    are restored afterwards.
    """
    import torch

    from htsr.landscape.objective import forward_batch, model_output_tensor
    from htsr.nn import eval_mode

    if not models:
        raise ConfigError("models is empty")
    forward = forward_fn or forward_batch
    outs: list[list[np.ndarray]] = [[] for _ in models]
    labs: list[np.ndarray] = []
    with eval_mode(*models), torch.no_grad():
        for batch in data:
            for i, m in enumerate(models):
                o = model_output_tensor(forward(m, batch))
                outs[i].append(o.detach().cpu().to(torch.float64).reshape(o.shape[0], -1).numpy())
            if with_labels:
                y = batch.get("labels") if isinstance(batch, dict) else (
                    batch[1] if isinstance(batch, (tuple, list)) and len(batch) > 1 else None)
                if y is None:
                    raise ConfigError("batches carry no labels; pass with_labels=False")
                labs.append(_np(y).reshape(-1))
    if not outs[0]:
        raise ConfigError("data yielded no batches")
    arr = np.stack([np.concatenate(o) for o in outs])
    return arr, (np.concatenate(labs).astype(np.int64) if with_labels else None)
