"""Mode connectivity: linear paths and trained quadratic Bezier curves between two models of any architecture.

The curve is ``θ(t) = (1−t)²θ₀ + 2t(1−t)θ_c + t²θ₁`` (Garipov et al. 2018, 3 bends, endpoints fixed, θ_c
initialised at the midpoint). It is evaluated with ``torch.func.functional_call`` on one copy of the
architecture, so no per-layer "curve" classes are needed. Training minimises E_{t~U(0,1)} L(θ(t)) with one
``t`` per minibatch through the shared :func:`htsr.training.train` loop (SGD, momentum 0.9, lr 0.01, weight decay
on θ_c, Garipov's schedule: constant for 50% of the epochs, linear decay to 1% at 90%, then 1%). Every
parameter (BatchNorm affine ones too) lies on the curve; BatchNorm running statistics are re-estimated on the
training data at each evaluated ``t`` (cumulative average, momentum b/(n+b)).

Metrics, exactly as in the research notes (TAX/TRP/MD):

- ``mode_connectivity`` (Yang et al. 2021): ``mc = ½(e(0)+e(1)) − e(t*)`` with
  ``t* = argmax_t |e(t) − ½(e(0)+e(1))|`` over the evaluated points (endpoints included). ``mc < 0``: a barrier;
  ``mc ≈ 0``: well connected. :meth:`PathResult.metrics` reports it on the train *error* as a fraction (TRP).
- ``mode_connectivity_peak`` (MD tree): ``−max_{t∈{.25,.5,.75}} train_error(γ(t))`` in percent.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from htsr.landscape.objective import (
    LandscapeError,
    LossFn,
    NonFiniteLossError,
    Objective,
    _Bound,
    as_model_loss,
    check_same_architecture,
    check_scalar_loss,
    reestimate_bn,
)
from htsr.nn import eval_mode

__all__ = ["PathResult", "BezierCurve", "linear_path", "train_bezier", "evaluate_curve", "mode_connectivity",
           "mode_connectivity_peak", "garipov_lr_factor", "PEAK_T"]

PEAK_T = (0.25, 0.5, 0.75)


def mode_connectivity(values: Sequence[float] | np.ndarray) -> float:
    """``½(e(0)+e(1)) − e(t*)``, ``t* = argmax_t |e(t) − ½(e(0)+e(1))|``; ``values`` ordered from t=0 to t=1.
    Negative: a barrier on the path. Units are those of ``values``."""
    e = np.asarray(values, dtype=float)
    if e.size < 2 or not np.all(np.isfinite(e)):
        raise LandscapeError(f"mode_connectivity needs >= 2 finite values along the path, got {e.tolist()}")
    mid = 0.5 * (e[0] + e[-1])
    return float(mid - e[int(np.argmax(np.abs(e - mid)))])


def mode_connectivity_peak(ts: Sequence[float] | np.ndarray, errors: Sequence[float] | np.ndarray,
                           at: Sequence[float] = PEAK_T, percent: bool = True) -> float:
    """MD tree's ``mode_connectivity_peak``: ``−max`` of the error at ``t ∈ {.25, .5, .75}``; errors given as
    fractions are reported in percent (``percent=True``)."""
    ts = np.asarray(ts, dtype=float)
    e = np.asarray(errors, dtype=float)
    picked = []
    for t in at:
        idx = np.flatnonzero(np.isclose(ts, t))
        if idx.size == 0:
            raise LandscapeError(f"mode_connectivity_peak needs the error at t={t}; evaluated t: {ts.tolist()}")
        picked.append(e[idx[0]])
    return float(-max(picked) * (100.0 if percent else 1.0))


@dataclass
class PathResult:
    """Train metrics along a path: ``t``, ``loss``, ``error`` (fractions), plus the kind of path."""

    t: np.ndarray
    loss: np.ndarray
    error: np.ndarray
    kind: str
    meta: dict[str, Any] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """``mode_connectivity`` (on error, fraction), ``mode_connectivity_loss`` (on loss), and
        ``mode_connectivity_peak`` (percent; NaN unless t = .25, .5, .75 were evaluated)."""
        out = {"mode_connectivity": mode_connectivity(self.error) if np.all(np.isfinite(self.error)) else math.nan,
               "mode_connectivity_loss": mode_connectivity(self.loss)}
        try:
            out["mode_connectivity_peak"] = mode_connectivity_peak(self.t, self.error)
        except LandscapeError:
            out["mode_connectivity_peak"] = math.nan
        return out

    def to_pandas(self):
        """One row per t: t, loss, error."""
        import pandas as pd

        return pd.DataFrame({"t": self.t, "loss": self.loss, "error": self.error})


def garipov_lr_factor(epoch: int, total_epochs: int) -> float:
    """Garipov et al.'s schedule: 1 up to 50% of training, linear to 0.01 at 90%, then 0.01."""
    a = epoch / max(total_epochs, 1)
    if a <= 0.5:
        return 1.0
    if a <= 0.9:
        return 1.0 - (a - 0.5) / 0.4 * 0.99
    return 0.01


def _param_names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_parameters()]


class BezierCurve(nn.Module):
    """Quadratic Bezier curve between two models of the same architecture. The only trainable parameters are
    the middle control point's (``bend.<i>``); endpoints are buffers. ``point(t)`` gives the parameters at t;
    ``loss(batch, t)`` the loss of the architecture there (differentiable in θ_c)."""

    def __init__(self, model_a: nn.Module, model_b: nn.Module, loss_fn: LossFn | None = None, *,
                 seed: int = 0) -> None:
        super().__init__()
        check_same_architecture(model_a, model_b, "endpoint models")
        self.names = _param_names(model_a)
        if not self.names:
            raise LandscapeError("the endpoint models have no parameters")
        pa, pb = dict(model_a.named_parameters()), dict(model_b.named_parameters())
        self.arch = copy.deepcopy(model_a)
        for p in self.arch.parameters():
            p.requires_grad_(False)
        self.bend = nn.ParameterList()
        for i, n in enumerate(self.names):
            a = pa[n].detach().clone()
            b = pb[n].detach().to(a.device, a.dtype).clone()
            self.register_buffer(f"start_{i}", a)
            self.register_buffer(f"end_{i}", b)
            self.bend.append(nn.Parameter(0.5 * (a + b)))
        self.loss_fn: LossFn = as_model_loss(loss_fn)
        self._bound = _Bound(self.arch, self.loss_fn)
        self.generator = torch.Generator().manual_seed(int(seed))

    def endpoints(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The fixed endpoint parameters (θ₀, θ₁), in ``names`` order."""
        n = len(self.names)
        return ([getattr(self, f"start_{i}") for i in range(n)], [getattr(self, f"end_{i}") for i in range(n)])

    def point(self, t: float) -> list[torch.Tensor]:
        """Parameters at ``t`` (differentiable in the bend)."""
        a, b = self.endpoints()
        c0, c1, c2 = (1 - t) ** 2, 2 * t * (1 - t), t ** 2
        return [c0 * x + c1 * m + c2 * y for x, m, y in zip(a, self.bend, b, strict=True)]

    def sample_t(self) -> float:
        """t ~ U(0, 1) from the curve's seeded generator."""
        return float(torch.rand((), generator=self.generator))

    def loss(self, batch: Any, t: float | None = None) -> torch.Tensor:
        """The architecture's loss on ``batch`` at ``θ(t)`` (``t`` drawn from U(0,1) when None)."""
        from torch.func import functional_call

        t = self.sample_t() if t is None else float(t)
        mapping = {"model." + n: w for n, w in zip(self.names, self.point(t), strict=True)}
        return check_scalar_loss(functional_call(self._bound, mapping, (batch,)))

    @torch.no_grad()
    def model_at(self, t: float) -> nn.Module:
        """The architecture copy with its parameters set to θ(t) (BatchNorm statistics not yet updated)."""
        for p, w in zip([dict(self.arch.named_parameters())[n] for n in self.names], self.point(float(t)), strict=True):
            p.copy_(w)
        return self.arch


def _curve_loss(curve: BezierCurve, batch: Any) -> torch.Tensor:
    return curve.loss(batch)


def train_bezier(model_a: nn.Module, model_b: nn.Module, train_data: Any, *, epochs: int = 50, lr: float = 0.01,
                 momentum: float = 0.9, weight_decay: float = 1e-4, loss_fn: LossFn | None = None, seed: int = 0,
                 device: str | torch.device | None = None, progress: bool | None = None,
                 **train_kwargs: Any) -> tuple[BezierCurve, Any]:
    """Fit the middle control point of a Bezier curve between two models (Garipov et al.) with the shared
    training loop; returns ``(curve, TrainResult)``. One ``t ~ U(0,1)`` per minibatch (seeded by ``seed``)."""
    from htsr.training import DivergedError, TrainingError, train

    if epochs < 1:
        raise LandscapeError(f"epochs must be >= 1, got {epochs}")
    curve = BezierCurve(model_a, model_b, loss_fn, seed=seed)
    if device is not None:
        curve.to(device)
    opt = torch.optim.SGD(curve.bend.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: garipov_lr_factor(e, epochs))
    try:
        result = train(curve, train_data, opt, loss_fn=_curve_loss, epochs=epochs, scheduler=sched,
                       scheduler_interval="epoch", device=device, progress=progress, **train_kwargs)
    except DivergedError as e:
        raise NonFiniteLossError(f"Bezier curve training diverged: {e}") from e
    except TrainingError as e:
        raise LandscapeError(f"Bezier curve training failed: {e}") from e
    return curve, result


def _path_point(model: nn.Module, data: Any, loss_fn: LossFn | None, bn_data: Any, t: float,
                kind: str) -> tuple[float, float]:
    if bn_data is not None:
        reestimate_bn(model, bn_data)
    m = Objective(model, data, loss_fn, params=lambda n, p: True).metrics()
    loss, err = float(m["loss"]), float(m.get("error", math.nan))
    if not math.isfinite(loss):
        raise NonFiniteLossError(f"the loss is {loss} at t={t:.4g} on the {kind} path; the models or the curve "
                             "produce non-finite outputs there")
    return loss, err


def _ts(num_points: int | None, ts: Sequence[float] | None) -> np.ndarray:
    if ts is not None:
        arr = np.asarray(ts, dtype=float)
    else:
        if num_points is None or num_points < 2:
            raise LandscapeError(f"num_points must be >= 2, got {num_points}")
        arr = np.linspace(0.0, 1.0, int(num_points))
    if arr.size < 2 or not np.all(np.isfinite(arr)):
        raise LandscapeError("t values must be >= 2 finite numbers")
    return arr


def linear_path(model_a: nn.Module, model_b: nn.Module, data: Any, loss_fn: LossFn | None = None, *,
                num_points: int = 11, ts: Sequence[float] | None = None, bn_data: Any = "data") -> PathResult:
    """Train metrics on ``(1−t)θ_a + tθ_b`` at ``num_points`` evenly spaced t (TRP: 11), BatchNorm re-estimated
    at each t on ``bn_data`` (default: ``data``; None to keep model_a's statistics). Inputs are not modified."""
    check_same_architecture(model_a, model_b, "endpoint models")
    t_arr = _ts(num_points, ts)
    bn = data if isinstance(bn_data, str) and bn_data == "data" else bn_data
    work = copy.deepcopy(model_a)
    pa = [p.detach().clone() for p in model_a.parameters()]
    pb = [p.detach().to(pa[0].device) for p in model_b.parameters()]
    loss, err = np.zeros(t_arr.size), np.zeros(t_arr.size)
    for i, t in enumerate(t_arr):
        with torch.no_grad():
            for w, a, b in zip(work.parameters(), pa, pb, strict=True):
                # exact at the ends and at a == b (a model's path to itself is constant)
                w.copy_(a if t == 0 else b if t == 1 else torch.lerp(a, b, float(t)))
        loss[i], err[i] = _path_point(work, data, loss_fn, bn, float(t), "linear")
    return PathResult(t_arr, loss, err, "linear", {"bn_reestimated": bn is not None})


def evaluate_curve(curve: BezierCurve, data: Any, loss_fn: LossFn | None = None, *, num_points: int = 5,
                   ts: Sequence[float] | None = None, bn_data: Any = "data") -> PathResult:
    """Train metrics on a (trained) Bezier curve at ``num_points`` evenly spaced t (TAX: 5), BatchNorm
    re-estimated at each t on ``bn_data`` (default ``data``)."""
    t_arr = _ts(num_points, ts)
    bn = data if isinstance(bn_data, str) and bn_data == "data" else bn_data
    loss, err = np.zeros(t_arr.size), np.zeros(t_arr.size)
    with eval_mode(curve):
        for i, t in enumerate(t_arr):
            model = curve.model_at(float(t))
            loss[i], err[i] = _path_point(model, data, loss_fn or curve.loss_fn, bn, float(t), "Bezier")
    return PathResult(t_arr, loss, err, "bezier", {"bn_reestimated": bn is not None})
