"""Post-hoc unlearning of memorized sequences from any Hugging Face causal LM's MLP layers (TinyMem's 11 methods).

``unlearn(model, method, forget, retain, ratio=...)`` edits ``model`` in place and returns an
:class:`UnlearnReport` naming the neurons (neuron methods) or weight entries (weight methods) it changed.
Every input is validated (the method's config, ratio in (0, 1), non-empty forget set, recognisable MLP layers)
before any weight changes. Settings are one :class:`~htsr.memorization.config.UnlearnConfig` subclass per method
(:data:`UNLEARNING` maps names to them; defaults stated there once); ``unlearn(..., config=...)`` takes one.
Families: :mod:`.neuron` (Zero-Out, Activations, Slimming, Hard Concrete, Integrated Gradients),
:mod:`.weight` (Greedy, Durable, Durable-Aggregate, Second-Order Unlearning), :mod:`.subnet` (Subnet,
BalancedSubnet).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from htsr.memorization.config import REFERENCE_PROMPT_LEN, UNLEARNING, UnlearnConfig
from htsr.memorization.errors import MemorizationError
from htsr.memorization.mlp import MLP, find_mlps, mlp_param_names
from htsr.memorization.unlearning import neuron as N
from htsr.memorization.unlearning import subnet as S
from htsr.memorization.unlearning import weight as W
from htsr.memorization.unlearning.common import UnlearnReport, ablate_neurons, check_ids
from htsr.nn import eval_mode

NEURON_METHODS = tuple(n for n, c in UNLEARNING.items() if c.kind == "neuron")
WEIGHT_METHODS = tuple(n for n, c in UNLEARNING.items() if c.kind == "weight")
METHODS = UNLEARNING.names()
NEEDS_RETAIN = tuple(n for n, c in UNLEARNING.items() if c.needs_retain)

__all__ = ["METHODS", "NEEDS_RETAIN", "NEURON_METHODS", "UNLEARNING", "UnlearnConfig", "UnlearnReport",
           "WEIGHT_METHODS", "unlearn", "unlearn_config"]

Runner = Callable[[nn.Module, list[MLP], torch.Tensor, "torch.Tensor | None", Any, UnlearnReport, int], None]


def _neuron(score: Callable[..., list[torch.Tensor]]) -> Runner:
    def run(model, mlps, forget, retain, cfg, report, seed):
        ablate_neurons(model, mlps, score(model, mlps, forget, cfg, seed), cfg.ratio, report)
    return run


def _hp(cfg: UnlearnConfig, *names: str) -> dict[str, Any]:
    return {n: getattr(cfg, n) for n in names}


#: How each registered method runs (one entry per :data:`UNLEARNING` name; a test checks they match).
_RUNNERS: dict[str, Runner] = {
    "zero_out": _neuron(lambda m, mlps, f, c, s: N.zero_out_scores(m, mlps, f)),
    "activations": _neuron(lambda m, mlps, f, c, s: N.activation_scores(m, mlps, f, c.prompt_len)),
    "slimming": _neuron(lambda m, mlps, f, c, s: N.slimming_scores(
        m, mlps, f, seed=s, **_hp(c, "epochs", "lr", "lambda_l1", "stop_l1", "batch_size"))),
    "hard_concrete": _neuron(lambda m, mlps, f, c, s: N.hard_concrete_scores(
        m, mlps, f, seed=s, **_hp(c, "epochs", "lr", "lambda_l0", "stop_l0", "init_p", "batch_size"))),
    "integrated_gradients": _neuron(lambda m, mlps, f, c, s: N.integrated_gradients_scores(
        m, mlps, f, c.prompt_len, ig_steps=c.ig_steps)),
    "greedy": lambda m, mlps, f, r, c, rep, s: W.greedy(
        m, f, r, c.ratio, [n for n, _ in m.named_parameters()] if c.scope == "all" else mlp_param_names(m, mlps),
        rep, batch_size=c.batch_size, seed=s, max_iters=c.max_iters),
    "durable": lambda m, mlps, f, r, c, rep, s: W.durable(
        m, f, c.ratio, mlp_param_names(m, mlps), rep, aggregate=False, batch_size=c.batch_size),
    "durable_agg": lambda m, mlps, f, r, c, rep, s: W.durable(
        m, f, c.ratio, mlp_param_names(m, mlps), rep, aggregate=True, batch_size=c.batch_size),
    "second_order": lambda m, mlps, f, r, c, rep, s: W.second_order(
        m, f, c.ratio, mlp_param_names(m, mlps), rep, seed=s,
        **_hp(c, "block_size", "damp", "num_grads", "batch_size")),
    "subnet": lambda m, mlps, f, r, c, rep, s: S.subnet(
        m, mlps, f, r, c.ratio, rep, balanced=False, seed=s,
        **_hp(c, "epochs", "lr", "momentum", "weight_decay", "batch_size")),
    "balanced_subnet": lambda m, mlps, f, r, c, rep, s: S.subnet(
        m, mlps, f, r, c.ratio, rep, balanced=True, seed=s,
        **_hp(c, "epochs", "lr", "momentum", "weight_decay", "batch_size", "loss_weighting")),
}


def unlearn_config(method: str, config: UnlearnConfig | None = None, **overrides: Any) -> UnlearnConfig:
    """The config ``method`` runs with: ``config`` (or the method's defaults) with ``overrides`` applied; an unknown
    method, a config of another method, an unknown key or a bad value is a :class:`MemorizationError` /
    :class:`~htsr.errors.ConfigError` naming what is valid."""
    cls = UNLEARNING.get(method)
    if config is not None and type(config) is not cls:
        raise MemorizationError(f"config {type(config).__name__} is not the config of {method!r} ({cls.__name__})")
    base = config if config is not None else cls()
    return base.replace(**overrides) if overrides else base


def unlearn(model: nn.Module, method: str, forget: torch.Tensor, retain: torch.Tensor | None = None, *,
            ratio: float | None = None, seed: int = 0, config: UnlearnConfig | None = None,
            **hp: Any) -> UnlearnReport:
    """Unlearn the ``forget`` sequences (n, seq_len) from ``model`` in place with ``method``.

    Settings: ``config`` (the method's :class:`~htsr.memorization.config.UnlearnConfig` subclass, registered in
    :data:`UNLEARNING`; default: its defaults), overridden by ``ratio`` (the fraction of neurons per layer, of
    parameters for Greedy, or of weight entries to change, in (0, 1)) and by keyword hyper-parameters ``hp``
    (field names of the config; unknown ones are errors listing the valid ones). ``retain``: clean sequences to
    preserve (required by greedy and balanced_subnet). Every input is checked before any weight changes.
    """
    cfg = unlearn_config(method, config, **({"ratio": ratio} if ratio is not None else {}), **hp)
    forget = check_ids(model, forget, "forget")
    retain = check_ids(model, retain, "retain", required=cfg.needs_retain)
    if "prompt_len" in cfg.field_names():
        cfg = cfg.replace(prompt_len=cfg.prompt_len or REFERENCE_PROMPT_LEN)
        if not cfg.prompt_len < forget.shape[1]:
            raise MemorizationError(f"prompt length {cfg.prompt_len} must be in (0, {forget.shape[1]}) "
                                    "(the sequence length)")
    mlps = find_mlps(model)
    t0 = time.perf_counter()
    report = UnlearnReport(method, cfg.kind, cfg.ratio, settings={**cfg.to_dict(), "seed": seed})
    with eval_mode(model):  # the methods run the model in eval mode; every submodule's flag comes back afterwards
        _RUNNERS[method](model, mlps, forget, retain, cfg, report, seed)
    report.elapsed_s = time.perf_counter() - t0
    return report
