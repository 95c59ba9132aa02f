"""Linear centered kernel alignment (CKA): biased, debiased and minibatch, between arrays or between models.

Pure core (tensors in, numbers out):

* :func:`linear_cka` -- full-batch linear CKA of two feature matrices ``X`` (n x p) and ``Y`` (n x q).
  ``debiased=False`` is Kornblith et al. (2019): ``||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)`` on
  column-centred features. ``debiased=True`` replaces every HSIC by the unbiased estimator of Song et al.
  (2012) (Kornblith's ``feature_space_linear_cka(..., debiased=True)``).
* :func:`hsic1` -- the unbiased HSIC of two Gram matrices, the O(n^2) form used per minibatch.
* :class:`MinibatchCKA` -- the estimator of Nguyen, Raghu & Kornblith (2021): for each batch of n > 3
  samples add ``HSIC1(K_b, L_b)``, ``HSIC1(K_b, K_b)`` and ``HSIC1(L_b, L_b)``; the result is
  ``sum HSIC1(K,L) / sqrt(sum HSIC1(K,K) * sum HSIC1(L,L))``. Memory is O(batch^2) per layer pair, so it
  runs over any number of batches and any layer width; it converges to the population CKA as batches are added.

Adapter: :func:`compare_models` runs the same batches through two models (or one model twice) and
returns a layer x layer table; layer outputs are caught with forward hooks that are removed afterwards,
also when an error is raised.

All arithmetic is in float64. CKA of a constant representation (an all-zero head, a dead layer) is undefined and
comes back as NaN; :func:`compare_models` says why in ``attrs["reasons"]`` (``{layer_a: {layer_b: reason}}``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from htsr.errors import ConfigError
from htsr.landscape.objective import forward_batch, model_output_tensor
from htsr.nn import eval_mode
from htsr.progress import progress_bar, show_progress

ESTIMATORS = ("biased", "debiased", "minibatch")
OUTPUT = None  # layer spec meaning "the model's own output"
OUTPUT_LABEL = "<output>"


# --------------------------------------------------------------------------------------------- pure core
def _as_features(x: Any, name: str) -> torch.Tensor:
    """``x`` as an (n, features) float64 tensor; any trailing dimensions are flattened."""
    if isinstance(x, np.ndarray):
        t = torch.from_numpy(np.asarray(x))
    elif isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        try:
            t = torch.as_tensor(np.asarray(x, dtype=np.float64))
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be an array or tensor of features, got {type(x).__name__}") from None
    if t.dim() == 0:
        raise ConfigError(f"{name} must have a sample dimension, got a scalar")
    if t.dim() == 1:
        t = t.reshape(-1, 1)
    t = t.reshape(t.shape[0], -1).to(torch.float64)
    if not torch.isfinite(t).all():
        raise ConfigError(f"{name} contains NaN or Inf")
    return t


def _check_pair(x: torch.Tensor, y: torch.Tensor, minimum: int) -> int:
    n = x.shape[0]
    if y.shape[0] != n:
        raise ConfigError(
            f"X and Y must hold the same samples (rows): X has {n} rows, Y has {y.shape[0]}"
        )
    if n < minimum:
        raise ConfigError(f"this CKA estimator needs at least {minimum} samples, got {n}")
    return n


def _ratio(num: float, den_a: float, den_b: float) -> float:
    den = den_a * den_b
    if not (den > 0.0) or not math.isfinite(den):
        return float("nan")  # constant representation (or negative unbiased HSIC): undefined
    return float(num / math.sqrt(den))


def _debias(xty: torch.Tensor, sx: torch.Tensor, sy: torch.Tensor, nx: torch.Tensor, ny: torch.Tensor, n: int):
    """Kornblith's ``_debiased_dot_product_similarity_helper`` (centred features; result = n(n-3) HSIC1)."""
    return xty - n / (n - 2.0) * torch.dot(sx, sy) + nx * ny / ((n - 1) * (n - 2))


def linear_cka(x: Any, y: Any, *, debiased: bool = False, method: str = "auto") -> float:
    """Linear CKA between feature matrices ``x`` (n x p) and ``y`` (n x q) over the same n samples.

    ``debiased=True`` uses the unbiased HSIC estimator (needs n >= 4). ``method`` picks the computation:
    ``"features"`` (p x q cross-covariances, O(n(p+q)^2)), ``"gram"`` (n x n Gram matrices, O(n^2 (p+q)))
    or ``"auto"`` (the cheaper one). Both give the same number up to rounding.
    """
    X, Y = _as_features(x, "X"), _as_features(y, "Y")
    n = _check_pair(X, Y, 4 if debiased else 2)
    if method not in ("auto", "features", "gram"):
        raise ConfigError(f"method must be 'auto', 'features' or 'gram', got {method!r}")
    p, q = X.shape[1], Y.shape[1]
    if method == "auto":
        method = "gram" if n * (p + q) < (p + q) ** 2 else "features"
    X = X - X.mean(0, keepdim=True)
    Y = Y - Y.mean(0, keepdim=True)
    if method == "gram":
        K, L = X @ X.T, Y @ Y.T
        if debiased:
            return _ratio(float(hsic1(K, L)), float(hsic1(K, K)), float(hsic1(L, L)))
        return _ratio(float((K * L).sum()), float((K * K).sum()), float((L * L).sum()))
    xty = torch.linalg.matrix_norm(Y.T @ X) ** 2
    xtx = torch.linalg.matrix_norm(X.T @ X) ** 2
    yty = torch.linalg.matrix_norm(Y.T @ Y) ** 2
    if debiased:
        sx, sy = (X * X).sum(1), (Y * Y).sum(1)
        nx, ny = sx.sum(), sy.sum()
        xty = _debias(xty, sx, sy, nx, ny, n)
        xtx = _debias(xtx, sx, sx, nx, nx, n)
        yty = _debias(yty, sy, sy, ny, ny, n)
    return _ratio(float(xty), float(xtx), float(yty))


def hsic1(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:  # noqa: E741 (the paper's name)
    """Unbiased HSIC of Song et al. (2012) for Gram matrices ``k``, ``l`` of shape (..., n, n), n >= 4.

    ``[tr(K~L~) + (1'K~1)(1'L~1)/((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3))`` with K~, L~ the Gram
    matrices with zeroed diagonals. Leading dimensions are batch dimensions.
    """
    n = k.shape[-1]
    if k.shape[-2:] != (n, n) or l.shape[-2:] != (n, n):
        raise ConfigError(f"Gram matrices must be square and of one size, got {tuple(k.shape)} and {tuple(l.shape)}")
    if n < 4:
        raise ConfigError(f"unbiased HSIC needs at least 4 samples per batch, got {n}")
    eye = torch.eye(n, dtype=torch.bool, device=k.device)
    kt = k.masked_fill(eye, 0.0)
    lt = l.masked_fill(eye, 0.0)
    trace = (kt * lt).sum((-1, -2))  # tr(K~ L~) for symmetric matrices
    sum_k, sum_l = kt.sum((-1, -2)), lt.sum((-1, -2))
    cross = (kt.sum(-1) * lt.sum(-1)).sum(-1)  # 1' K~ L~ 1 (symmetric)
    return (trace + sum_k * sum_l / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * cross) / (n * (n - 3))


class MinibatchCKA:
    """Minibatch CKA (Nguyen, Raghu & Kornblith 2021) between ``n_a`` representations and ``n_b`` others.

    Call :meth:`update` once per batch with the features of every representation on that batch (all
    with the same number of rows, >= 4); :meth:`compute` gives the ``n_a x n_b`` matrix. Learned state:
    ``hsic_ab_`` (n_a x n_b), ``hsic_aa_`` (n_a), ``hsic_bb_`` (n_b), ``n_batches_``, ``n_samples_``.
    """

    def __init__(self, n_a: int = 1, n_b: int = 1) -> None:
        if int(n_a) < 1 or int(n_b) < 1:
            raise ConfigError(f"n_a and n_b must be >= 1, got {n_a}, {n_b}")
        self.n_a, self.n_b = int(n_a), int(n_b)
        self.hsic_ab_ = torch.zeros(self.n_a, self.n_b, dtype=torch.float64)
        self.hsic_aa_ = torch.zeros(self.n_a, dtype=torch.float64)
        self.hsic_bb_ = torch.zeros(self.n_b, dtype=torch.float64)
        self.n_batches_ = 0
        self.n_samples_ = 0

    @staticmethod
    def _grams(feats: Sequence[Any], side: str, want: int) -> torch.Tensor:
        if len(feats) != want:
            raise ConfigError(f"expected {want} feature matrices for side {side}, got {len(feats)}")
        mats = [_as_features(f, f"features {side}[{i}]") for i, f in enumerate(feats)]
        n = mats[0].shape[0]
        for i, m in enumerate(mats):
            if m.shape[0] != n:
                raise ConfigError(
                    f"all representations must hold the same samples: {side}[0] has {n} rows, {side}[{i}] has "
                    f"{m.shape[0]}"
                )
        return torch.stack([m @ m.T for m in mats])

    def update(self, feats_a: Sequence[Any], feats_b: Sequence[Any]) -> MinibatchCKA:
        """Add one batch: ``feats_a[i]`` is (n x p_i), ``feats_b[j]`` is (n x q_j), the same n >= 4 samples."""
        ka = self._grams(feats_a, "a", self.n_a)
        kb = self._grams(feats_b, "b", self.n_b)
        n = ka.shape[-1]
        if kb.shape[-1] != n:
            raise ConfigError(f"side a has {n} samples in this batch, side b has {kb.shape[-1]}; they must match")
        if n < 4:
            raise ConfigError(f"minibatch CKA needs batches of at least 4 samples, got {n}")
        kb = kb.to(ka.device)  # the two sides may come from models on different devices
        if self.hsic_ab_.device != ka.device:  # accumulate where the features are (no host sync per batch)
            self.hsic_ab_, self.hsic_aa_, self.hsic_bb_ = (t.to(ka.device) for t in
                                                           (self.hsic_ab_, self.hsic_aa_, self.hsic_bb_))
        self.hsic_ab_ += hsic1(ka[:, None], kb[None, :])
        self.hsic_aa_ += hsic1(ka, ka)
        self.hsic_bb_ += hsic1(kb, kb)
        self.n_batches_ += 1
        self.n_samples_ += n
        return self

    def compute(self) -> np.ndarray:
        """The ``n_a x n_b`` CKA matrix (NaN where a denominator is not positive)."""
        if self.n_batches_ == 0:
            raise ConfigError("MinibatchCKA.compute() called before any update()")
        out = np.full((self.n_a, self.n_b), np.nan)
        for i in range(self.n_a):
            for j in range(self.n_b):
                out[i, j] = _ratio(float(self.hsic_ab_[i, j]), float(self.hsic_aa_[i]), float(self.hsic_bb_[j]))
        return out


# --------------------------------------------------------------------------------------------- model adapter
#: Running a model on a batch and picking its output tensor: the landscape toolkit's one implementation.
default_forward = forward_batch


def _available(model: nn.Module, limit: int = 60) -> str:
    names = [n for n, _ in model.named_modules() if n]
    shown = ", ".join(names[:limit])
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return f"{shown}{more}" if names else "(the model has no sub-modules)"


def _resolve(model: nn.Module, layers: Sequence[str | None], which: str) -> list[nn.Module | None]:
    modules = dict(model.named_modules())
    out: list[nn.Module | None] = []
    for name in layers:
        if name is None:
            out.append(None)
            continue
        if not isinstance(name, str):
            raise ConfigError(f"layer names for {which} must be strings (or None for the output), got {name!r}")
        if name not in modules or name == "":
            raise ConfigError(
                f"{which} has no module named {name!r}; available modules: {_available(model)}"
            )
        out.append(modules[name])
    return out


class _Catcher:
    """Forward hooks that keep the output of each watched module for one forward pass."""

    def __init__(self) -> None:
        self.handles: list[Any] = []
        self.caught: dict[int, list[torch.Tensor]] = {}

    def watch(self, module: nn.Module) -> None:
        key = id(module)
        if key in self.caught:
            return
        self.caught[key] = []

        def hook(_mod, _inp, out, _key=key):
            self.caught[_key].append(model_output_tensor(out).detach())

        self.handles.append(module.register_forward_hook(hook))

    def reset(self) -> None:
        for v in self.caught.values():
            v.clear()

    def get(self, module: nn.Module, name: str) -> torch.Tensor:
        got = self.caught[id(module)]
        if len(got) != 1:
            raise ConfigError(
                f"module {name!r} ran {len(got)} times in one forward pass; CKA needs exactly one output per "
                "forward (pick a module that is called once, or pass forward_fn/feature_fn)"
            )
        return got[0]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


def _as_layer_list(layers: str | Sequence[str | None] | None) -> list[str | None]:
    if layers is None:
        return [OUTPUT]
    if isinstance(layers, str):
        return [layers]
    layers = list(layers)
    if not layers:
        raise ConfigError("layer list is empty; pass None for the model output or a list of module names")
    return layers


def compare_models(
    model_a: nn.Module,
    model_b: nn.Module,
    data: Iterable[Any],
    *,
    layers_a: str | Sequence[str | None] | None = None,
    layers_b: str | Sequence[str | None] | None = None,
    estimator: str = "minibatch",
    max_batches: int | None = None,
    forward_fn: Callable[[nn.Module, Any], Any] | None = None,
    feature_fn: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
    progress: bool | None = None,
):
    """Linear CKA between named layers (or the outputs) of two models on the same data.

    ``layers_a``/``layers_b``: module names as in ``model.named_modules()``; ``None`` (in a list, or as
    the whole argument) means the model's output (logits / last hidden state). When ``layers_b`` is not
    given it is ``layers_a`` (same architecture expected; a name missing from ``model_b`` is an error).
    ``estimator``: ``"minibatch"`` (Nguyen et al., default; batches must have >= 4 samples),
    ``"biased"`` or ``"debiased"`` (full batch: all features are kept in memory, then
    :func:`linear_cka`). Features are flattened per sample; ``feature_fn(name, tensor) -> (n, d)``
    can transform them first (e.g. ``softmax`` of the logits, mean over tokens). Both models run in
    eval mode under ``torch.no_grad()``, and their modes are restored afterwards.

    Returns a pandas DataFrame, rows = ``layers_a``, columns = ``layers_b`` (the output is labelled
    ``"<output>"``), with ``attrs`` = estimator, n_samples, n_batches and ``reasons`` (for every NaN entry, why it
    is undefined: ``{layer_a: {layer_b: reason}}``).
    """
    import pandas as pd

    if estimator not in ESTIMATORS:
        raise ConfigError(f"estimator must be one of {', '.join(ESTIMATORS)}, got {estimator!r}")
    if max_batches is not None and int(max_batches) < 1:
        raise ConfigError(f"max_batches must be >= 1, got {max_batches}")
    la = _as_layer_list(layers_a)
    lb = la if layers_b is None else _as_layer_list(layers_b)
    mods_a = _resolve(model_a, la, "model_a")
    mods_b = _resolve(model_b, lb, "model_b" if layers_b is not None else "model_b (layers_a reused)")
    forward = forward_fn or default_forward
    same = model_a is model_b
    label_a = [OUTPUT_LABEL if n is None else n for n in la]
    label_b = [OUTPUT_LABEL if n is None else n for n in lb]

    catcher = _Catcher()
    acc = MinibatchCKA(len(la), len(lb)) if estimator == "minibatch" else None
    keep_a: list[list[torch.Tensor]] = [[] for _ in la]
    keep_b: list[list[torch.Tensor]] = [[] for _ in lb]
    n_batches = n_samples = 0
    try:
        for m in mods_a + mods_b:
            if m is not None:
                catcher.watch(m)
        with eval_mode(model_a, model_b), torch.no_grad():
            for batch in _progress(data, progress, max_batches):
                catcher.reset()
                out_a = forward(model_a, batch)
                fa = [_features(catcher, m, n, out_a, feature_fn) for m, n in zip(mods_a, label_a, strict=True)]
                if not same:
                    catcher.reset()
                    out_b = forward(model_b, batch)
                else:
                    out_b = out_a
                fb = [_features(catcher, m, n, out_b, feature_fn) for m, n in zip(mods_b, label_b, strict=True)]
                nb = fa[0].shape[0]
                for name, f in list(zip(label_a, fa, strict=True)) + list(zip(label_b, fb, strict=True)):
                    if f.shape[0] != nb:
                        raise ConfigError(
                            f"layer {name!r} gave {f.shape[0]} rows for a batch where {label_a[0]!r} gave {nb}; "
                            "every compared representation needs one row per sample (use feature_fn)"
                        )
                if acc is not None:
                    acc.update(fa, fb)
                else:
                    for i, f in enumerate(fa):
                        keep_a[i].append(f.cpu())
                    for j, f in enumerate(fb):
                        keep_b[j].append(f.cpu())
                n_batches += 1
                n_samples += nb
                if max_batches is not None and n_batches >= int(max_batches):
                    break
    finally:
        catcher.remove()
    if n_batches == 0:
        raise ConfigError("data yielded no batches")
    if acc is not None:
        mat = acc.compute()
        self_a, self_b = acc.hsic_aa_.cpu().numpy(), acc.hsic_bb_.cpu().numpy()
        what = "its summed unbiased HSIC with itself (minibatch estimator) is not positive"
    else:
        xa = [torch.cat(v) for v in keep_a]
        xb = [torch.cat(v) for v in keep_b]
        mat = np.array([[linear_cka(a, b, debiased=estimator == "debiased") for b in xb] for a in xa])
        if estimator == "debiased":
            self_a = np.array([linear_cka_self(x, debiased=True) for x in xa])
            self_b = np.array([linear_cka_self(x, debiased=True) for x in xb])
            what = "its unbiased HSIC with itself is not positive"
        else:
            self_a = np.array([linear_cka_self(x) for x in xa])
            self_b = np.array([linear_cka_self(x) for x in xb])
            what = "it is the same for every sample (zero variance after centring)"
    df = pd.DataFrame(mat, index=pd.Index(label_a, name="layer_a"), columns=pd.Index(label_b, name="layer_b"))
    df.attrs.update(estimator=estimator, n_samples=n_samples, n_batches=n_batches, kernel="linear",
                    reasons=_reasons(mat, self_a, self_b, label_a, label_b, what))
    return df


def linear_cka_self(x: torch.Tensor, debiased: bool = False) -> float:
    """The self-similarity a CKA value divides by: ``||X^T X||_F^2`` of the centred features (0: a constant
    representation), or its unbiased-HSIC form."""
    X = _as_features(x, "X")
    X = X - X.mean(0, keepdim=True)
    if debiased:
        if X.shape[0] < 4:
            return float("nan")
        sx = (X * X).sum(1)
        return float(_debias(torch.linalg.matrix_norm(X.T @ X) ** 2, sx, sx, sx.sum(), sx.sum(), X.shape[0]))
    return float(torch.linalg.matrix_norm(X.T @ X) ** 2)


def _reasons(mat: np.ndarray, self_a: np.ndarray, self_b: np.ndarray, label_a: list[str], label_b: list[str],
             what: str) -> dict[str, dict[str, str]]:
    """Why each NaN entry is undefined: ``{layer_a: {layer_b: reason}}`` for the NaN entries only."""
    out: dict[str, dict[str, str]] = {}
    for i, a in enumerate(label_a):
        for j, b in enumerate(label_b):
            if not np.isnan(mat[i, j]):
                continue
            bad = [f"model_{side}'s {name!r}" for side, name, v in (("a", a, self_a[i]), ("b", b, self_b[j]))
                   if not v > 0]
            out.setdefault(a, {})[b] = (f"CKA is undefined: {' and '.join(bad)}: {what}" if bad else
                                        "CKA is undefined: a similarity is not finite")
    return out


def _features(catcher: _Catcher, module: nn.Module | None, name: str, out: Any, feature_fn) -> torch.Tensor:
    t = model_output_tensor(out) if module is None else catcher.get(module, name)
    if feature_fn is not None:
        t = feature_fn(name, t)
        if not isinstance(t, torch.Tensor):
            raise ConfigError(f"feature_fn must return a tensor, got {type(t).__name__} for layer {name!r}")
    if t.dim() == 0:
        raise ConfigError(f"layer {name!r} gave a scalar; CKA needs one feature row per sample")
    return t.reshape(t.shape[0], -1).to(torch.float64)


def _progress(data: Iterable[Any], progress: bool | None, total: int | None):
    if not show_progress(progress):
        return data
    try:
        n = len(data)  # type: ignore[arg-type]
        total = n if total is None else min(n, total)
    except TypeError:
        pass
    return progress_bar(True, data, total=total, desc="CKA", leave=False)


def output_cka(model_a: nn.Module, model_b: nn.Module, data: Iterable[Any], **kwargs: Any) -> float:
    """CKA between the outputs of two models (the three-regime / SharpBalance use); see :func:`compare_models`."""
    return float(compare_models(model_a, model_b, data, **kwargs).iloc[0, 0])
