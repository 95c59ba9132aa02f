"""Shared pieces of the unlearning methods: the report, input checks, batching, neuron ablation and hooks."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from htsr.devices import model_device
from htsr.memorization.errors import MemorizationError
from htsr.memorization.mlp import MLP
from htsr.nn import eval_mode, weight_2d


@dataclass
class UnlearnReport:
    """What an unlearning method changed.

    ``neurons``: down-projection name -> indices of the ablated neurons (neuron methods). ``weights``: parameter
    name -> flat indices of the changed (zeroed) entries (weight methods). ``scores``: per-layer neuron scores
    (neuron methods).
    """

    method: str
    kind: str
    ratio: float
    neurons: dict[str, list[int]] = field(default_factory=dict)
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0

    @property
    def n_changed(self) -> int:
        if self.kind == "neuron":
            return sum(len(v) for v in self.neurons.values())
        return int(sum(v.size for v in self.weights.values()))

    def to_dict(self) -> dict[str, Any]:
        return {"schema": "htsr.tinymem.unlearn/1", "method": self.method, "kind": self.kind, "ratio": self.ratio,
                "n_changed": self.n_changed, "neurons": self.neurons,
                "weights": {k: {"n_changed": int(v.size)} for k, v in self.weights.items()},
                "settings": self.settings, "elapsed_s": self.elapsed_s}


def check_ids(model: nn.Module, ids: torch.Tensor | None, what: str, required: bool = True) -> torch.Tensor | None:
    if ids is None:
        if required:
            raise MemorizationError(f"the {what} set is required by this method")
        return None
    ids = torch.as_tensor(ids)
    if ids.ndim != 2:
        raise MemorizationError(f"the {what} set must be (n, seq_len) token ids, got shape {tuple(ids.shape)}")
    if ids.shape[0] == 0:
        raise MemorizationError(f"the {what} set is empty (nothing memorized to unlearn)" if what == "forget"
                                else f"the {what} set is empty")
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab is not None and (int(ids.max()) >= vocab or int(ids.min()) < 0):
        raise MemorizationError(f"{what} token ids must be in [0, {vocab}), got [{int(ids.min())}, {int(ids.max())}]")
    return ids.long()


def batches(ids: torch.Tensor, batch_size: int, generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
    """Consecutive (or, with a generator, shuffled) mini-batches of rows."""
    order = torch.randperm(ids.shape[0], generator=generator) if generator is not None else torch.arange(ids.shape[0])
    for s in range(0, ids.shape[0], batch_size):
        yield ids[order[s:s + batch_size]]


def seq_ce(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """(batch,) mean next-token cross-entropy per sequence."""
    from htsr.memorization.training import lm_losses

    return lm_losses(model, ids.to(model_device(model)))


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Temporarily set requires_grad=False on every parameter (restored afterwards); eval mode."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        with eval_mode(model):
            yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)


@contextlib.contextmanager
def edit_activations(mlps: list[MLP], fn_by_layer: dict[int, Any]) -> Iterator[None]:
    """Replace each listed layer's neuron activations (the down-projection's input) by ``fn(act)``."""
    handles = []

    def make(fn):
        def hook(mod, args):
            return (fn(args[0]), *args[1:])
        return hook

    try:
        for i, fn in fn_by_layer.items():
            handles.append(mlps[i].down.register_forward_pre_hook(make(fn)))
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def record_activations(mlps: list[MLP]) -> Iterator[list[list[torch.Tensor]]]:
    """Collect each layer's neuron activations (detached) for every forward pass in the block."""
    store: list[list[torch.Tensor]] = [[] for _ in mlps]
    handles = [m.down.register_forward_pre_hook(lambda mod, args, i=i: store[i].append(args[0].detach()))
               for i, m in enumerate(mlps)]
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def n_top(ratio: float, n: int) -> int:
    """How many of ``n`` units the top-``ratio`` fraction holds (at least one)."""
    return max(1, min(n, int(ratio * n)))


@torch.no_grad()
def ablate_neurons(model: nn.Module, mlps: list[MLP], scores: list[torch.Tensor], ratio: float,
                   report: UnlearnReport) -> None:
    """In every layer, silence the top-``ratio`` neurons by score: zero their up-projection rows (gate and up for
    gated MLPs) and biases, as the reference (``apply_ablation_mask_to_base_model``) does for GPT-2's ``c_fc``.
    The activation functions of these models map 0 to 0 (ReLU, GELU, SiLU), so the neuron's output is 0."""
    for mlp, s in zip(mlps, scores, strict=True):
        s = torch.nan_to_num(s.detach().float().cpu(), nan=-math.inf)
        top = torch.topk(s, n_top(ratio, s.numel())).indices.sort().values
        for mod in mlp.ups.values():
            weight_2d(mod)[top, :] = 0
            b = getattr(mod, "bias", None)
            if b is not None:
                b[top] = 0
        report.neurons[mlp.down_name] = top.tolist()
