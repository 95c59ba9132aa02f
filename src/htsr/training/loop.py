"""The one training loop of htsr: every recipe (TempBalance, TinyMem, MD-tree populations, Bezier curves,
heavy-tail studies) trains through :func:`train`, and customises it with a ``loss_fn`` and callbacks.

Why not a framework (Lightning, HF Trainer)? Recipes need a few hundred lines of plain PyTorch with hooks
at step and epoch ends, closures for SAM-style optimizers and no global state; a framework would be a heavy
dependency for that. Hugging Face users get :mod:`htsr.tempbalance`'s Trainer callback instead.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from torch import nn

from htsr.devices import model_device
from htsr.errors import ConfigError, HtsrError, MeasurementError
from htsr.progress import progress_bar

log = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, Any], torch.Tensor]
EvalFn = Callable[[nn.Module, Iterable[Any]], Mapping[str, float]]


class TrainingError(HtsrError):
    """Training cannot go on (non-finite loss, empty data, bad batch)."""


class DivergedError(TrainingError, MeasurementError):
    """The loss became NaN/Inf: the run diverged (the input itself was usable)."""


@dataclass
class TrainState:
    """What callbacks see and may change (``stop = True`` ends training after the current step)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    epoch: int = 0
    step: int = 0
    stop: bool = False
    last_loss: float = math.nan
    train_time_s: float = 0.0
    callback_time_s: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)


class Callback:
    """Hooks called by :func:`train`; override what you need. ``logs`` is a dict you may add entries to
    (on_epoch_end's entries land in the history row)."""

    def on_train_begin(self, state: TrainState, logs: dict[str, Any]) -> None:
        """Before the first epoch."""

    def on_epoch_begin(self, state: TrainState, logs: dict[str, Any]) -> None:
        """At the start of each epoch."""

    def on_step_end(self, state: TrainState, logs: dict[str, Any]) -> None:
        """After each optimizer step (``logs['loss']`` is the batch loss)."""

    def on_epoch_end(self, state: TrainState, logs: dict[str, Any]) -> None:
        """After each epoch, after evaluation; entries added to ``logs`` go into the history row."""

    def on_train_end(self, state: TrainState, logs: dict[str, Any]) -> None:
        """After the last epoch (also when a callback stopped training)."""


@dataclass
class TrainResult:
    """``history``: one row per epoch (epoch, step, train_loss, eval metrics, lr, time_s, ...)."""

    history: pd.DataFrame
    state: TrainState

    @property
    def final(self) -> dict[str, Any]:
        """The last history row as a dict (empty if no epoch finished)."""
        return {} if self.history.empty else self.history.iloc[-1].to_dict()


def to_device(batch: Any, device: torch.device) -> Any:
    """A batch (tensor, mapping or tuple/list of them, nested) with every tensor moved to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple | list):
        return type(batch)(to_device(b, device) for b in batch)
    return batch


def default_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """Mean loss of a batch: ``(x, y)`` -> cross-entropy for integer ``y``, MSE for float ``y``;
    a mapping (Hugging Face style, with labels) -> ``model(**batch).loss``."""
    if isinstance(batch, Mapping):
        out = model(**batch)
        loss = getattr(out, "loss", None)
        if loss is None and isinstance(out, Mapping):
            loss = out.get("loss")
        if loss is None:
            raise TrainingError("the model returned no loss for a dict batch: include 'labels' in the batch "
                                "or pass loss_fn=")
        return loss
    if not isinstance(batch, tuple | list) or len(batch) != 2:
        raise TrainingError(f"default_loss expects (inputs, targets) batches or dicts, got {type(batch).__name__}; "
                            "pass loss_fn=(model, batch) -> loss")
    x, y = batch
    out = model(x)
    if y.dtype in (torch.int64, torch.int32, torch.int16, torch.uint8):
        return nn.functional.cross_entropy(out, y.long())
    return nn.functional.mse_loss(out, y.to(out.dtype))


def seeded_loader(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int,
                  shuffle: bool = True) -> torch.utils.data.DataLoader:
    """A DataLoader over ``(x[i], y[i])`` pairs whose shuffling order is fixed by ``seed`` (its own generator,
    the global RNG untouched), so that a training run is reproducible."""
    ds = torch.utils.data.TensorDataset(x, y)
    return torch.utils.data.DataLoader(ds, batch_size=int(batch_size), shuffle=shuffle,
                                       generator=torch.Generator().manual_seed(int(seed)))


@torch.no_grad()
def evaluate(model: nn.Module, data: Iterable[Any], loss_fn: LossFn | None = None,
             device: str | torch.device | None = None) -> dict[str, float]:
    """Mean loss (weighted by batch size) and, for ``(x, integer y)`` batches or dict batches with one integer
    ``labels`` entry per sample (sequence classification), accuracy; model in eval mode for the duration (its
    previous mode restored)."""
    loss_fn = loss_fn or default_loss
    device = torch.device(device) if device is not None else model_device(model)
    was_training = model.training
    model.eval()
    total, n, correct, n_cls = 0.0, 0, 0, 0
    try:
        for batch in data:
            batch = to_device(batch, device)
            bs = batch_size(batch)
            total += float(loss_fn(model, batch)) * bs
            n += bs
            if isinstance(batch, tuple | list) and len(batch) == 2 and not batch[1].is_floating_point():
                pred = model(batch[0]).argmax(dim=-1)
                correct += int((pred == batch[1]).sum())
                n_cls += int(batch[1].numel())
            elif isinstance(batch, Mapping) and _class_labels(batch.get("labels")):
                out = model(**{k: v for k, v in batch.items() if k != "labels"})
                pred = getattr(out, "logits", out).argmax(dim=-1)
                correct += int((pred == batch["labels"]).sum())
                n_cls += int(batch["labels"].numel())
    finally:
        model.train(was_training)
    if n == 0:
        raise TrainingError("evaluation data is empty")
    out = {"loss": total / n}
    if n_cls:
        out["accuracy"] = correct / n_cls
    return out


def _class_labels(y: Any) -> bool:
    return isinstance(y, torch.Tensor) and y.ndim == 1 and not y.is_floating_point()


def batch_size(batch: Any) -> int:
    """Number of samples in a batch: the leading dimension of its first tensor (1 when there is none)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.ndim else 1
    if isinstance(batch, Mapping):
        for v in batch.values():
            if isinstance(v, torch.Tensor) and v.ndim:
                return int(v.shape[0])
        return 1
    if isinstance(batch, tuple | list) and batch:
        return batch_size(batch[0])
    return 1



def _lrs(optimizer: torch.optim.Optimizer) -> float | list[float]:
    lrs = [float(g.get("lr", math.nan)) for g in optimizer.param_groups]
    return lrs[0] if len(set(lrs)) == 1 else lrs


def train(
    model: nn.Module,
    train_data: Iterable[Any],
    optimizer: torch.optim.Optimizer,
    *,
    loss_fn: LossFn | None = None,
    epochs: int | None = 1,
    max_steps: int | None = None,
    scheduler: Any | None = None,
    scheduler_interval: str = "epoch",
    callbacks: Sequence[Callback] = (),
    eval_data: Iterable[Any] | None = None,
    eval_fn: EvalFn | None = None,
    eval_every: int = 1,
    grad_clip: float | None = None,
    device: str | torch.device | None = None,
    progress: bool | None = None,
) -> TrainResult:
    """Train ``model`` for ``epochs`` or ``max_steps`` optimizer steps, whichever comes first
    (``epochs=None``: until ``max_steps``), and return the per-epoch history.

    ``loss_fn(model, batch)`` returns the scalar loss to minimise (default :func:`default_loss`).
    Optimizers with ``needs_closure = True`` (SAM) get ``step(closure)``; the closure recomputes the loss on the
    same batch and backpropagates. A non-finite loss stops training with :class:`TrainingError` naming the step.
    The loop itself adds no randomness: seed your DataLoader (``generator=``) and model initialisation.
    """
    if epochs is None and max_steps is None:
        raise ConfigError("give epochs or max_steps (both are None)")
    if epochs is not None and epochs < 1:
        raise ConfigError(f"epochs must be >= 1 or None, got {epochs}")
    if max_steps is not None and max_steps < 1:
        raise ConfigError(f"max_steps must be >= 1 or None, got {max_steps}")
    if scheduler_interval not in ("epoch", "step"):
        raise ConfigError(f"scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}")
    if eval_every < 1:
        raise ConfigError(f"eval_every must be >= 1, got {eval_every}")
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError("the model has no trainable parameters (all requires_grad=False)")
    loss_fn = loss_fn or default_loss
    device = torch.device(device) if device is not None else model_device(model)
    model.to(device)
    needs_closure = bool(getattr(optimizer, "needs_closure", False))
    params = [p for g in optimizer.param_groups for p in g["params"]]
    state = TrainState(model=model, optimizer=optimizer)
    cb_time = state.callback_time_s

    def call(hook: str, logs: dict[str, Any]) -> None:
        for cb in callbacks:
            t = time.perf_counter()
            getattr(cb, hook)(state, logs)
            key = type(cb).__name__
            cb_time[key] = cb_time.get(key, 0.0) + time.perf_counter() - t

    call("on_train_begin", {})
    n_epochs = epochs if epochs is not None else sys.maxsize
    bar = progress_bar(progress, total=max_steps if max_steps is not None else None, desc="train", unit="step",
                       leave=False)
    t_start = time.perf_counter()
    try:
        epoch = 0
        while epoch < n_epochs and not state.stop:
            state.epoch = epoch
            call("on_epoch_begin", {})
            model.train()
            t_epoch = time.perf_counter()
            loss_sum, n_seen, n_batches = 0.0, 0, 0
            for batch in train_data:
                batch = to_device(batch, device)
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model, batch)
                if loss.ndim != 0:
                    raise TrainingError(f"loss_fn must return a scalar, got shape {tuple(loss.shape)}")
                if not torch.isfinite(loss):
                    raise DivergedError(f"non-finite loss {float(loss.detach())} at epoch {epoch}, step {state.step}; "
                                        "lower the learning rate or check the data")
                loss.backward()
                if grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(params, grad_clip)
                if needs_closure:
                    def closure(batch: Any = batch) -> torch.Tensor:
                        optimizer.zero_grad(set_to_none=True)
                        second = loss_fn(model, batch)
                        second.backward()
                        if grad_clip is not None:
                            torch.nn.utils.clip_grad_norm_(params, grad_clip)
                        return second.detach()

                    optimizer.step(closure)
                else:
                    optimizer.step()
                if scheduler is not None and scheduler_interval == "step":
                    scheduler.step()
                state.step += 1
                bs = batch_size(batch)
                state.last_loss = float(loss.detach())
                loss_sum += state.last_loss * bs
                n_seen += bs
                n_batches += 1
                call("on_step_end", {"loss": state.last_loss, "batch_size": bs})
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(epoch=epoch, loss=f"{state.last_loss:.4g}")
                if state.stop or (max_steps is not None and state.step >= max_steps):
                    state.stop = True
                    break
            if n_batches == 0:
                raise TrainingError("the training data yielded no batch")
            if scheduler is not None and scheduler_interval == "epoch":
                scheduler.step()
            logs: dict[str, Any] = {"epoch": epoch, "step": state.step, "train_loss": loss_sum / max(n_seen, 1),
                                    "lr": _lrs(optimizer), "epoch_time_s": time.perf_counter() - t_epoch}
            if eval_data is not None and ((epoch + 1) % eval_every == 0 or state.stop or epoch + 1 == n_epochs):
                metrics = (eval_fn or (lambda m, d: evaluate(m, d, loss_fn=loss_fn, device=device)))(model, eval_data)
                logs.update({f"eval_{k}": float(v) for k, v in metrics.items()})
            call("on_epoch_end", logs)
            state.train_time_s = time.perf_counter() - t_start
            logs["time_s"] = state.train_time_s
            state.history.append(logs)
            epoch += 1
    finally:
        if bar is not None:
            bar.close()
    call("on_train_end", {})
    state.train_time_s = time.perf_counter() - t_start
    hist = pd.DataFrame(state.history)
    return TrainResult(history=hist, state=state)
