"""Heavy tails without gradient noise: a two-layer student trained on a single-index teacher.

Reproduces the setup of Kothapalli, Pang, Deng, Liu, Yang, "Crafting heavy-tails in weight matrix
spectrum without gradient noise" (arXiv 2406.04657; v3 "From Spikes to Heavy Tails"), public code
``kvignesh1420/single-index-ht``:

* data ``x ~ N(0, I_d)``, teacher ``y = softplus(<beta*, x>) + eps``, ``||beta*|| = 1``, ``eps ~ N(0, 0.3^2)``;
  a training set (n), a probe set (n, for the feature measurements and the ridge refit) and a test set (n_test);
* student ``f(x) = a^T tanh(W x / sqrt(d)) / sqrt(h)``, no biases, ``W`` (h x d) and ``a`` (h) with N(0, 1)
  entries, ``a`` frozen; MSE (mean) loss; a few *full-batch* GD or Adam steps, so there is no gradient noise;
* after every step: the ESD of ``W^T W`` (engine eigenvalues), the Hill exponent with xmin at the median and the
  KS-scan MLE exponent (both from :func:`htsr.spectra.powerlaw.fit_power_law`), the alignment
  ``|<v_1(W), beta*>|`` of the top right singular vector with the teacher, the kernel-target alignment of the
  probe features, and the train/test loss of a ridge refit of the last layer on the probe features.

Reference-code bug fixed: the reference student divides the hidden pre-activation by sqrt(d) *in place* inside
``forward``, and its forward hook stores that same tensor, so the stored "affine features" are already scaled;
the evaluation then divides by sqrt(d) a second time, i.e. the public code measures KTA and the ridge losses on
``tanh(X W^T / d)`` instead of ``tanh(X W^T / sqrt(d))``. Here features are ``tanh(X W^T / sqrt(d)) / sqrt(h)``
(the network's own hidden layer); ``feature_scaling="reference"`` reproduces the quirk for comparison only.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from htsr.config import Config, check_choice, check_positive_int, check_range
from htsr.errors import ConfigError
from htsr.spectra.eigen import NonFiniteError, eigenvalues
from htsr.spectra.powerlaw import fit_power_law
from htsr.training import Callback, TrainingError, TrainState, train

log = logging.getLogger(__name__)

OPTIMIZERS = ("gd", "adam")
FEATURE_SCALINGS = ("intended", "reference")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: A spike is an eigenvalue this many times above the initial Marchenko-Pastur edge (sqrt(h) + sqrt(d))^2.
SPIKE_FACTOR = 1.5


@dataclass(frozen=True)
class SingleIndexConfig(Config):
    """Every parameter of one run; defaults are the paper's (``configs/main.yml``: Adam, lr 1, 10 steps).

    A :class:`~htsr.config.Config`: typed fields (``--set n=abc`` is an error), ``replace`` / ``to_dict``,
    unknown keys rejected with the valid ones listed.
    ``measure_every``: measure after every k-th step (the last step is always measured; step 0 is the init).
    ``feature_scaling``: ``"intended"`` (tanh(XW^T/sqrt d), the network's features) or ``"reference"`` (the public
    code's double scaling, tanh(XW^T/d), for comparison only). ``lr_gamma``: StepLR(step_size=1, gamma) per step
    (the paper's schedule ablation), None for a constant rate. ``seed`` drives the teacher, the three data sets and
    the student's initialisation (independent streams), so runs with the same seed differ only in the optimiser.
    """

    n: int = 2000
    n_test: int = 200
    d: int = 1000
    h: int = 1500
    label_noise_std: float = 0.3
    optimizer: str = "adam"
    lr: float = 1.0
    steps: int = 10
    fix_last_layer: bool = True
    momentum: float = 0.0
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    lr_gamma: float | None = None
    ridge_lambda: float = 0.01
    measure_every: int = 1
    feature_scaling: str = "intended"
    seed: int = 0
    dtype: str = "float32"

    def validate(self) -> None:
        for name in ("n", "n_test", "d", "h", "steps", "measure_every"):
            check_positive_int(name, getattr(self, name))
        if self.n < 2 or self.n_test < 2:
            raise ConfigError(f"n and n_test must be >= 2 (got n={self.n}, n_test={self.n_test})")
        if min(self.d, self.h) < 4:
            raise ConfigError(f"d and h must be >= 4 for a spectrum to fit (got d={self.d}, h={self.h})")
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_range("lr", self.lr, 0.0, lo_open=True)
        check_range("label_noise_std", self.label_noise_std, 0.0)
        check_range("ridge_lambda", self.ridge_lambda, 0.0, lo_open=True)
        check_range("momentum", self.momentum, 0.0)
        check_range("weight_decay", self.weight_decay, 0.0)
        for b in self.adam_betas:
            check_range("adam_betas", b, 0.0, 1.0, hi_open=True)
        check_range("adam_eps", self.adam_eps, 0.0, lo_open=True)
        if self.lr_gamma is not None:
            check_range("lr_gamma", self.lr_gamma, 0.0, 1.0, lo_open=True)
        check_choice("feature_scaling", self.feature_scaling, FEATURE_SCALINGS)
        check_choice("dtype", self.dtype, DTYPES)
        check_positive_int("seed", self.seed, minimum=0)

    def as_dict(self) -> dict[str, Any]:
        """The fields as a JSON-able dict (:meth:`to_dict`)."""
        return self.to_dict()


# ----------------------------------------------------------------------------- data and model


@dataclass
class SingleIndexData:
    """Teacher direction, the three data sets, and the student's initial weights (all seeded)."""

    beta: torch.Tensor
    X: torch.Tensor
    y: torch.Tensor
    X_probe: torch.Tensor
    y_probe: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor
    W0: torch.Tensor
    a0: torch.Tensor


def _streams(seed: int, k: int) -> list[torch.Generator]:
    """``k`` independent torch generators from one integer seed (numpy SeedSequence spawning)."""
    children = np.random.SeedSequence(seed).spawn(k)
    states = [int(c.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)) for c in children]
    return [torch.Generator().manual_seed(s) for s in states]


def teacher(X: torch.Tensor, beta: torch.Tensor, noise_std: float, generator: torch.Generator) -> torch.Tensor:
    """``softplus(X beta) + noise_std * N(0, 1)`` per row."""
    clean = nn.functional.softplus(X @ beta)
    return clean + noise_std * torch.randn(clean.shape, generator=generator, dtype=X.dtype)


def make_data(cfg: SingleIndexConfig) -> SingleIndexData:
    """Draw beta* (unit norm), train/probe/test sets with noisy teacher labels, and the N(0, 1) student init."""
    dt = DTYPES[cfg.dtype]
    g_teacher, g_train, g_probe, g_test, g_init = _streams(cfg.seed, 5)
    beta = torch.randn(cfg.d, generator=g_teacher, dtype=torch.float64)
    beta = (beta / beta.norm()).to(dt)

    def draw(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        X = torch.randn(n, cfg.d, generator=g, dtype=dt)
        return X, teacher(X, beta, cfg.label_noise_std, g)

    X, y = draw(cfg.n, g_train)
    Xp, yp = draw(cfg.n, g_probe)
    Xt, yt = draw(cfg.n_test, g_test)
    W0 = torch.randn(cfg.h, cfg.d, generator=g_init, dtype=dt)
    a0 = torch.randn(cfg.h, generator=g_init, dtype=dt)
    return SingleIndexData(beta, X, y, Xp, yp, Xt, yt, W0, a0)


class TwoLayerStudent(nn.Module):
    """``f(x) = a^T tanh(W x / sqrt(d)) / sqrt(h)``; ``W`` is trained, ``a`` is a buffer when frozen."""

    def __init__(self, W0: torch.Tensor, a0: torch.Tensor, fix_last_layer: bool = True) -> None:
        super().__init__()
        if W0.ndim != 2 or a0.shape != (W0.shape[0],):
            raise ConfigError(f"expected W0 (h, d) and a0 (h,), got {tuple(W0.shape)} and {tuple(a0.shape)}")
        self.h, self.d = W0.shape
        self.W = nn.Parameter(W0.clone())
        if fix_last_layer:
            self.register_buffer("a", a0.clone())
        else:
            self.a = nn.Parameter(a0.clone())

    def hidden(self, X: torch.Tensor) -> torch.Tensor:
        """Hidden features ``tanh(X W^T / sqrt(d)) / sqrt(h)`` (n, h)."""
        return torch.tanh(X @ self.W.T / math.sqrt(self.d)) / math.sqrt(self.h)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.hidden(X) @ self.a


# ----------------------------------------------------------------------------- measurements (pure)


def features(W: torch.Tensor, X: torch.Tensor, scaling: str = "intended") -> torch.Tensor:
    """Probe features ``tanh(X W^T / sqrt(d)) / sqrt(h)`` in float64.

    ``scaling="reference"`` reproduces the public code's double scaling ``tanh(X W^T / d) / sqrt(h)``.
    """
    if scaling not in FEATURE_SCALINGS:
        raise ConfigError(f"scaling must be one of {', '.join(FEATURE_SCALINGS)}, got {scaling!r}")
    h, d = W.shape
    pre = (X.detach() @ W.detach().T).to(torch.float64)
    pre /= d if scaling == "reference" else math.sqrt(d)
    return torch.tanh(pre) / math.sqrt(h)


def _gram(Z: torch.Tensor) -> torch.Tensor:
    return Z.T @ Z


def kernel_target_alignment(Z: torch.Tensor, y: torch.Tensor, gram: torch.Tensor | None = None) -> float:
    """KTA = <Z Z^T, y y^T>_F / (||Z Z^T||_F ||y y^T||_F) = ||Z^T y||^2 / (||Z^T Z||_F ||y||^2).

    Computed through the (h x h) Gram ``Z^T Z`` (pass it in ``gram`` to reuse it) instead of the n x n kernel.
    """
    Z = Z.detach().to(torch.float64)
    y = y.detach().to(torch.float64).reshape(-1)
    if Z.ndim != 2 or Z.shape[0] != y.shape[0]:
        raise ConfigError(f"Z must be (n, h) with n = len(y); got {tuple(Z.shape)} and {y.shape[0]}")
    G = _gram(Z) if gram is None else gram
    den = float(torch.linalg.matrix_norm(G)) * float(y @ y)
    if den == 0.0:
        return math.nan
    zy = Z.T @ y
    return float(zy @ zy) / den


def ridge_refit(Z: torch.Tensor, y: torch.Tensor, lam: float, gram: torch.Tensor | None = None) -> torch.Tensor:
    """Last-layer ridge refit ``a_hat = (Z^T Z + (lam / h) n I)^-1 Z^T y`` (the reference's scaling), float64."""
    Z = Z.detach().to(torch.float64)
    y = y.detach().to(torch.float64).reshape(-1)
    if Z.ndim != 2 or Z.shape[0] != y.shape[0]:
        raise ConfigError(f"Z must be (n, h) with n = len(y); got {tuple(Z.shape)} and {y.shape[0]}")
    n, h = Z.shape
    G = (_gram(Z) if gram is None else gram).clone()
    G.diagonal().add_(lam / h * n)
    L, info = torch.linalg.cholesky_ex(G)
    if int(info) == 0:
        return torch.cholesky_solve((Z.T @ y)[:, None], L)[:, 0]
    return torch.linalg.solve(G, Z.T @ y)


def top_right_singular_vector(W: torch.Tensor | np.ndarray, v0: np.ndarray | None = None) -> np.ndarray:
    """Unit top right singular vector of ``W`` (h x d), float64, sign unspecified.

    Lanczos (ARPACK) on the d x d Gram matrix ``W^T W``, started from ``v0`` (e.g. the previous step's vector, which
    makes a run's later measurements cheap) or from the all-ones vector: deterministic, one eigenvector, no full SVD.
    """
    from scipy.sparse.linalg import eigsh

    Wn = np.asarray(W.detach().cpu().numpy() if isinstance(W, torch.Tensor) else W, dtype=np.float64)
    if Wn.ndim != 2:
        raise ConfigError(f"W must be a matrix (h, d), got shape {Wn.shape}")
    G = Wn.T @ Wn
    d = G.shape[0]
    if d <= 64:
        return np.linalg.eigh(G)[1][:, -1]
    start = np.ones(d) if v0 is None or v0.shape != (d,) or not np.isfinite(v0).all() else v0
    return eigsh(G, k=1, which="LA", v0=start, tol=1e-10)[1][:, 0]


def teacher_alignment(W: torch.Tensor | np.ndarray, beta: torch.Tensor | np.ndarray,
                      v0: np.ndarray | None = None) -> float:
    """``|<v_1, beta>| / ||beta||``, ``v_1`` the top right singular vector of ``W`` (h x d, beta in R^d)."""
    b = np.asarray(beta.detach().cpu().numpy() if isinstance(beta, torch.Tensor) else beta, dtype=np.float64).ravel()
    d = W.shape[1] if W.ndim == 2 else -1
    if b.shape[0] != d:
        raise ConfigError(f"W must be (h, d) and beta (d,); got {tuple(W.shape)} and {b.shape}")
    return _alignment(top_right_singular_vector(W, v0), b)


def _alignment(v: np.ndarray, b: np.ndarray) -> float:
    nb = float(np.linalg.norm(b))
    return abs(float(v @ b)) / nb if nb > 0 else math.nan


def spectrum_metrics(evals: np.ndarray, h: int, d: int) -> dict[str, float]:
    """Hill alpha (xmin at the median), KS-scan MLE alpha, top eigenvalue and its ratio to the MP edge of the init.

    ``spike_ratio = lambda_max / (sqrt(h) + sqrt(d))^2``: the initial N(0, 1) bulk ends at ratio ~1.
    ``n_spikes`` counts eigenvalues above ``SPIKE_FACTOR`` times that edge.
    """
    hill = fit_power_law(evals, "median")
    ks = fit_power_law(evals, "ks")
    edge = (math.sqrt(h) + math.sqrt(d)) ** 2
    lam = np.asarray(evals, dtype=np.float64)
    top = float(lam.max()) if lam.size else math.nan
    return {
        "alpha_hill": hill.alpha, "hill_xmin": hill.xmin, "hill_D": hill.D,
        "alpha_ks": ks.alpha, "ks_xmin": ks.xmin, "ks_D": ks.D, "ks_n_tail": ks.n_tail,
        "lambda_max": top, "spike_ratio": top / edge, "n_spikes": int(np.count_nonzero(lam > SPIKE_FACTOR * edge)),
    }


def measure(W: torch.Tensor, data: SingleIndexData, cfg: SingleIndexConfig,
            v0: np.ndarray | None = None) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """All measurements of one weight matrix: (row of numbers, eigenvalues of W^T W ascending, top right singular
    vector of W). ``v0`` warm-starts the singular vector (the previous measurement's)."""
    W = W.detach()
    evals = eigenvalues(W)
    row = spectrum_metrics(evals, cfg.h, cfg.d)
    v1 = top_right_singular_vector(W, v0)
    row["alignment"] = _alignment(v1, data.beta.to(torch.float64).numpy())
    Z = features(W, data.X_probe, cfg.feature_scaling)
    G = _gram(Z)
    row["kta"] = kernel_target_alignment(Z, data.y_probe, G)
    a_hat = ridge_refit(Z, data.y_probe, cfg.ridge_lambda, G)
    yp = data.y_probe.to(torch.float64)
    row["ridge_train_loss"] = float(((Z @ a_hat - yp) ** 2).mean())
    Zt = features(W, data.X_test, cfg.feature_scaling)
    row["ridge_test_loss"] = float(((Zt @ a_hat - data.y_test.to(torch.float64)) ** 2).mean())
    row["weight_change_fro"] = float(torch.linalg.matrix_norm((W - data.W0).to(torch.float64)))
    return row, evals, v1


# ----------------------------------------------------------------------------- the run


@dataclass
class SingleIndexRun:
    """One run: ``history`` (one row per measured step, step 0 = init), eigenvalues by step, and timing."""

    config: SingleIndexConfig
    history: pd.DataFrame
    evals: dict[int, np.ndarray]
    time_s: float = 0.0
    measure_time_s: float = 0.0

    @property
    def final(self) -> dict[str, Any]:
        return self.history.iloc[-1].to_dict()

    def onsets(self, alpha_drop: float = 0.2) -> dict[str, float]:
        """First step with a spike (``spike_ratio >= SPIKE_FACTOR``: the top eigenvalue has left the initial bulk)
        and first step whose Hill alpha is at least ``alpha_drop`` below its initial value (a heavy tail).

        NaN when it never happens. The paper's claim "the spike precedes the heavy tail" means spike_step <= tail_step.
        One spike alone moves the median-xmin Hill alpha by only ~(alpha-1)^2 ln(lambda_1/xmin)/(N/2) (about 0.03
        for d=1000), so the default drop of 0.2 is a change of the bulk, far above the seed-to-seed spread (~0.01).
        """
        return onsets(self.history, alpha_drop)


def onsets(history: pd.DataFrame, alpha_drop: float = 0.2) -> dict[str, float]:
    """See :meth:`SingleIndexRun.onsets`; ``history`` needs columns step, spike_ratio, alpha_hill."""
    h = history.sort_values("step")
    a0 = float(h["alpha_hill"].iloc[0])
    spike = h.loc[h["spike_ratio"] >= SPIKE_FACTOR, "step"]
    tail = h.loc[h["alpha_hill"] <= a0 - alpha_drop, "step"]
    return {"spike_step": float(spike.iloc[0]) if len(spike) else math.nan,
            "tail_step": float(tail.iloc[0]) if len(tail) else math.nan}


class MeasureCallback(Callback):
    """Measures the student after step 0 (init) and every ``measure_every``-th step (and the last), and records the
    full-batch training loss of the student itself (frozen ``a``) at each measured step.

    ``init`` (the output of :func:`measure` on the same data's ``W0``) skips re-measuring step 0. Each measurement
    warm-starts the top singular vector from the previous one.
    """

    def __init__(self, data: SingleIndexData, cfg: SingleIndexConfig, keep_evals: Sequence[int] | None = None,
                 init: tuple[dict[str, float], np.ndarray, np.ndarray] | None = None) -> None:
        self.data, self.cfg = data, cfg
        self._v: np.ndarray | None = None
        self.keep = None if keep_evals is None else set(int(s) for s in keep_evals)
        self.init = init
        self.rows: list[dict[str, Any]] = []
        self.evals: dict[int, np.ndarray] = {}
        self.time_s = 0.0
        self._pre_loss: dict[int, float] = {}

    def _record(self, step: int, row: dict[str, float], evals: np.ndarray) -> None:
        self.rows.append({"step": step, **row})
        if self.keep is None or step in self.keep or (step == self.cfg.steps and -1 in self.keep):
            self.evals[step] = evals

    def _measure(self, state: TrainState) -> None:
        if not bool(torch.isfinite(state.model.W).all()):
            raise TrainingError(f"non-finite weights after step {state.step}; lower the learning rate")
        t = time.perf_counter()
        try:
            row, evals, self._v = measure(state.model.W, self.data, self.cfg, self._v)
        except NonFiniteError as e:
            raise TrainingError(f"non-finite spectrum after step {state.step} ({e}); lower the learning rate") from e
        self.time_s += time.perf_counter() - t
        self._record(state.step, row, evals)

    def on_train_begin(self, state: TrainState, logs: dict[str, Any]) -> None:
        if self.init is not None:
            row, evals, self._v = self.init
            self._record(0, dict(row), evals)
        else:
            self._measure(state)

    def on_step_end(self, state: TrainState, logs: dict[str, Any]) -> None:
        # the loop's loss is the full-batch loss at the weights *before* this step
        self._pre_loss[state.step - 1] = float(logs["loss"])
        if state.step % self.cfg.measure_every == 0 or state.step >= self.cfg.steps:
            self._measure(state)

    def on_train_end(self, state: TrainState, logs: dict[str, Any]) -> None:
        with torch.no_grad():
            self._pre_loss[state.step] = float(nn.functional.mse_loss(state.model(self.data.X), self.data.y))
        for r in self.rows:
            r["student_train_loss"] = self._pre_loss.get(r["step"], math.nan)


def make_optimizer(cfg: SingleIndexConfig, params: Sequence[nn.Parameter]) -> torch.optim.Optimizer:
    """Full-batch GD (``torch.optim.SGD``) or Adam with the config's hyper-parameters."""
    if cfg.optimizer == "gd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps, weight_decay=cfg.weight_decay)


def run_single_index(cfg: SingleIndexConfig, data: SingleIndexData | None = None, *,
                     keep_evals: Sequence[int] | None = (0, 1, -1),
                     init: tuple[dict[str, float], np.ndarray, np.ndarray] | None = None,
                     progress: bool | None = False) -> SingleIndexRun:
    """Train the student for ``cfg.steps`` full-batch steps with :func:`htsr.training.train` and measure it.

    ``data`` (from :func:`make_data` with the same sizes, noise and seed) lets a sweep share one draw across
    optimisers and rates.
    ``keep_evals``: steps whose eigenvalues are kept (-1 = the last step; None keeps all). ``init``: a precomputed
    step-0 measurement (:func:`measure` of ``data.W0``), to skip measuring the shared initialisation again.
    """
    if data is None:
        data = make_data(cfg)
    elif tuple(data.W0.shape) != (cfg.h, cfg.d) or data.X.shape[0] != cfg.n:
        raise ConfigError(f"data was drawn for W0 {tuple(data.W0.shape)} and n={data.X.shape[0]}, "
                          f"the config asks for ({cfg.h}, {cfg.d}) and n={cfg.n}")
    model = TwoLayerStudent(data.W0, data.a0, cfg.fix_last_layer)
    opt = make_optimizer(cfg, [p for p in model.parameters() if p.requires_grad])
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=cfg.lr_gamma) if cfg.lr_gamma else None
    cb = MeasureCallback(data, cfg, keep_evals, init)
    t = time.perf_counter()
    train(model, [(data.X, data.y)], opt, epochs=None, max_steps=cfg.steps, scheduler=sched,
          scheduler_interval="step", callbacks=[cb], progress=progress)
    elapsed = time.perf_counter() - t
    hist = pd.DataFrame(cb.rows)
    hist.insert(0, "optimizer", cfg.optimizer)
    hist.insert(1, "lr", cfg.lr)
    hist.insert(2, "seed", cfg.seed)
    return SingleIndexRun(cfg, hist, cb.evals, elapsed, cb.time_s)


__all__ = ["FEATURE_SCALINGS", "MeasureCallback", "OPTIMIZERS", "SPIKE_FACTOR", "SingleIndexConfig", "SingleIndexData",
           "SingleIndexRun", "TwoLayerStudent", "features", "kernel_target_alignment", "make_data", "make_optimizer",
           "measure", "onsets", "ridge_refit", "run_single_index", "spectrum_metrics", "teacher", "teacher_alignment",
           "top_right_singular_vector"]
