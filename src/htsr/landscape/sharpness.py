"""Adaptive worst-case sharpness by weight-space APGD (Andriushchenko et al. 2023, as SharpBalance measures it).

For each of ``max_batches`` batches B (SharpBalance: 100 batches of 5 training samples, eval mode, mean
cross-entropy):

    S_B = max_{ ||delta / |theta| ||_p <= rho }  L_B(theta + delta) - L_B(theta)        (adaptive=True)
    S_B = max_{ ||delta||_p <= rho }            L_B(theta + delta) - L_B(theta)        (adaptive=False)

and the sharpness is the mean of S_B over batches; p is 2 or inf. The inner maximisation is the
reference's APGD in weight space (SB ``sharpness_utils.py: eval_APGD_sharpness``, itself a copy of
tml-epfl/sharpness-vs-generalization ``sharpness.py``), with its constants: 20 iterations, initial step
``2 rho``, momentum 0.75, step halved at the checkpoints ``0.22, 0.41, 0.57, ...`` of the run when fewer
than 75 % of the iterations since the last checkpoint improved the loss (or the best loss and step did
not change), the best point kept. Steps: L2 ``delta += eta |theta| g / ||g||``, Linf
``delta += eta |theta| sign(g)`` (``|theta|`` replaced by 1 when not adaptive); projection: L2 onto the
ball, or (adaptive) the Euclidean projection onto the ellipsoid ``||delta / |theta| ||_2 <= rho``
(KKT form ``delta_i = d_i theta_i^2 / (theta_i^2 + mu)``, mu found by Newton's method); Linf: clipping to
``rho |theta|``. S_B >= 0 by construction (the start point counts).

Reference-code behaviours changed (each documented in ``docs/landscape.md``):

1. **Restart from the best point.** On a step-size cut the reference reloads the best *weights* into the
   model but keeps its perturbation variable, so the next update overwrites the reload (only the next
   gradient is taken at the best point). Here ``delta`` (and the momentum memory) is reset to the best
   ``delta``, which is what APGD (Croce & Hein 2020) prescribes.
2. **Momentum.** The reference's docstring states APGD's
   ``delta_{k+1} = P(delta_k + a (z_{k+1} - delta_k) + (1 - a)(delta_k - delta_{k-1}))`` but its code
   computes ``a z_{k+1} + (1 - a) delta_{k-1}``. ``momentum_rule="apgd"`` (default) follows the docstring,
   with a plain first step as in APGD; ``momentum_rule="reference"`` reproduces the code's update.
3. **Zero weights (adaptive L2).** The reference's weighted norm divides ``delta`` by ``|theta|``; a weight
   that is exactly 0 (zero-initialised biases/LayerNorm shifts, pruned weights) gives 0/0 = NaN, every
   comparison with NaN is false and the projection is silently skipped, so the radius is not enforced.
   Here coordinates with ``theta_i = 0`` are fixed at ``delta_i = 0`` (the adaptive ball allows nothing
   else) and left out of the norm.
4. **Random start.** The reference's ``rand_init`` is a one-element tuple (a stray comma) and would crash;
   its L2 start ``rho |theta| N(0, 1)`` lies far outside the ball. Here a random start (``init="random"``,
   seeded) is drawn the same way and projected onto the ball. ``n_restarts > 1`` needs it, as in the
   reference.
5. The reference's ``--gamma`` option is a string that must be split into a list of radii; here ``rho``
   is a number and :func:`sharpness_table` takes a list.

The loss over a batch, the flat parameter vector and its gradient come from
:class:`htsr.landscape.objective.Objective` (one per batch, eval mode, buffers restored).
Also here: :func:`average_sharpness` (the reference's ``eval_average_sharpness``: mean loss increase under
random perturbations ``rho |theta| N(0,1)`` or ``rho |theta| U(-1,1)``), and :func:`project_perturbation`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from htsr.errors import ConfigError
from htsr.landscape.objective import (
    LandscapeError,
    LossFn,
    NonFiniteLossError,
    Objective,
    check_masks,
    is_batch,
)
from htsr.progress import progress_bar


def _norm_p(p: Any) -> int | str:
    if isinstance(p, str) and p.lower() in ("inf", "linf", "l_inf"):
        return "inf"
    if isinstance(p, str) and p.lower() in ("2", "l2"):
        return 2
    if isinstance(p, (int, float)) and not isinstance(p, bool):
        if p == 2:
            return 2
        if math.isinf(p):
            return "inf"
    raise ConfigError(f"p must be 2 or 'inf' (also 'l2'/'linf', float('inf')), got {p!r}")


def _check_rho(rho: Any) -> float:
    try:
        r = float(rho)
    except (TypeError, ValueError):
        raise ConfigError(f"rho must be a number > 0, got {rho!r}") from None
    if not (r > 0.0) or math.isinf(r):
        raise ConfigError(f"rho must be finite and > 0, got {rho!r}")
    return r


def checkpoints(n_iters: int) -> list[int]:
    """The reference's step-size checkpoints (0-based iteration indices) for a run of ``n_iters``.

    ``p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``, checkpoint ``ceil(p_j n)``
    (e.g. ``[5, 9, 12, 15, 16, 18, 19, 20]`` for 20 iterations).
    """
    p = [0.0, 0.22]
    w = [0, math.ceil(n_iters * 0.22)]
    while w[-1] < n_iters and w[-1] != w[-2]:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
        w.append(math.ceil(p[-1] * n_iters))
    return w[1:]


# ------------------------------------------------------------------------------------ geometry (pure)
def adaptive_scale(theta: torch.Tensor, adaptive: bool) -> torch.Tensor:
    """``|theta|`` (adaptive) or ones: the element-wise scale of the perturbation set."""
    return theta.abs() if adaptive else torch.ones_like(theta)


def perturbation_norm(delta: torch.Tensor, scale: torch.Tensor, p: Any) -> float:
    """``|| delta / scale ||_p``, coordinates with ``scale == 0`` left out (they must have ``delta == 0``)."""
    p = _norm_p(p)
    nz = scale != 0
    if bool(((~nz) & (delta != 0)).any()):
        return float("inf")
    u = torch.where(nz, delta / torch.where(nz, scale, torch.ones_like(scale)), torch.zeros_like(delta))
    return float(torch.linalg.vector_norm(u, float("inf") if p == "inf" else 2))


def project_perturbation(d: torch.Tensor, scale: torch.Tensor, rho: float, p: Any, *, iters: int = 100) -> torch.Tensor:
    """Euclidean projection of ``d`` onto ``{delta : || delta / scale ||_p <= rho}`` (``scale >= 0``).

    Linf: clip to ``[-rho scale, rho scale]``. L2 with a constant scale: rescale onto the sphere.
    L2 with varying scale (an ellipsoid): ``delta_i = d_i s_i^2 / (s_i^2 + mu)`` with ``mu >= 0`` found by
    Newton's method so that the weighted norm is ``rho`` (the reference bisects; this solves the same
    equation to float64 precision and is always feasible). Coordinates with ``scale == 0`` become 0.
    """
    p = _norm_p(p)
    rho = float(rho)
    if p == "inf":
        lim = rho * scale
        return torch.maximum(torch.minimum(d, lim), -lim)
    d64, s64 = d.to(torch.float64), scale.to(torch.float64)
    nz = s64 != 0
    one = torch.ones((), dtype=torch.float64, device=d.device)
    s_safe = torch.where(nz, s64, one)  # masks instead of boolean indexing: no gathers on large vectors
    d64 = torch.where(nz, d64, torch.zeros((), dtype=torch.float64, device=d.device))
    norm0 = float(torch.linalg.vector_norm(d64 / s_safe))
    if norm0 <= rho:
        return d64.to(d.dtype)
    s_lo = float(torch.where(nz, s64, torch.full((), math.inf, dtype=torch.float64, device=d.device)).min())
    if s_lo == float(s64.max()):  # constant scale: a sphere
        return (d64 * (rho / norm0)).to(d.dtype)
    # Newton on phi(mu) = 1/||delta(mu)||_w - 1/rho (More & Sorensen's trust-region secular equation): phi is
    # increasing and concave, so Newton from mu = 0 (phi < 0) converges monotonically from the left.
    # Zero-scale coordinates have d = 0 and a safe denominator, so they contribute 0 (not 0/0).
    s2 = s64 * s64
    a2 = (d64 * s64) ** 2
    mu = 0.0
    for _ in range(iters):
        den = torch.where(nz, s2 + mu, one)
        n2 = float((a2 / den**2).sum())
        norm = math.sqrt(n2)
        if abs(norm - rho) <= 1e-13 * rho:
            break
        dphi = float((a2 / den**3).sum()) / (n2 * norm)
        mu -= (1.0 / norm - 1.0 / rho) / dphi
    den = torch.where(nz, s2 + mu, one)
    delta = d64 * s2 / den
    final = float(torch.linalg.vector_norm(d64 * s64 / den))
    if final > rho:  # round-off on the far side: scale onto the boundary (a factor 1 - O(1e-13))
        delta = delta * (rho / final)
    return delta.to(d.dtype)


def random_perturbation(
    scale: torch.Tensor, rho: float, p: Any, *, generator: torch.Generator, on_boundary: bool = False
) -> torch.Tensor:
    """A random perturbation as in the reference's ``random_init_lw``: ``rho scale N(0,1)`` (L2) or
    ``rho scale U(-1,1)`` (Linf), drawn on the CPU from ``generator``. ``on_boundary=True`` rescales it to
    ``|| delta / scale ||_p = rho`` exactly (a random point of the sphere / a random corner-face point)."""
    p = _norm_p(p)
    shape = scale.shape
    if p == 2:
        z = torch.randn(shape, generator=generator, dtype=torch.float64)
    else:
        z = 2 * torch.rand(shape, generator=generator, dtype=torch.float64) - 1
    z = z.to(scale.device)
    if on_boundary:
        z = torch.where(scale == 0, torch.zeros_like(z), z)
        n = float(torch.linalg.vector_norm(z, float("inf") if p == "inf" else 2))
        z = z * (rho / n)
        return (z * scale.to(torch.float64)).to(scale.dtype)
    return (rho * z * scale.to(torch.float64)).to(scale.dtype)


# ------------------------------------------------------------------------------------ APGD
@dataclass
class SharpnessResult:
    """Worst-case sharpness over batches. ``sharpness`` is the mean loss increase (the reported number).

    ``status`` is ``"ok"``, or ``"failed"`` with a ``reason`` when the measurement is not a number: a loss or a
    perturbation at some perturbed point overflowed (NaN/Inf, e.g. a radius of 1e10). ``sharpness`` and
    ``error_increase`` are then NaN, never a value computed from the points that survived."""

    sharpness: float
    error_increase: float  # mean increase of the misclassified fraction at the worst point (NaN if not classifying)
    rho: float
    p: int | str
    adaptive: bool
    n_batches: int
    init_loss: float  # mean loss at theta over the batches
    max_delta_l2: float  # largest plain L2 norm of a worst perturbation (the reference's ``delta_norm``)
    per_batch: Any = field(repr=False, default=None)  # pandas DataFrame, one row per batch
    settings: dict[str, Any] = field(repr=False, default_factory=dict)
    status: str = "ok"
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (per-batch rows included as a list of records)."""
        d = {k: getattr(self, k) for k in ("sharpness", "error_increase", "rho", "p", "adaptive", "n_batches",
                                            "init_loss", "max_delta_l2", "status", "reason")}
        d["settings"] = dict(self.settings)
        if self.per_batch is not None:
            d["per_batch"] = self.per_batch.to_dict(orient="records")
        return d


def _flat_mask(obj: Objective, mask: Mapping[str, torch.Tensor] | None) -> torch.Tensor | None:
    """The validated per-parameter masks (:func:`~htsr.landscape.objective.check_masks`) as one flat vector."""
    if mask is None:
        return None
    masks = check_masks(mask, dict(zip(obj.names, obj.params, strict=True)))
    return obj.flatten([masks.get(n, torch.ones_like(p)) for n, p in zip(obj.names, obj.params, strict=True)])


class _Overflow(Exception):
    """A perturbed point left the representable range (non-finite loss or perturbation)."""


def _apgd_batch(
    obj: Objective,
    theta: torch.Tensor,
    scale: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    rho: float,
    p: int | str,
    n_iters: int,
    step_size_mult: float,
    momentum: float,
    min_update_ratio: float,
    momentum_rule: str,
    init: str,
    n_restarts: int,
    generator: torch.Generator,
) -> dict[str, Any]:
    """APGD on one batch (``obj`` holds the batch). Returns the per-batch row (``status``/``reason`` included)."""
    init_m = obj.metrics(theta)
    init_loss = init_m["loss"]
    if not math.isfinite(init_loss):
        raise LandscapeError(f"the loss at the unperturbed weights is {init_loss}; sharpness is undefined")
    cps = set(checkpoints(n_iters))
    n_evals = 0

    def evaluate(delta: torch.Tensor, with_grad: bool) -> tuple[float, torch.Tensor | None]:
        nonlocal n_evals
        n_evals += 1
        if not bool(torch.isfinite(delta).all()):
            raise _Overflow(f"the perturbation is not finite (it overflows at rho={rho:g})")
        loss, grad = obj.loss_and_grad(theta + delta) if with_grad else (obj.loss(theta + delta), None)
        if not math.isfinite(loss):
            raise _Overflow(f"the loss at a perturbed point is not finite ({loss}; rho={rho:g} leaves the range "
                            "where the loss is finite)")
        return loss, grad

    def direction(g: torch.Tensor) -> torch.Tensor:
        if mask is not None:
            g = g * mask
        if p == 2:
            return scale * g / (torch.linalg.vector_norm(g) + 1e-12)
        return scale * torch.sign(g)

    def step_from(delta: torch.Tensor, prev: torch.Tensor, z: torch.Tensor, first: bool) -> torch.Tensor:
        """The momentum update (module docstring, item 2): APGD's, or the reference code's."""
        if momentum_rule == "reference":
            return momentum * z + (1.0 - momentum) * prev
        if first:
            return z
        return project_perturbation(delta + momentum * (z - delta) + (1.0 - momentum) * (delta - prev), scale, rho, p)

    best_over = (init_loss, torch.zeros_like(theta))
    row: dict[str, Any] = {"status": "ok", "reason": ""}
    try:
        for _restart in range(n_restarts):
            delta = torch.zeros_like(theta)
            if init == "random":
                delta = random_perturbation(scale, rho, p, generator=generator)
                delta = project_perturbation(delta * mask if mask is not None else delta, scale, rho, p)
            prev = delta.clone()
            best_loss, best_delta = init_loss, delta.clone()
            step = 2.0 * rho * step_size_mult
            prev_step, prev_best, prev_cp, n_updates = step, best_loss, 0, 0
            _, grad = evaluate(delta, True)
            for i in range(n_iters):
                z = project_perturbation(delta + step * direction(grad), scale, rho, p)
                prev, delta = delta, step_from(delta, prev, z, i == 0)
                loss, grad = evaluate(delta, i < n_iters - 1)
                if loss > best_loss:
                    best_loss, best_delta = loss, delta.clone()
                    n_updates += 1
                if i in cps:
                    cut = (n_updates < min_update_ratio * (i - prev_cp)) or (prev_step == step and
                                                                             prev_best == best_loss)
                    prev_step, prev_best, prev_cp, n_updates = step, best_loss, i, 0
                    if cut:  # halve the step and restart from the best point (module docstring, item 1)
                        step *= 0.5
                        delta, prev = best_delta.clone(), best_delta.clone()
                        if i < n_iters - 1:
                            _, grad = evaluate(delta, True)
            if best_loss > best_over[0]:
                best_over = (best_loss, best_delta)
    except _Overflow as e:
        row.update(status="failed", reason=str(e))
    worst_loss, worst_delta = best_over
    failed = row["status"] != "ok"
    row.update({
        "init_loss": init_loss,
        "worst_loss": math.nan if failed else worst_loss,
        "sharpness": math.nan if failed else worst_loss - init_loss,
        "delta_l2": math.nan if failed else float(torch.linalg.vector_norm(worst_delta)),
        "delta_norm": math.nan if failed else perturbation_norm(worst_delta, scale, p),
        "n_loss_evals": n_evals,
    })
    if "error" in init_m:
        worst_m = obj.metrics(theta + worst_delta) if not failed else {}
        row["init_error"] = init_m["error"]
        row["worst_error"] = worst_m.get("error", math.nan)
        row["error_increase"] = row["worst_error"] - row["init_error"]
    return row


def _batches(data: Any, max_batches: int) -> list[Any]:
    if data is None:
        raise LandscapeError("data is None; expected a DataLoader / iterable of batches or one batch")
    if is_batch(data):
        return [data]
    if not isinstance(data, Iterable):
        raise LandscapeError(f"data must be a batch or an iterable of batches, got {type(data).__name__}")
    out = []
    for b in data:
        if len(out) >= max_batches:
            break
        out.append(b)
    if not out:
        raise LandscapeError("data yielded no batch (empty DataLoader?)")
    return out


def _per_batch(model: torch.nn.Module, data: Any, loss_fn: LossFn | None, params: Any, max_batches: int,
               adaptive: bool, progress: bool | None = None):
    """The batch loop of every sharpness measure: per batch, an eval-mode :class:`Objective`, the unperturbed
    weights ``theta`` (of the first batch, shared) and the perturbation scale; the weights are restored after
    each batch, whatever happens."""
    theta = scale = None
    for b in _progress(_batches(data, int(max_batches)), progress):
        obj = Objective(model, b, loss_fn, params=params, train_mode=False)
        if theta is None:
            theta = obj.get_vector()
            scale = adaptive_scale(theta, adaptive)
        try:
            yield obj, theta, scale
        finally:
            if not torch.equal(obj.get_vector(), theta):  # never leave the model perturbed
                obj.set_vector(theta)


def worst_case_sharpness(
    model: torch.nn.Module,
    data: Any,
    loss_fn: LossFn | None = None,
    *,
    rho: float = 0.5,
    p: int | str = 2,
    adaptive: bool = True,
    max_batches: int = 100,
    n_iters: int = 20,
    step_size_mult: float = 1.0,
    momentum: float = 0.75,
    min_update_ratio: float = 0.75,
    momentum_rule: str = "apgd",
    init: str = "zero",
    n_restarts: int = 1,
    seed: int = 0,
    params: Any = None,
    mask: Mapping[str, torch.Tensor] | None = None,
    progress: bool | None = None,
) -> SharpnessResult:
    """Adaptive (or plain) worst-case sharpness of ``model`` averaged over the first ``max_batches`` batches.

    ``data``: an iterable of batches (SharpBalance: a DataLoader of the training set without
    augmentation, ``batch_size=5``, seeded shuffle) or one batch. ``loss_fn``: the training loop's
    ``(model, batch)`` convention or a torch criterion ``(outputs, targets)`` (default: mean cross-entropy for
    integer targets). ``rho`` is the radius (SB default 0.5), ``p`` 2 or ``"inf"``. ``params`` selects the
    perturbed parameters (name patterns / predicate, default all trainable; see
    :class:`~htsr.landscape.objective.Objective`); ``mask`` (name -> 0/1 tensor) keeps pruned weights at zero as
    SB does for sparse models. ``seed`` drives ``init="random"`` only. The model runs in eval mode and its
    weights, buffers and mode are unchanged afterwards. A batch whose perturbed loss overflows makes the result
    ``status="failed"`` with a ``reason`` and a NaN sharpness.
    """
    rho = _check_rho(rho)
    p = _norm_p(p)
    if int(n_iters) < 1 or int(max_batches) < 1:
        raise ConfigError(f"n_iters and max_batches must be >= 1, got {n_iters}, {max_batches}")
    if momentum_rule not in ("apgd", "reference"):
        raise ConfigError(f"momentum_rule must be 'apgd' or 'reference', got {momentum_rule!r}")
    if init not in ("zero", "random"):
        raise ConfigError(f"init must be 'zero' or 'random', got {init!r}")
    if int(n_restarts) < 1 or (int(n_restarts) > 1 and init != "random"):
        raise ConfigError(f"n_restarts must be >= 1, and > 1 only with init='random' (got {n_restarts}, {init!r})")
    if not 0.0 <= float(momentum) <= 1.0 or not 0.0 <= float(min_update_ratio) <= 1.0:
        raise ConfigError("momentum and min_update_ratio must be in [0, 1]")
    if float(step_size_mult) <= 0:
        raise ConfigError(f"step_size_mult must be > 0, got {step_size_mult}")
    import pandas as pd

    gen = torch.Generator().manual_seed(int(seed))
    rows = []
    for obj, theta, scale in _per_batch(model, data, loss_fn, params, max_batches, adaptive, progress):
        rows.append(_apgd_batch(
            obj, theta, scale, _flat_mask(obj, mask), rho=rho, p=p, n_iters=int(n_iters),
            step_size_mult=float(step_size_mult), momentum=float(momentum), min_update_ratio=float(min_update_ratio),
            momentum_rule=momentum_rule, init=init, n_restarts=int(n_restarts), generator=gen))
    df = pd.DataFrame(rows)
    df.index.name = "batch"
    bad = df[df["status"] != "ok"]
    status, reason = ("ok", "") if bad.empty else (
        "failed", f"{len(bad)} of {len(df)} batches failed: {bad['reason'].iloc[0]}")
    err = float(df["error_increase"].mean()) if "error_increase" in df and bad.empty else float("nan")
    settings = dict(n_iters=int(n_iters), step_size_mult=float(step_size_mult), momentum=float(momentum),
                    min_update_ratio=float(min_update_ratio), momentum_rule=momentum_rule, init=init,
                    n_restarts=int(n_restarts), seed=int(seed), max_batches=int(max_batches),
                    mode="eval", method="APGD (weight space)")
    return SharpnessResult(
        sharpness=float(df["sharpness"].mean()) if bad.empty else float("nan"), error_increase=err, rho=rho, p=p,
        adaptive=bool(adaptive), n_batches=len(df), init_loss=float(df["init_loss"].mean()),
        max_delta_l2=float(df["delta_l2"].max()) if bad.empty else float("nan"), per_batch=df, settings=settings,
        status=status, reason=reason)


def sharpness_table(
    model: torch.nn.Module,
    data: Any,
    loss_fn: LossFn | None = None,
    *,
    rhos: Sequence[float] = (0.5,),
    ps: Sequence[int | str] = (2, "inf"),
    **kwargs: Any,
):
    """:func:`worst_case_sharpness` for every ``(p, rho)`` (SB's ``APGD`` mode loops over both norms and
    a list of radii). Returns a DataFrame with columns p, rho, adaptive, sharpness, error_increase,
    init_loss, max_delta_l2, n_batches, status, reason (a failed row has NaN numbers and says why)."""
    import pandas as pd

    if isinstance(rhos, (str, bytes)) or not isinstance(rhos, Sequence) or not rhos:
        raise ConfigError(f"rhos must be a non-empty list of numbers, got {rhos!r}")
    data = data if is_batch(data) else _batches(data, int(kwargs.get("max_batches", 100)))
    rows = []
    for p in ps:
        for rho in rhos:
            r = worst_case_sharpness(model, data, loss_fn, rho=rho, p=p, **kwargs)
            rows.append(dict(p=str(r.p), rho=r.rho, adaptive=r.adaptive, sharpness=r.sharpness,
                             error_increase=r.error_increase, init_loss=r.init_loss, max_delta_l2=r.max_delta_l2,
                             n_batches=r.n_batches, status=r.status, reason=r.reason))
    return pd.DataFrame(rows)


def average_sharpness(
    model: torch.nn.Module,
    data: Any,
    loss_fn: LossFn | None = None,
    *,
    rho: float = 0.5,
    p: int | str = 2,
    adaptive: bool = True,
    n_samples: int = 100,
    max_batches: int = 100,
    seed: int = 0,
    on_boundary: bool = False,
    params: Any = None,
) -> float:
    """Average-case sharpness (the reference's ``eval_average_sharpness``): mean over batches of
    ``mean_k L_B(theta + delta_k) - L_B(theta)`` with ``delta_k = rho scale N(0,1)`` (p=2) or
    ``rho scale U(-1,1)`` (p=inf), ``scale = |theta|`` if adaptive; seeded. ``on_boundary=True`` draws
    points on the surface of the worst-case set instead (a baseline for :func:`worst_case_sharpness`).
    A perturbed loss that overflows raises :class:`~htsr.landscape.objective.NonFiniteLossError` (a failed
    measurement), never a number."""
    rho = _check_rho(rho)
    p = _norm_p(p)
    if int(n_samples) < 1:
        raise ConfigError(f"n_samples must be >= 1, got {n_samples}")
    gen = torch.Generator().manual_seed(int(seed))
    vals = []
    for obj, theta, scale in _per_batch(model, data, loss_fn, params, max_batches, adaptive):
        base = obj.loss(theta)
        acc = 0.0
        for _ in range(int(n_samples)):
            acc += obj.loss(theta + random_perturbation(scale, rho, p, generator=gen, on_boundary=on_boundary))
        if not math.isfinite(acc) or not math.isfinite(base):
            raise NonFiniteLossError(f"average sharpness at rho={rho:g}: the loss at a perturbed point is not "
                                     "finite (the perturbation leaves the range where the loss is finite)")
        vals.append(acc / int(n_samples) - base)
    return float(np.mean(vals))


def _progress(items: list[Any], progress: bool | None):
    return progress_bar(progress, items, desc="sharpness", leave=False)
