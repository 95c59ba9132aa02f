"""Post-hoc unlearning of memorized sequences from any Hugging Face causal LM's MLP layers (TinyMem's 11 methods).

``unlearn(model, method, forget, retain, ratio=...)`` edits ``model`` in place and returns an
:class:`UnlearnReport` naming the neurons (neuron methods) or weight entries (weight methods) it changed.
Every input is validated (ratio in (0, 1), non-empty forget set, recognisable MLP layers) before any weight
changes. Families: :mod:`.neuron` (Zero-Out, Activations, Slimming, Hard Concrete, Integrated Gradients),
:mod:`.weight` (Greedy, Durable, Durable-Aggregate, Second-Order Unlearning), :mod:`.subnet` (Subnet,
BalancedSubnet).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from htsr.memorization.errors import MemorizationError
from htsr.memorization.models import find_mlps, mlp_param_names
from htsr.memorization.unlearning import neuron as N
from htsr.memorization.unlearning import subnet as S
from htsr.memorization.unlearning import weight as W
from htsr.memorization.unlearning.common import UnlearnReport, ablate_neurons, check_ids, check_ratio

NEURON_METHODS = ("zero_out", "activations", "slimming", "hard_concrete", "integrated_gradients")
WEIGHT_METHODS = ("greedy", "durable", "durable_agg", "second_order", "subnet", "balanced_subnet")
METHODS = NEURON_METHODS + WEIGHT_METHODS
NEEDS_RETAIN = ("greedy", "balanced_subnet")
#: Hyper-parameters each method accepts (beyond ratio and seed), with defaults.
HYPERPARAMETERS: dict[str, dict[str, Any]] = {
    "zero_out": {},
    "activations": {"prompt_len": 50},
    "slimming": {"epochs": 10, "lr": 0.1, "lambda_l1": 1000.0, "stop_l1": 0.1, "batch_size": 64},
    "hard_concrete": {"epochs": 10, "lr": 0.1, "lambda_l0": 1000.0, "stop_l0": 0.1, "init_p": 0.5, "batch_size": 64},
    "integrated_gradients": {"prompt_len": 50, "ig_steps": 20},
    "greedy": {"batch_size": 64, "scope": "all", "max_iters": None},
    "durable": {"batch_size": 64},
    "durable_agg": {"batch_size": 64},
    "second_order": {"block_size": 50, "damp": 1e-7, "num_grads": 512, "batch_size": 1},
    "subnet": {"epochs": 10, "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 64},
    "balanced_subnet": {"epochs": 10, "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 64,
                        "loss_weighting": 0.05},
}

__all__ = ["HYPERPARAMETERS", "METHODS", "NEURON_METHODS", "UnlearnReport", "WEIGHT_METHODS", "unlearn"]


def unlearn(model: nn.Module, method: str, forget: torch.Tensor, retain: torch.Tensor | None = None, *,
            ratio: float, seed: int = 0, **hp: Any) -> UnlearnReport:
    """Unlearn the ``forget`` sequences (n, seq_len) from ``model`` in place with ``method``.

    ``ratio``: the fraction of neurons per layer (neuron methods), of parameters (Greedy: ratio x #params
    iterations) or of weight entries (the others) to change, in (0, 1). ``retain``: clean sequences to preserve
    (required by greedy and balanced_subnet). Other keyword arguments: see :data:`HYPERPARAMETERS`.
    """
    if method not in METHODS:
        raise MemorizationError(f"unknown unlearning method {method!r}; expected one of {', '.join(METHODS)}")
    unknown = sorted(set(hp) - set(HYPERPARAMETERS[method]))
    if unknown:
        raise MemorizationError(f"{method} takes no hyper-parameter(s) {unknown}; expected "
                                f"{sorted(HYPERPARAMETERS[method]) or 'none'}")
    ratio = check_ratio(ratio)
    forget = check_ids(model, forget, "forget")
    retain = check_ids(model, retain, "retain", required=method in NEEDS_RETAIN)
    settings = {**HYPERPARAMETERS[method], **hp}
    if "prompt_len" in settings and not 0 < settings["prompt_len"] < forget.shape[1]:
        raise MemorizationError(f"prompt length {settings['prompt_len']} must be in (0, {forget.shape[1]}) "
                                "(the sequence length)")
    if method == "greedy" and settings["scope"] not in ("all", "mlp"):
        raise MemorizationError(f"greedy scope must be 'all' or 'mlp', got {settings['scope']!r}")
    mlps = find_mlps(model)
    t0 = time.perf_counter()
    kind = "neuron" if method in NEURON_METHODS else "weight"
    report = UnlearnReport(method, kind, ratio, settings={**settings, "seed": seed})
    was = model.training
    try:
        if kind == "neuron":
            if method == "zero_out":
                scores = N.zero_out_scores(model, mlps, forget)
            elif method == "activations":
                scores = N.activation_scores(model, mlps, forget, settings["prompt_len"])
            elif method == "slimming":
                scores = N.slimming_scores(model, mlps, forget, seed=seed, **hp)
            elif method == "hard_concrete":
                scores = N.hard_concrete_scores(model, mlps, forget, seed=seed, **hp)
            else:
                scores = N.integrated_gradients_scores(model, mlps, forget, settings["prompt_len"],
                                                       ig_steps=settings["ig_steps"])
            ablate_neurons(model, mlps, scores, ratio, report)
        elif method == "greedy":
            names = [n for n, _ in model.named_parameters()] if settings["scope"] == "all" \
                else mlp_param_names(model, mlps)
            W.greedy(model, forget, retain, ratio, names, report, batch_size=settings["batch_size"], seed=seed,
                     max_iters=settings["max_iters"])
        elif method in ("durable", "durable_agg"):
            W.durable(model, forget, ratio, mlp_param_names(model, mlps), report, aggregate=method == "durable_agg",
                      batch_size=settings["batch_size"])
        elif method == "second_order":
            W.second_order(model, forget, ratio, mlp_param_names(model, mlps), report, seed=seed, **hp)
        else:
            S.subnet(model, mlps, forget, retain, ratio, report, balanced=method == "balanced_subnet", seed=seed,
                     **hp)
    finally:
        model.train(was)
    report.elapsed_s = time.perf_counter() - t0
    return report
