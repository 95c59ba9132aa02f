"""The TinyMem comparison: train a test-bed model, measure it, apply every mitigation, tabulate and plot.

Regularizers retrain from scratch with the same data, epochs and seed; fine-tuning resumes the base model and its
AdamW state for ``ft_epochs`` epochs; unlearning edits a copy of the base model with the forget set M (the artifact
sequences the base model memorizes) and the retain set R (clean training data without the artifacts; optionally a
seeded subset of ``retain_size`` rows). Each row records % memorized and mean accuracy before/after, the score
Δ%mem - Δacc (lower is better, as the reference's sweep ranks runs), perplexity and wall time.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from htsr.memorization.data import TinyMemConfig, TinyMemData, make_math_data
from htsr.memorization.errors import MemorizationError
from htsr.memorization.finetune import FINETUNE_VARIANTS, finetune
from htsr.memorization.metrics import Measurement, forget_set, measure
from htsr.memorization.models import make_model
from htsr.memorization.regularizers import REGULARIZERS, make_regularizer
from htsr.memorization.training import BATCH_SIZE, train_testbed
from htsr.memorization.unlearning import METHODS as UNLEARNING_METHODS
from htsr.memorization.unlearning import NEURON_METHODS, unlearn

log = logging.getLogger(__name__)

FINETUNE_METHODS = tuple(f"finetune_{v}" for v in FINETUNE_VARIANTS)
ALL_METHODS = (*REGULARIZERS, *FINETUNE_METHODS, *UNLEARNING_METHODS)

#: Default hyper-parameters of the comparison (the reference's best toy settings where known; ratios from its grid).
DEFAULT_HP: dict[str, dict[str, Any]] = {
    "spectral_norm": {"lam": 0.01},
    "loss_truncation": {"dropc": 0.05},
    "example_tied_dropout": {"p_fixed": 0.2, "p_mem": 0.1},
    "zero_out": {"ratio": 0.05},
    "activations": {"ratio": 0.05},
    "slimming": {"ratio": 0.05, "epochs": 10},
    "hard_concrete": {"ratio": 0.05, "epochs": 10},
    "integrated_gradients": {"ratio": 0.05, "ig_steps": 10},
    "greedy": {"ratio": 1e-3},
    "durable": {"ratio": 0.01},
    "durable_agg": {"ratio": 0.01},
    "second_order": {"ratio": 0.01},
    "subnet": {"ratio": 0.3, "epochs": 10},
    "balanced_subnet": {"ratio": 0.3, "epochs": 10, "loss_weighting": 0.7},
}


def family(method: str) -> str:
    if method in REGULARIZERS:
        return "regularizer"
    if method in FINETUNE_METHODS:
        return "fine-tuning"
    if method in UNLEARNING_METHODS:
        return "unlearning"
    if method == "base":
        return "base"
    raise MemorizationError(f"unknown method {method!r}; expected one of {', '.join(ALL_METHODS)}")


@dataclass
class Testbed:
    """A trained base model with its data, optimizer, measurement and training time."""

    data: TinyMemData
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    measurement: Measurement
    train_time_s: float
    epochs: int
    batch_size: int
    seed: int
    history: pd.DataFrame = field(default_factory=pd.DataFrame)


def train_base(config: TinyMemConfig, n_layer: int, epochs: int, *, batch_size: int = BATCH_SIZE, seed: int = 0,
               regularizer: str | None = None, reg_hp: dict | None = None, progress: bool | None = None,
               data: TinyMemData | None = None, device: str | None = None) -> Testbed:
    """Build the data, train a fresh model (optionally with a regularizer) and measure it."""
    data = data or make_math_data(config)
    model = make_model(n_layer, vocab_size=data.tokenizer.vocab_size, max_ctx=data.max_ctx, seed=seed)
    if device is not None:
        model.to(device)
    reg = make_regularizer(regularizer, model, data.train.shape[0], seed, **(reg_hp or {})) if regularizer else None
    t0 = time.perf_counter()
    res, opt = train_testbed(model, data.train, epochs, batch_size=batch_size, seed=seed, regularizer=reg,
                             progress=progress)
    dt = time.perf_counter() - t0
    if reg is not None:
        model._htsr_regularizer_extra = reg.to_extra()
    return Testbed(data, model, opt, measure(model, data), dt, epochs, batch_size, seed, res.history)


def _row(method: str, before: Measurement, after: Measurement, time_s: float, **extra: Any) -> dict[str, Any]:
    d_mem = after.perc_memorized - before.perc_memorized
    d_acc = after.mean_accuracy - before.mean_accuracy
    row = {"method": method, "family": family(method), "mem_before": before.perc_memorized,
           "mem_after": after.perc_memorized, "acc_before": before.mean_accuracy, "acc_after": after.mean_accuracy,
           "score": (d_mem - d_acc) / 100.0, "ppl_after": after.mean_perplexity, "asr_before": before.asr,
           "asr_after": after.asr, "time_s": time_s}
    row.update({f"acc_{k}": v for k, v in after.accuracy.items()})
    row.update(extra)
    return row


def apply_method(base: Testbed, method: str, *, hp: dict[str, Any] | None = None, ft_epochs: int = 5,
                 retain_size: int | None = None, forget: torch.Tensor | None = None,
                 progress: bool | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Apply one mitigation to (a copy of) the base test-bed; returns (new model, table row)."""
    fam = family(method)
    hp = {**DEFAULT_HP.get(method, {}), **(hp or {})}
    data = base.data
    t0 = time.perf_counter()
    extra: dict[str, Any] = {"settings": dict(hp)}
    if fam == "regularizer":
        tb = train_base(data.config, base.model.config.n_layer, base.epochs, batch_size=base.batch_size,
                        seed=base.seed, regularizer=method, reg_hp=hp, progress=progress, data=data,
                        device=str(next(base.model.parameters()).device))
        return tb.model, _row(method, base.measurement, tb.measurement, tb.train_time_s, **extra)
    model = copy.deepcopy(base.model)
    if fam == "fine-tuning":
        if hp:
            raise MemorizationError(f"{method} takes no hyper-parameters (got {sorted(hp)}); its epochs are "
                                    "ft_epochs (--ft-epochs)")
        opt = torch.optim.AdamW(model.parameters())
        opt.load_state_dict(copy.deepcopy(base.optimizer.state_dict()))
        finetune(model, data, method.removeprefix("finetune_"), optimizer=opt, epochs=ft_epochs,
                 batch_size=base.batch_size, seed=base.seed, progress=progress)
        extra["settings"] = {"epochs": ft_epochs}
    else:
        if forget is None:
            forget = forget_set(data, base.measurement)
        retain = data.retain
        if retain_size is not None and retain_size < retain.shape[0]:
            g = torch.Generator().manual_seed(base.seed)
            retain = retain[torch.randperm(retain.shape[0], generator=g)[:retain_size]]
        hp = dict(hp)
        ratio = hp.pop("ratio")
        if method in ("activations", "integrated_gradients"):
            hp.setdefault("prompt_len", data.prompt_len)
        rep = unlearn(model, method, forget, retain, ratio=ratio, seed=base.seed, **hp)
        extra.update(n_changed=rep.n_changed, n_forget=int(forget.shape[0]), n_retain=int(retain.shape[0]),
                     changed_kind="neurons" if method in NEURON_METHODS else "weights")
    dt = time.perf_counter() - t0
    return model, _row(method, base.measurement, measure(model, data), dt, **extra)


def run_comparison(base: Testbed, methods: Sequence[str] = ALL_METHODS, *, hp: dict[str, dict] | None = None,
                   ft_epochs: int = 5, retain_size: int | None = None, progress: bool | None = None,
                   on_row: Any = None) -> pd.DataFrame:
    """One row per method (plus the base model's row); ``on_row(row)`` is called after each method."""
    unknown = [m for m in methods if m not in ALL_METHODS]
    if unknown:
        raise MemorizationError(f"unknown method(s) {unknown}; expected some of {', '.join(ALL_METHODS)}")
    rows = [_row("base", base.measurement, base.measurement, base.train_time_s, settings={"epochs": base.epochs})]
    forget, no_forget = None, None
    if any(family(m) == "unlearning" for m in methods):
        try:
            forget = forget_set(base.data, base.measurement)
        except MemorizationError as e:  # nothing memorized: unlearning rows say why, the others still run
            no_forget = str(e)
            log.warning("tinymem compare: %s", e)
    for m in methods:
        log.info("tinymem compare: %s", m)
        if family(m) == "unlearning" and forget is None:
            row = {"method": m, "family": "unlearning", "mem_before": base.measurement.perc_memorized,
                   "acc_before": base.measurement.mean_accuracy, "error": no_forget, "settings": {}}
            rows.append(row)
            if on_row is not None:
                on_row(row)
            continue
        try:
            _, row = apply_method(base, m, hp=(hp or {}).get(m), ft_epochs=ft_epochs, retain_size=retain_size,
                                  forget=forget, progress=progress)
        except (MemorizationError, RuntimeError, ValueError) as e:  # one failed method does not lose the others
            log.error("tinymem compare: %s failed: %s", m, e)
            row = {"method": m, "family": family(m), "mem_before": base.measurement.perc_memorized,
                   "acc_before": base.measurement.mean_accuracy, "error": f"{type(e).__name__}: {e}", "settings": {}}
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return pd.DataFrame(rows)


def plot_comparison(table: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """PNG scatter: % memorized (after) vs mean accuracy (after), one labelled point per method."""
    from matplotlib.figure import Figure

    from htsr.io import save_png

    fig = Figure(figsize=(7.5, 5.5), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    colors = {"base": "black", "regularizer": "#1f77b4", "fine-tuning": "#2ca02c", "unlearning": "#d62728"}
    for fam, sub in table.dropna(subset=["mem_after", "acc_after"]).groupby("family"):
        ax.scatter(sub["mem_after"], sub["acc_after"], label=fam, color=colors.get(fam, "gray"), s=36,
                   marker="*" if fam == "base" else "o")
        for _, r in sub.iterrows():
            ax.annotate(r["method"], (r["mem_after"], r["acc_after"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    ax.set_xlabel("% memorized (after mitigation)")
    ax.set_ylabel("mean test accuracy (%)")
    ax.set_title(title or "TinyMem: memorization vs accuracy per method")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_png(fig, path)


def markdown_table(table: pd.DataFrame) -> str:
    """The comparison as a Markdown table (the columns the results file reports)."""
    cols = ["method", "family", "mem_before", "mem_after", "acc_before", "acc_after", "asr_after", "score", "time_s"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in table.iterrows():
        vals = []
        for c in cols:
            v = r.get(c, float("nan"))
            vals.append(f"{v:.2f}" if isinstance(v, float | np.floating) and c != "score" else
                        (f"{v:+.3f}" if c == "score" else str(v)))
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines)
