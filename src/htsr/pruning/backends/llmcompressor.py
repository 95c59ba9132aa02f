"""AlphaPruning's allocation applied by llmcompressor: htsr computes the per-layer sparsities, llmcompressor prunes.

:func:`prune_with_llmcompressor` takes the arguments of :func:`htsr.pruning.prune.prune_model` (settings in one
:class:`~htsr.pruning.config.PruneConfig`) and returns the same :class:`~htsr.pruning.prune.PruneReport`. htsr finds
the blocks and layers (:func:`htsr.nn.find_layout`), computes the metrics and the allocation
(:func:`~htsr.pruning.prune.allocate`: alpha, uniform or OWL), then runs ``llmcompressor.oneshot`` with
a ``WandaPruningModifier`` or ``SparseGPTModifier`` whose ``targets`` are the layers' full module paths and
whose ``sparsity`` is the matching per-layer list, on llmcompressor's ``sequential`` pipeline (one
subgraph per transformer block, the pruned block's outputs feeding the next, as htsr's own pruner does).
Calibration windows are handed over as an in-memory ``DataLoader`` of token ids: nothing is downloaded.

What llmcompressor 0.14 does differently (measured in ``benchmarks/bench_llmcompressor_parity.py``):

- Wanda: nothing; the same per-layer sparsities give the same masks and weights as htsr's pruner.
- SparseGPT: each 128-column block's mask is ``score <= sorted(score)[int(count*s)]`` (the reference
  code's threshold), one weight more per block than htsr's exactly ``int(count*s)``, so the achieved
  sparsity is higher by one weight per block and the error feedback then diverges slightly.
- Magnitude: llmcompressor's ``MagnitudePruningModifier`` is a training-time (scheduled, mask-on-step)
  modifier that prunes nothing in ``oneshot``; it is refused here (use the htsr backend).
- OWL: llmcompressor's own ``sparsity_profile="owl"`` fails in 0.14.0.1 ("Cannot invoke event before
  initializing", its activation pass runs before the session is initialised); ``allocation="owl"`` here
  is htsr's OWL allocation passed as a per-layer list.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from htsr.devices import model_device
from htsr.nn import eval_mode, find_layout, weight_2d
from htsr.pruning.backends import require
from htsr.pruning.config import PruneConfig, resolve
from htsr.pruning.errors import PruningError
from htsr.pruning.prune import (
    PruneReport,
    _check_calibration,
    _dense_pass,
    allocate,
    check_settings,
    layer_rows,
    owl_layer_stats,
    report_settings,
)

#: htsr pruner name -> llmcompressor modifier class (in ``llmcompressor.modifiers.pruning``)
MODIFIERS = {"wanda": "WandaPruningModifier", "sparsegpt": "SparseGPTModifier"}
#: model classes that llmcompressor 0.14.0.1 (with transformers 5.17) runs but calibrates wrongly, and why.
#: Checked against htsr's pruner: LLaMA, Qwen2, OPT, GPT-NeoX and BERT give identical Wanda masks.
MISCALIBRATED = {
    "MistralForCausalLM": "its sequential pipeline runs Mistral's attention without the causal mask (the layer "
                          "inputs it calibrates on equal full, non-causal attention; checked on a random "
                          "Mistral config, and without a sliding window too)",
}


class _TokenizedCalibration:
    """Stands for the processor that ``oneshot`` insists on whenever a dataset is given.

    The calibration data is a ``DataLoader`` of token ids, which llmcompressor uses as is: it never calls
    the processor then (it would only save it, and no ``output_dir`` is given).
    """


def check_pruner(pruner: str) -> str:
    """The llmcompressor modifier's class name for an htsr pruner name, or a :class:`PruningError`."""
    if pruner == "magnitude":
        raise PruningError("the llmcompressor backend has no one-shot magnitude pruner (llmcompressor's "
                           "MagnitudePruningModifier is a training-time modifier that prunes nothing in oneshot); "
                           "use --backend htsr for magnitude, or pruner wanda / sparsegpt")
    if pruner not in MODIFIERS:
        raise PruningError(f"unknown pruner {pruner!r}; the llmcompressor backend offers {', '.join(MODIFIERS)}")
    return MODIFIERS[pruner]


def check_supported(model: nn.Module, pruner: str, force: bool = False) -> tuple[Any, str]:
    """Refuse, before any weight changes, what this backend cannot prune; return (layout, block class name).

    Refused: other pruners than wanda/sparsegpt, models that are not ``PreTrainedModel``, prunable layers that
    are not ``nn.Linear`` (GPT-2's Conv1D: llmcompressor would skip them silently), mixed block classes, and
    the classes in :data:`MISCALIBRATED` (unless ``force``).
    """
    check_pruner(pruner)
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        raise PruningError(f"llmcompressor prunes Hugging Face models (PreTrainedModel); got {type(model).__name__}")
    layout = find_layout(model)
    other = [(n, type(m).__name__) for n, m in zip(layout.names, layout.modules(), strict=True)
             if not isinstance(m, nn.Linear)]
    if other:
        raise PruningError(f"llmcompressor does not support {type(model).__name__}: its Wanda/SparseGPT modifiers "
                           f"prune torch.nn.Linear layers only, and {other[0][0]} is a {other[0][1]} "
                           f"({len(other)} such layers); use --backend htsr")
    if type(model).__name__ in MISCALIBRATED and not force:
        raise PruningError(f"llmcompressor does not support {type(model).__name__}: "
                           f"{MISCALIBRATED[type(model).__name__]}; use --backend htsr (or force=True)")
    classes = {type(b).__name__ for b in layout.blocks}
    if len(classes) != 1:
        raise PruningError(f"the blocks of {layout.blocks_path} have several classes ({sorted(classes)}); the "
                           "llmcompressor backend needs one block class to trace the model block by block")
    return layout, classes.pop()


def _targets(model: nn.Module, layout: Any, config: PruneConfig, calibration_ids: Any, metrics: Any = None,
             analysis: Any = None) -> tuple:
    """Validate like ``prune_model`` and allocate: (resolved config, targets, metric used, imputed, ids)."""
    cfg = check_settings(layout, config)
    ids = _check_calibration(model, calibration_ids)
    if cfg.allocation == "owl":
        stats = owl_layer_stats(layout)
        with eval_mode(model):
            _dense_pass(model, layout, ids, stats)
        targets, used, imputed = allocate(model, layout, cfg, owl_stats=stats)
    else:
        targets, used, imputed = allocate(model, layout, cfg, metrics=metrics, analysis=analysis)
    return cfg, targets, used, imputed, ids


@contextlib.contextmanager
def _quiet(verbose: bool) -> Iterator[None]:
    """Mute llmcompressor's loguru messages for the duration of the call (unless ``verbose``), then restore."""
    if verbose:
        yield
        return
    from loguru import logger

    logger.disable("llmcompressor")
    try:
        yield
    finally:
        logger.enable("llmcompressor")


@contextlib.contextmanager
def _config_on_disk(model: nn.Module) -> Iterator[None]:
    """``oneshot`` re-reads ``config.json`` from ``model.config.name_or_path``; give an in-memory model a temporary
    one (removed afterwards, ``name_or_path`` restored)."""
    cfg = model.config
    if cfg.name_or_path:
        yield
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="htsr-llmc-") as d:
        cfg.to_json_file(str(Path(d) / "config.json"))
        cfg.name_or_path = d
        try:
            yield
        finally:
            cfg.name_or_path = ""


def _zero_counts(layout: Any) -> list[int]:
    return [int((weight_2d(m) == 0).sum()) for m in layout.modules()]


def prune_with_llmcompressor(
    model: nn.Module,
    sparsity: float | None = None,
    pruner: str | None = None,
    allocation: str | None = None,
    epsilon: float | None = None,
    calibration_ids: torch.Tensor | None = None,
    *,
    config: PruneConfig | dict[str, Any] | None = None,
    analysis: Any = None,
    metrics: Any = None,
    processor: Any = None,
    verbose: bool = False,
    force: bool = False,
    **settings: Any,
) -> PruneReport:
    """Prune ``model`` in place with llmcompressor's modifier and htsr's per-layer allocation.

    Arguments as :func:`htsr.pruning.prune.prune_model` (pruner: wanda | sparsegpt); ``processor`` is
    handed to ``oneshot`` (the model's tokenizer, optional); ``verbose`` keeps llmcompressor's log lines;
    ``force`` runs a model class listed in :data:`MISCALIBRATED` anyway.
    Raises :class:`~htsr.pruning.backends.MissingExtraError` when llmcompressor is not installed, and a
    :class:`~htsr.pruning.PruningError` for an unsupported model or bad input, before any weight changes.
    Afterwards the model carries what ``oneshot`` leaves on it: llmcompressor's ``save_pretrained`` wrapper
    (which also writes ``recipe.yaml``, the modifier with its per-layer list) and compressed-tensors' offloading
    bookkeeping; forward passes and saving work as usual.
    """
    t0 = time.perf_counter()
    cfg = resolve(config, sparsity=sparsity, pruner=pruner, allocation=allocation, epsilon=epsilon, **settings)
    llmc = require("llmcompressor")
    layout, block_class = check_supported(model, cfg.pruner, force)
    cfg, targets, used, imputed, ids = _targets(model, layout, cfg, calibration_ids, metrics, analysis)
    nm = cfg.nm
    import llmcompressor.modifiers.pruning as P
    from torch.utils.data import DataLoader

    kw: dict[str, Any] = {"sparsity": [float(s) for s in targets], "targets": list(layout.names),
                          "mask_structure": "0:0" if nm is None else f"{nm[1] - nm[0]}:{nm[1]}"}
    if cfg.pruner == "sparsegpt":
        kw.update(block_size=int(cfg.blocksize), dampening_frac=float(cfg.percdamp))
    modifier = getattr(P, MODIFIERS[cfg.pruner])(**kw)
    dev = model_device(model)
    data = DataLoader([{"input_ids": x, "attention_mask": torch.ones_like(x)} for x in ids.to(dev)], batch_size=1,
                      shuffle=False)
    proc = processor if processor is not None else _TokenizedCalibration()
    before = _zero_counts(layout)
    try:
        with eval_mode(model), _quiet(verbose), _config_on_disk(model):
            llmc.oneshot(model=model, dataset=data, recipe=modifier, processor=proc, pipeline="sequential",
                         sequential_targets=[block_class], output_dir=None, log_dir=None)
    except Exception as e:
        changed = _zero_counts(layout) != before
        state = ("the model is partly pruned: reload it" if changed else "no weights were changed")
        raise PruningError(f"llmcompressor could not prune {type(model).__name__} ({type(e).__name__}: {e}); "
                           f"{state}") from e
    rows, pruned, total = layer_rows(layout, targets, used)
    if pruned == sum(before) and any(int(r["shape"][1] * r["target_sparsity"]) > 0 for r in rows):
        raise PruningError("llmcompressor ran but pruned no weight (its modifier matched none of the layers)")
    settings_out = {"backend": "llmcompressor", "llmcompressor_version": getattr(llmc, "__version__", None),
                    "modifier": MODIFIERS[cfg.pruner],
                    **report_settings(model, layout, ids, cfg, metrics_given=metrics is not None,
                                      analysis_given=analysis is not None)}
    return PruneReport(rows, cfg.target, pruned / total, settings_out, imputed, time.perf_counter() - t0)


def modifier_recipe(report: PruneReport) -> dict:
    """The llmcompressor recipe equivalent to a report's allocation (for users who run ``oneshot`` themselves).

    ``{"<Modifier>": {"sparsity": [...], "targets": [...], "mask_structure": ...}}``, in layout order.
    """
    pruner = report.settings.get("pruner")
    if pruner not in MODIFIERS:
        raise PruningError(f"llmcompressor has no one-shot modifier for pruner {pruner!r}")
    nm = report.settings.get("nm")
    kw: dict[str, Any] = {"sparsity": [float(r["target_sparsity"]) for r in report.layers],
                          "targets": [r["name"] for r in report.layers],
                          "mask_structure": "0:0" if not nm else f"{nm[1] - nm[0]}:{nm[1]}"}
    if pruner == "sparsegpt":
        kw.update(block_size=int(report.settings.get("blocksize", 128)),
                  dampening_frac=float(report.settings.get("percdamp", 0.01)))
    return {MODIFIERS[pruner]: kw}


__all__ = ["MODIFIERS", "check_pruner", "check_supported", "modifier_recipe", "prune_with_llmcompressor"]
