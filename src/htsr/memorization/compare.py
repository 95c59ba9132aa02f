"""The TinyMem comparison: train a test-bed model, measure it, apply every mitigation, tabulate and plot.

Regularizers retrain from scratch with the same data, epochs and seed; fine-tuning resumes the base model and its
AdamW state for ``ft_epochs`` epochs; unlearning edits a copy of the base model with the forget set M (the artifact
sequences the base model memorizes) and the retain set R (clean training data without the artifacts; optionally a
seeded subset of ``retain_size`` rows). Each row records % memorized and mean accuracy before/after, the score
Δ%mem - Δacc (lower is better, as the reference's sweep ranks runs), perplexity and wall time.
"""

from __future__ import annotations

import copy
import functools
import logging
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from htsr.errors import MeasurementError
from htsr.memorization.config import (
    COMPARISON_OVERRIDES,
    FINETUNING,
    REGULARIZERS,
    UNLEARNING,
    FinetuneConfig,
    MitigationConfig,
    RegularizerConfig,
    TinyMemConfig,
    UnlearnConfig,
    mitigation_config,
)
from htsr.memorization.data import TinyMemData, make_math_data
from htsr.memorization.errors import MemorizationError
from htsr.memorization.finetune import finetune
from htsr.memorization.metrics import Measurement, forget_set, measure
from htsr.memorization.regularizers import make_regularizer
from htsr.memorization.testbed import make_model
from htsr.memorization.training import BATCH_SIZE, train_testbed
from htsr.memorization.unlearning import unlearn

log = logging.getLogger(__name__)

FINETUNE_METHODS = FINETUNING.names()
UNLEARNING_METHODS = UNLEARNING.names()
ALL_METHODS = (*REGULARIZERS.names(), *FINETUNE_METHODS, *UNLEARNING_METHODS)

__all__ = ["ALL_METHODS", "COMPARISON_OVERRIDES", "ComparisonFailed", "Testbed", "apply_method", "compare_cell",
           "comparison_configs", "family", "load_base", "markdown_table", "plot_comparison", "run_comparison",
           "train_base"]


def family(method: str) -> str:
    """"regularizer", "fine-tuning", "unlearning" or "base"."""
    if method == "base":
        return "base"
    return type(mitigation_config(method)).family


def comparison_configs(methods: Sequence[str], overrides: Mapping[str, Mapping[str, Any]] | None = None
                       ) -> dict[str, MitigationConfig]:
    """Each method's config as the comparison runs it: the method defaults, then the comparison's named
    :data:`~htsr.memorization.config.COMPARISON_OVERRIDES`, then ``overrides`` (method -> {field: value}).
    Every config is built (and checked) here, before any training."""
    overrides = dict(overrides or {})
    stray = sorted(set(overrides) - set(methods))
    if stray:
        raise MemorizationError(f"settings given for {', '.join(map(repr, stray))}, which is not among the methods "
                                f"run ({', '.join(methods)})")
    return {m: mitigation_config(m, {**COMPARISON_OVERRIDES.get(m, {}), **overrides.get(m, {})}) for m in methods}


class ComparisonFailed(MeasurementError):
    """Every method of a comparison failed; ``table`` holds the rows (with each ``error``)."""

    def __init__(self, message: str, table: pd.DataFrame) -> None:
        super().__init__(message)
        self.table = table


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
               regularizer: str | RegularizerConfig | None = None, reg_hp: dict | None = None,
               progress: bool | None = None, data: TinyMemData | None = None, device: str | None = None,
               lr: float = 1e-3) -> Testbed:
    """Build the data, train a fresh model (optionally with a regularizer, by name or config) and measure it."""
    data = data or make_math_data(config)
    model = make_model(n_layer, vocab_size=data.tokenizer.vocab_size, max_ctx=data.max_ctx, seed=seed)
    if device is not None:
        model.to(device)
    reg = make_regularizer(regularizer, model, data.train.shape[0], seed, **(reg_hp or {})) if regularizer else None
    t0 = time.perf_counter()
    res, opt = train_testbed(model, data.train, epochs, batch_size=batch_size, seed=seed, regularizer=reg,
                             progress=progress, lr=lr)
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


def _retain(data: TinyMemData, retain_size: int | None, seed: int) -> torch.Tensor:
    retain = data.retain
    if retain_size is None:
        return retain
    if not isinstance(retain_size, int) or isinstance(retain_size, bool) or retain_size < 1:
        raise MemorizationError(f"retain_size must be an integer >= 1 (a number of retain sequences), "
                                f"got {retain_size!r}")
    if retain_size < retain.shape[0]:
        g = torch.Generator().manual_seed(seed)
        retain = retain[torch.randperm(retain.shape[0], generator=g)[:retain_size]]
    return retain


def apply_method(base: Testbed, method: str, *, config: MitigationConfig | None = None,
                 hp: Mapping[str, Any] | None = None, retain_size: int | None = None,
                 forget: torch.Tensor | None = None, progress: bool | None = None
                 ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Apply one mitigation to (a copy of) the base test-bed; returns (new model, table row).

    Settings: ``config`` (the method's config; default: its defaults) with ``hp`` overrides. Fine-tuning batches
    as the base model was trained unless its config says otherwise; Activations and Integrated Gradients take the
    data's prompt length unless ``prompt_len`` is given."""
    cfg = config if config is not None else mitigation_config(method)
    if cfg.method != method:
        raise MemorizationError(f"config {type(cfg).__name__} is not the config of {method!r}")
    cfg = cfg.replace(**hp) if hp else cfg
    if "prompt_len" in cfg.field_names() and cfg.prompt_len is None:
        cfg = cfg.replace(prompt_len=base.data.prompt_len)
    data = base.data
    t0 = time.perf_counter()
    extra: dict[str, Any] = {"settings": cfg.to_dict()}
    if isinstance(cfg, RegularizerConfig):
        tb = train_base(data.config, base.model.config.n_layer, base.epochs, batch_size=base.batch_size,
                        seed=base.seed, regularizer=cfg, progress=progress, data=data,
                        device=str(next(base.model.parameters()).device))
        return tb.model, _row(method, base.measurement, tb.measurement, tb.train_time_s, **extra)
    model = copy.deepcopy(base.model)
    if isinstance(cfg, FinetuneConfig):
        opt = torch.optim.AdamW(model.parameters())
        opt.load_state_dict(copy.deepcopy(base.optimizer.state_dict()))
        cfg = cfg if cfg.batch_size is not None else cfg.replace(batch_size=base.batch_size)
        extra["settings"] = cfg.to_dict()
        finetune(model, data, method, optimizer=opt, config=cfg, seed=base.seed, progress=progress)
    else:
        assert isinstance(cfg, UnlearnConfig)
        if forget is None:
            forget = forget_set(data, base.measurement)
        retain = _retain(data, retain_size, base.seed)
        rep = unlearn(model, method, forget, retain, seed=base.seed, config=cfg)
        extra.update(n_changed=rep.n_changed, n_forget=int(forget.shape[0]), n_retain=int(retain.shape[0]),
                     changed_kind="neurons" if cfg.kind == "neuron" else "weights")
    dt = time.perf_counter() - t0
    return model, _row(method, base.measurement, measure(model, data), dt, **extra)


def _failed_row(base: Testbed, method: str, error: str, settings: dict[str, Any]) -> dict[str, Any]:
    return {"method": method, "family": family(method), "mem_before": base.measurement.perc_memorized,
            "acc_before": base.measurement.mean_accuracy, "error": error, "settings": settings}


def load_base_parts(path: str | Path, device: str | None = None) -> tuple[Any, dict[str, Any], Any, TinyMemConfig,
                                                                          TinyMemData]:
    """A saved test bed with its data config and data: (model, extra, optimizer, data config, data)."""
    from htsr.errors import SourceError
    from htsr.memorization.testbed import load_testbed

    model, extra, opt = load_testbed(path, with_optimizer=True)
    if not isinstance(extra.get("data"), dict):
        raise SourceError(f"{path} does not record its TinyMem data config")
    cfg = TinyMemConfig.from_dict(extra["data"])
    if device is not None:
        model.to(device)
    return model, extra, opt, cfg, make_math_data(cfg)


def testbed_of(path: str | Path, model: torch.nn.Module, extra: dict[str, Any], opt: Any, data: TinyMemData
               ) -> Testbed:
    """A :class:`Testbed` of a loaded checkpoint (measured now)."""
    from htsr.errors import SourceError
    from htsr.memorization.training import make_optimizer

    tr = extra.get("train", {})
    ok = isinstance(tr, dict) and all(isinstance(tr.get(k, 1), int) and not isinstance(tr.get(k, 1), bool)
                                      and tr.get(k, 1) >= (0 if k == "seed" else 1)
                                      for k in ("epochs", "batch_size", "seed"))
    if not ok:
        raise SourceError(f"{path}: checkpoint.json's train entry must hold integers epochs, batch_size >= 1 and "
                          f"seed >= 0, got {tr!r}")
    t = tr.get("time_s", float("nan"))
    return Testbed(data, model, opt if opt is not None else make_optimizer(model), measure(model, data),
                   float(t) if isinstance(t, int | float) else float("nan"), tr.get("epochs", 1),
                   tr.get("batch_size", 128), tr.get("seed", 0), pd.DataFrame())


def load_base(path: str | Path, device: str | None = None) -> Testbed:
    """The :class:`Testbed` of a saved base model (``htsr tinymem train`` or a comparison's ``base/``)."""
    model, extra, opt, _, data = load_base_parts(path, device)
    return testbed_of(path, model, extra, opt, data)


@functools.lru_cache(maxsize=2)
def _cached_base(path: str, device: str | None) -> Testbed:
    return load_base(path, device)


def compare_cell(method: str, *, base: Testbed | str, config: Mapping[str, Any], retain_size: int | None = None,
                 device: str | None = None, progress: bool | None = None
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
    """One cell of the comparison (for :func:`htsr.experiments.run_sweep`): apply ``method`` with ``config`` (its
    config as a dict) to ``base`` (a :class:`Testbed`, or the directory of a saved one, as a remote worker gets it);
    returns (table row without its settings, {"settings": ...}). Nothing memorized is a failed unlearning cell."""
    tb = base if isinstance(base, Testbed) else _cached_base(str(base), device)
    cfg = mitigation_config(method, dict(config))
    forget = forget_set(tb.data, tb.measurement) if family(method) == "unlearning" else None
    _, row = apply_method(tb, method, config=cfg, retain_size=retain_size, forget=forget, progress=progress)
    settings = row.pop("settings", cfg.to_dict())
    return row, {"settings": settings}


def run_comparison(base: Testbed, methods: Sequence[str] = ALL_METHODS, *,
                   configs: Mapping[str, MitigationConfig] | None = None,
                   hp: Mapping[str, Mapping[str, Any]] | None = None, retain_size: int | None = None,
                   progress: bool | None = None, on_row: Any = None, executor: Any = None,
                   base_dir: str | Path | None = None, store_dir: str | Path | None = None) -> pd.DataFrame:
    """One row per method (plus the base model's row); ``on_row(row)`` is called after each method.

    Settings: ``configs`` (method -> config), else :func:`comparison_configs` (method defaults, the comparison's
    overrides, then ``hp``). Each method is a cell of :func:`htsr.experiments.run_sweep` (``executor``:
    ``None``/``"local"`` in this process, ``"ray"`` or a Ray executor; a Ray worker loads the base model from
    ``base_dir``, a saved test bed it can read), recorded in ``store_dir`` (default: a temporary directory). A
    method that fails gets a row with its ``error`` and the others still run; when every method fails,
    :class:`~htsr.errors.MeasurementError` names the failures (the rows are passed to ``on_row`` first)."""
    from htsr.experiments import Cell, ResultStore, run_sweep
    from htsr.experiments.executors import LocalExecutor

    methods = list(methods)
    if not methods:
        raise MemorizationError(f"no method to compare; expected some of {', '.join(ALL_METHODS)}")
    unknown = [m for m in methods if m not in ALL_METHODS]
    if unknown:
        raise MemorizationError(f"unknown method(s) {unknown}; expected some of {', '.join(ALL_METHODS)}")
    cfgs = dict(configs) if configs is not None else comparison_configs(methods, hp)
    cfgs = {m: cfgs.get(m) or mitigation_config(m) for m in methods}
    retain_size = _retain(base.data, retain_size, base.seed).shape[0] if retain_size is not None else None
    local = executor is None or executor == "local" or isinstance(executor, LocalExecutor)
    if not local and base_dir is None:
        raise MemorizationError("a remote executor loads the base model from disk: give base_dir (a saved test bed, "
                                "e.g. the comparison's base/ directory)")
    if any(family(m) == "unlearning" for m in methods):
        try:
            forget_set(base.data, base.measurement)
        except MemorizationError as e:  # nothing memorized: unlearning rows say why, the others still run
            log.warning("tinymem compare: %s", e)
    device = str(next(base.model.parameters()).device)
    fn = functools.partial(compare_cell, base=base if local else str(base_dir), retain_size=retain_size,
                           device=device, progress=progress)
    from htsr.experiments.store import config_id

    configs_d = {m: cfgs[m].to_dict() for m in methods}
    cells = [Cell({"method": m, "config_id": config_id(configs_d[m])}) for m in methods]
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="htsr-tinymem-") as tmp:
        store = ResultStore(store_dir if store_dir is not None else tmp)

        def record(r: dict[str, Any]) -> None:
            m = r["method"]
            if r.get("status") == "ok":
                row = {k: v for k, v in r.items() if k not in ("key", "status", "wall_s", "config_id")}
                row["settings"] = store.details(r["key"]).get("settings", configs_d[m])
            else:
                log.error("tinymem compare: %s failed: %s", m, r.get("error"))
                row = _failed_row(base, m, str(r.get("error")), configs_d[m])
            rows[m] = row
            if on_row is not None:
                on_row(row)

        run_sweep(_MethodCell(fn, configs_d), cells, store, executor=executor, progress=False, on_row=record)
    table = pd.DataFrame([_row("base", base.measurement, base.measurement, base.train_time_s,
                               settings={"epochs": base.epochs}), *(rows[m] for m in methods if m in rows)])
    failures = [f"{m} ({rows[m]['error']})" for m in methods if m in rows and rows[m].get("error")]
    if len(failures) == len(methods):
        raise ComparisonFailed(f"every method failed: {'; '.join(failures)}", table)
    return table


class _MethodCell:
    """A cell function taking ``(method, config_id)`` as the sweep's parameters, with each method's config held
    here (picklable for any executor)."""

    def __init__(self, fn: Any, configs: Mapping[str, Mapping[str, Any]]) -> None:
        self.fn = fn
        self.configs = dict(configs)

    def __call__(self, *, method: str, config_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
        metrics, details = self.fn(method, config=self.configs[method])
        metrics = {k: v for k, v in metrics.items() if k != "method"}
        return metrics, details


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
