"""Prune Hugging Face transformer models block by block, and save the result.

One adapter finds the stack of transformer blocks (LLaMA/Mistral ``model.layers``, GPT-2
``transformer.h``, GPT-NeoX/Pythia ``gpt_neox.layers``, OPT ``model.decoder.layers``, BERT-style
``encoder.layer``) and the Linear / HF Conv1D layers inside each block (embeddings and the LM head
are never pruned, as in the references). Calibration is sequential as in Wanda/SparseGPT/AlphaPruning:
the inputs of block k+1 are the outputs of the already-pruned block k.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from htsr.devices import model_device
from htsr.progress import progress_bar
from htsr.pruning import allocation as A
from htsr.pruning.errors import PruningError
from htsr.pruning.pruners import NM, PRUNERS, LayerStats, check_nm, magnitude_prune, sparsegpt_prune, wanda_prune

log = logging.getLogger(__name__)

REPORT_SCHEMA = "htsr.pruning/1"
REPORT_FILE = "htsr_pruning_report.json"
ALLOCATIONS = ("alpha", "uniform", "owl")
#: ModuleList attribute names that hold transformer blocks, searched outermost first.
BLOCK_LIST_NAMES = ("layers", "layer", "h", "blocks")
#: metric name -> (analysis preset, row column)
METRICS = {"alpha_peak": ("alphapruning", "alpha"), "alpha_median": ("tempbalance", "alpha")}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
                   "merges.txt", "tokenizer.model", "added_tokens.json", "generation_config.json")


def _is_prunable(mod: nn.Module) -> bool:
    if isinstance(mod, nn.Linear):
        return True
    # transformers.pytorch_utils.Conv1D (GPT-2): weight (in, out), y = x @ W + b
    return type(mod).__name__ == "Conv1D" and hasattr(mod, "nf") and getattr(mod, "weight", None) is not None


def weight_2d(mod: nn.Module) -> torch.Tensor:
    """The (out, in) weight of a Linear or a view of an HF Conv1D's transposed weight (in-place edits stick)."""
    w = mod.weight.data
    return w if isinstance(mod, nn.Linear) else w.t()


@dataclass
class Layout:
    """Where a model's blocks are and which layers each block has (full module paths, in module order)."""

    blocks_path: str
    blocks: list[nn.Module]
    layers: list[dict[str, nn.Module]]

    @property
    def names(self) -> list[str]:
        return [n for blk in self.layers for n in blk]

    @property
    def block_ids(self) -> np.ndarray:
        return np.array([k for k, blk in enumerate(self.layers) for _ in blk], dtype=np.int64)

    def modules(self) -> list[nn.Module]:
        return [m for blk in self.layers for m in blk.values()]


def find_layout(model: nn.Module) -> Layout:
    """Locate the transformer blocks and their prunable layers, or raise a :class:`PruningError`."""
    candidates = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and name.split(".")[-1] in BLOCK_LIST_NAMES and len(mod) > 0:
            if all(any(_is_prunable(m) for m in blk.modules()) for blk in mod):
                candidates.append(name)
    if not candidates:
        raise PruningError(
            f"cannot find the transformer blocks of {type(model).__name__}: expected a ModuleList named "
            f"{'/'.join(BLOCK_LIST_NAMES)} whose blocks hold Linear layers (LLaMA/Mistral model.layers, GPT-2 "
            "transformer.h, GPT-NeoX gpt_neox.layers, OPT model.decoder.layers, BERT encoder.layer)")
    path = min(candidates, key=lambda n: n.count("."))  # outermost stack (not, e.g., an inner expert list)
    blocks = list(model.get_submodule(path))
    layers = []
    for k, blk in enumerate(blocks):
        layers.append({f"{path}.{k}.{n}": m for n, m in blk.named_modules() if n and _is_prunable(m)})
    return Layout(path, blocks, layers)


def _n_positions(model: nn.Module) -> int | None:
    cfg = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions"):
        v = getattr(cfg, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def _check_calibration(model: nn.Module, ids: Any) -> torch.Tensor:
    if ids is None:
        raise PruningError("this pruner/allocation needs calibration data: calibration_ids (nsamples, seqlen)")
    ids = torch.as_tensor(ids)
    if ids.dim() != 2 or ids.shape[0] < 1 or ids.shape[1] < 1:
        raise PruningError(f"calibration_ids must have shape (nsamples, seqlen), got {tuple(ids.shape)}")
    if ids.dtype not in (torch.int64, torch.int32):
        raise PruningError(f"calibration_ids must be integer token ids, got {ids.dtype}")
    n_pos = _n_positions(model)
    if n_pos is not None and ids.shape[1] > n_pos:
        raise PruningError(f"calibration seqlen {ids.shape[1]} exceeds the model's {n_pos} positions")
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if isinstance(vocab, int) and (int(ids.max()) >= vocab or int(ids.min()) < 0):
        raise PruningError(f"calibration token ids must be in [0, {vocab}), got [{int(ids.min())}, {int(ids.max())}]")
    return ids.long()



class _StopForward(Exception):
    """Raised by a hook to end a forward pass after the last block."""


class _Calls:
    """Each block's positional/keyword arguments per calibration sample (hidden state stripped), and block-0 inputs."""

    def __init__(self, n_blocks: int):
        self.extra: list[list[tuple[tuple, dict]]] = [[] for _ in range(n_blocks)]
        self.inputs: list[torch.Tensor] = []


def _hidden(args: tuple, kwargs: dict) -> tuple[torch.Tensor, tuple, dict]:
    if args:
        return args[0], args[1:], kwargs
    if "hidden_states" in kwargs:
        kw = dict(kwargs)
        return kw.pop("hidden_states"), (), kw
    raise PruningError("cannot find the hidden states among a block's inputs")


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def _forward_kwargs(model: nn.Module) -> dict:
    return {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}


@torch.no_grad()
def _dense_pass(model: nn.Module, layout: Layout, ids: torch.Tensor,
                stats: dict[str, LayerStats] | None) -> _Calls:
    """One dense forward per sample: record every block's call arguments, check activations are finite.

    With ``stats``, also accumulate each layer's input statistics (OWL). Nothing is modified.
    """
    calls = _Calls(len(layout.blocks))
    handles = []
    bad: list[str] = []

    def pre(k: int) -> Callable:
        def hook(mod, args, kwargs):
            h, rest, kw = _hidden(args, kwargs)
            if k == 0:
                calls.inputs.append(h.detach())
            calls.extra[k].append((tuple(rest), dict(kw)))
            if not bad and not bool(torch.isfinite(h).all()):
                bad.append(f"the inputs of block {k} ({layout.blocks_path}.{k})")
        return hook

    last = len(layout.blocks) - 1

    def post(k: int) -> Callable:
        def hook(mod, args, out):
            if not bad and not bool(torch.isfinite(_first(out)).all()):
                bad.append(f"the outputs of block {k} ({layout.blocks_path}.{k})")
            if k == last:
                raise _StopForward  # the head (e.g. vocabulary logits) is not needed
        return hook

    def layer_hook(st: LayerStats) -> Callable:
        return lambda mod, args, out: st.add_batch(args[0])

    try:
        for k, blk in enumerate(layout.blocks):
            handles.append(blk.register_forward_pre_hook(pre(k), with_kwargs=True))
            handles.append(blk.register_forward_hook(post(k)))
        if stats is not None:
            for name, mod in zip(layout.names, layout.modules(), strict=True):
                handles.append(mod.register_forward_hook(layer_hook(stats[name])))
        dev = model_device(model)
        fkw = _forward_kwargs(model)
        for i in range(ids.shape[0]):
            try:
                model(ids[i:i + 1].to(dev), **fkw)
            except _StopForward:
                pass
    finally:
        for h in handles:
            h.remove()
    if bad:
        raise PruningError(f"NaN/Inf activations in {bad[0]} of the dense model on the calibration data; "
                           "nothing was pruned")
    return calls


def _layer_metrics(model: nn.Module, layout: Layout, metric: str, metrics: Any) -> tuple[np.ndarray, list[str]]:
    """Per-layer metric values in layout order; failed fits are imputed with the mean (listed)."""
    names = layout.names
    if metrics is not None:
        if isinstance(metrics, dict):
            missing = [n for n in names if n not in metrics]
            if missing:
                raise PruningError(f"metrics missing for {len(missing)} layer(s), e.g. {missing[0]}")
            vals = np.array([float(metrics[n]) for n in names])
        else:
            vals = np.asarray(metrics, dtype=np.float64).reshape(-1)
            if vals.size != len(names):
                raise PruningError(f"metrics has {vals.size} values, the model has {len(names)} prunable layers")
    else:
        from htsr.spectra.analysis import analyze

        preset, column = METRICS.get(metric, ("alphapruning", metric))
        res = analyze(model, preset, layers=names, kinds=("linear", "hf_conv1d"))
        by_name = {r["name"]: r for r in res.rows}
        if metric not in METRICS and not any(column in r for r in res.rows):
            raise PruningError(f"unknown metric {metric!r}; expected alpha_peak, alpha_median or an analysis "
                               "column such as alpha_hat, stable_rank, log_norm, entropy")
        vals = np.full(len(names), math.nan)
        for i, n in enumerate(names):
            r = by_name.get(n)
            if r is not None and r["status"] in ("success", "failed") and r.get(column) is not None:
                vals[i] = float(r[column])  # NaN for a failed fit's alpha; rank metrics survive a failed fit
    bad = ~np.isfinite(vals)
    imputed = [n for n, b in zip(names, bad, strict=True) if b]
    if bad.all():
        raise PruningError(f"metric {metric!r} could not be computed for any layer")
    if bad.any():
        vals[bad] = float(np.mean(vals[~bad]))
        log.warning("metric %s failed for %d layer(s); using the mean for them", metric, len(imputed))
    return vals, imputed


@dataclass
class PruneReport:
    """What was pruned: per-layer target and achieved sparsity, the global figures and every setting."""

    layers: list[dict]
    target_sparsity: float
    achieved_sparsity: float
    settings: dict
    imputed_metric_layers: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    schema: str = REPORT_SCHEMA

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: str | Path) -> Path:
        """Write the report as JSON with the project's one atomic writer (NaN becomes null)."""
        from htsr.io import write_json

        return write_json(path, self.to_dict())


def allocate(model: nn.Module, layout: Layout, sparsity: float, allocation: str, epsilon: float, *,
             metric: str = "alpha_peak", metrics: Any = None, mapping: str = "block", max_ratio: float | None = None,
             owl_stats: dict[str, LayerStats] | None = None, owl_lambda: float = A.OWL_LAMBDA,
             owl_m: float = A.OWL_M) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """Per-layer sparsities (layout order), the per-layer metric used (or None), and imputed layers."""
    mods = layout.modules()
    params = np.array([weight_2d(m).numel() for m in mods], dtype=np.float64)
    if allocation == "uniform":
        return A.uniform_allocation(params, sparsity), None, []
    if allocation == "alpha":
        vals, imputed = _layer_metrics(model, layout, metric, metrics)
        blocks = layout.block_ids if mapping == "block" else None
        return A.alpha_allocation(vals, params, sparsity, epsilon, blocks=blocks, max_ratio=max_ratio), vals, imputed
    if allocation == "owl":
        assert owl_stats is not None
        ratios = []
        for blk in layout.layers:
            scores = [(weight_2d(m).abs().float() * torch.sqrt(owl_stats[n].col_sq_norm).reshape(1, -1)).cpu().numpy()
                      for n, m in blk.items()]
            ratios.append(A.outlier_ratio(scores, owl_m))
        bparams = np.array([sum(weight_2d(m).numel() for m in blk.values()) for blk in layout.layers], float)
        s_blocks = A.owl_allocation(ratios, bparams, sparsity, owl_lambda, max_ratio=max_ratio)
        return A.expand(s_blocks, layout.block_ids), A.expand(ratios, layout.block_ids), []
    raise PruningError(f"unknown allocation {allocation!r}; expected one of {', '.join(ALLOCATIONS)}")


def check_settings(layout: Layout, sparsity: float | None, allocation: str, mapping: str,
                   nm: NM | None) -> tuple[float, NM | None]:
    """Validate the allocation settings against the layout (shared by every backend); returns (sparsity, nm).

    An N:M pattern fixes every layer at 1 - N/M (uniform allocation only) and needs input dimensions
    divisible by M.
    """
    if allocation not in ALLOCATIONS:
        raise PruningError(f"unknown allocation {allocation!r}; expected one of {', '.join(ALLOCATIONS)}")
    if mapping not in ("block", "matrix"):
        raise PruningError(f"unknown mapping {mapping!r}; expected 'block' or 'matrix'")
    nm = check_nm(nm)
    if nm is not None:
        if allocation != "uniform":
            raise PruningError("an N:M pattern fixes every layer's sparsity at 1 - N/M: use allocation='uniform'")
        if sparsity is not None and abs(float(sparsity) - (1.0 - nm[0] / nm[1])) > 1e-12:
            raise PruningError(f"sparsity {sparsity} contradicts the {nm[0]}:{nm[1]} pattern (1 - N/M = "
                               f"{1.0 - nm[0] / nm[1]}); leave sparsity out")
        sparsity = 1.0 - nm[0] / nm[1]
        for name, mod in zip(layout.names, layout.modules(), strict=True):
            if weight_2d(mod).shape[1] % nm[1]:
                raise PruningError(f"{name}: input dimension {weight_2d(mod).shape[1]} is not a multiple of {nm[1]}")
    return A.check_sparsity(sparsity), nm


def layer_rows(layout: Layout, targets: Sequence[float], used: Sequence[float] | None) -> tuple[list[dict], int, int]:
    """The report's per-layer rows (target and achieved sparsity, metric) plus zero and total weight counts."""
    rows = []
    total = pruned = 0
    for i, (name, mod) in enumerate(zip(layout.names, layout.modules(), strict=True)):
        w = weight_2d(mod)
        z = int((w == 0).sum())
        total += w.numel()
        pruned += z
        rows.append({"name": name, "block": int(layout.block_ids[i]), "shape": list(w.shape), "params": w.numel(),
                     "target_sparsity": float(targets[i]), "achieved_sparsity": z / w.numel(),
                     "metric": None if used is None else float(used[i])})
    return rows, pruned, total


def prune_model(
    model: nn.Module,
    sparsity: float | None,
    pruner: str = "wanda",
    allocation: str = "alpha",
    epsilon: float = 0.3,
    calibration_ids: torch.Tensor | None = None,
    *,
    nm: NM | None = None,
    metric: str = "alpha_peak",
    metrics: Any = None,
    mapping: str = "block",
    max_ratio: float | None = None,
    owl_lambda: float = A.OWL_LAMBDA,
    owl_m: float = A.OWL_M,
    blocksize: int = 128,
    percdamp: float = 0.01,
    progress: bool | None = None,
) -> PruneReport:
    """Prune ``model`` in place: allocate per-layer sparsities, then prune block by block.

    Args:
        sparsity: global target in [0, 1) (parameter-weighted over the blocks' layers); None with ``nm``.
        pruner: magnitude | wanda | sparsegpt. allocation: alpha | uniform | owl.
        epsilon: AlphaPruning's relative band (see :func:`~htsr.pruning.allocation.alpha_allocation`).
        calibration_ids: (nsamples, seqlen) token ids; needed by wanda, sparsegpt and owl.
        nm: N:M pattern (n kept per m); every layer then gets sparsity 1 - n/m (uniform allocation only).
        metric: alpha_peak (default), alpha_median, or an analysis column (alpha_hat, stable_rank, ...);
            ``metrics`` passes precomputed per-layer values (dict by module path, or layout order).
        mapping: "block" (block-mean metric, the reference default) or "matrix".
        max_ratio: clip per-layer sparsities to [0, max_ratio] with the mean restored (None: error instead).
        progress: a tqdm bar over blocks (None: when stderr is a terminal).
    All inputs are validated, and the dense model checked for NaN/Inf activations, before any weight changes.
    """
    t0 = time.perf_counter()
    if pruner not in PRUNERS:
        raise PruningError(f"unknown pruner {pruner!r}; expected one of {', '.join(PRUNERS)}")
    layout = find_layout(model)
    sparsity, nm = check_settings(layout, sparsity, allocation, mapping, nm)
    needs_data = pruner != "magnitude" or allocation == "owl"
    was_training = model.training
    model.eval()
    try:
        calls = None
        owl_stats = None
        alloc_kw = dict(metric=metric, metrics=metrics, mapping=mapping, max_ratio=max_ratio, owl_lambda=owl_lambda,
                        owl_m=owl_m)
        if allocation != "owl":  # cheap checks first: a bad epsilon fails before any forward pass
            targets, used, imputed = allocate(model, layout, sparsity, allocation, epsilon, **alloc_kw)
        if needs_data:
            ids = _check_calibration(model, calibration_ids)
            if allocation == "owl":
                owl_stats = owl_layer_stats(layout)
            calls = _dense_pass(model, layout, ids, owl_stats)
        if allocation == "owl":
            targets, used, imputed = allocate(model, layout, sparsity, allocation, epsilon, owl_stats=owl_stats,
                                              **alloc_kw)
        target_of = dict(zip(layout.names, targets, strict=True))
        if pruner == "magnitude":
            for name, mod in zip(layout.names, layout.modules(), strict=True):
                magnitude_prune(weight_2d(mod), target_of[name], nm)
        else:
            _sequential(layout, calls, pruner, target_of, nm, blocksize, percdamp, progress)
    finally:
        model.train(was_training)
    rows, pruned, total = layer_rows(layout, targets, used)
    settings = report_settings(model, layout, calibration_ids, pruner=pruner, allocation=allocation, epsilon=epsilon,
                               nm=nm, metric=metric, metrics=metrics, mapping=mapping, max_ratio=max_ratio,
                               owl_lambda=owl_lambda, owl_m=owl_m, blocksize=blocksize, percdamp=percdamp)
    return PruneReport(rows, sparsity, pruned / total, settings, imputed, time.perf_counter() - t0)


def owl_layer_stats(layout: Layout) -> dict[str, LayerStats]:
    """Empty per-layer input-norm accumulators for OWL's outlier ratios, filled by the dense calibration pass."""
    return {n: LayerStats(weight_2d(m).shape[1], device=m.weight.device)
            for n, m in zip(layout.names, layout.modules(), strict=True)}


def report_settings(model: nn.Module, layout: Layout, calibration_ids: Any, *, pruner: str, allocation: str,
                    epsilon: float, nm: NM | None, metric: str, metrics: Any, mapping: str, max_ratio: float | None,
                    owl_lambda: float, owl_m: float, blocksize: int, percdamp: float) -> dict[str, Any]:
    """The settings a :class:`PruneReport` records (every backend's report has these keys)."""
    ids = None if calibration_ids is None else torch.as_tensor(calibration_ids)
    return {"pruner": pruner, "allocation": allocation, "epsilon": float(epsilon), "nm": list(nm) if nm else None,
            "metric": metric if allocation == "alpha" else ("outlier_ratio" if allocation == "owl" else None),
            "metrics_given": metrics is not None, "mapping": mapping, "max_ratio": max_ratio,
            "owl_lambda": owl_lambda, "owl_m": owl_m, "blocksize": blocksize, "percdamp": percdamp,
            "nsamples": None if ids is None else int(ids.shape[0]),
            "seqlen": None if ids is None else int(ids.shape[1]),
            "blocks_path": layout.blocks_path, "model_class": type(model).__name__}


@torch.no_grad()
def _sequential(layout: Layout, calls: _Calls, pruner: str, target_of: dict[str, float], nm: NM | None,
                blocksize: int, percdamp: float, progress: bool | None = None) -> None:
    """Wanda/SparseGPT: per block, collect layer inputs, prune, and recompute outputs with the pruned weights."""
    inps = calls.inputs
    for k, blk in enumerate(progress_bar(progress, layout.blocks, desc=f"{pruner} blocks", unit="block",
                                         leave=False)):
        layers = layout.layers[k]
        stats = {n: LayerStats(weight_2d(m).shape[1], hessian=pruner == "sparsegpt", device=m.weight.device)
                 for n, m in layers.items()}
        handles = [m.register_forward_hook(lambda mod, args, out, st=stats[n]: st.add_batch(args[0]))
                   for n, m in layers.items()]
        try:
            for h, (rest, kw) in zip(inps, calls.extra[k], strict=True):
                blk(h, *rest, **kw)
        finally:
            for h in handles:
                h.remove()
        for name, mod in layers.items():
            st = stats[name]
            if st.nonfinite:
                raise PruningError(f"NaN/Inf inputs to {name} after pruning the blocks before it")
            w = weight_2d(mod)
            if pruner == "wanda":
                wanda_prune(w, target_of[name], st.col_sq_norm, nm)
            else:
                sparsegpt_prune(w, target_of[name], st.H, nm, blocksize=blocksize, percdamp=percdamp)
        if k + 1 < len(layout.blocks):
            inps = [_first(blk(h, *rest, **kw)).detach() for h, (rest, kw) in zip(inps, calls.extra[k], strict=True)]


def load_model(model_dir: str | Path, dtype: torch.dtype | None = None) -> nn.Module:
    """Load an HF model directory: the causal-LM class when the config names one, else the base model."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise PruningError(f"{path} is not a Hugging Face model directory (no config.json)")
    cfg = AutoConfig.from_pretrained(str(path))
    archs = getattr(cfg, "architectures", None) or []
    causal = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
    cls = AutoModelForCausalLM if causal else AutoModel
    kw = {"dtype": dtype} if dtype is not None else {}
    return cls.from_pretrained(str(path), **kw).eval()


def save_pruned(model: nn.Module, out_dir: str | Path, report: PruneReport | None = None,
                source_dir: str | Path | None = None, overwrite: bool = False,
                config_updates: dict[str, Any] | None = None) -> Path:
    """Save the pruned model (safetensors, HF layout) and the JSON report into ``out_dir``.

    Written into a temporary sibling directory and renamed into place, so ``out_dir`` is either
    complete or absent; tokenizer files are copied from ``source_dir``; never writes into it.
    ``config_updates`` are set in the written ``config.json`` after ``save_pretrained`` (whichever the model
    carries: llmcompressor's wrapper rewrites that file from the source model's).
    """
    out = Path(out_dir).resolve()
    if source_dir is not None and Path(source_dir).resolve().is_relative_to(out):
        raise PruningError("the output directory is (or contains) the input model directory; choose another --out")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not overwrite)):
        raise PruningError(f"{out} exists and is not an empty directory (pass overwrite=True / --overwrite)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        model.save_pretrained(str(tmp))
        if config_updates:
            from htsr.io import write_json

            cfg = tmp / "config.json"
            write_json(cfg, {**json.loads(cfg.read_text(encoding="utf-8")), **config_updates})
        if source_dir is not None:
            for f in TOKENIZER_FILES:
                src = Path(source_dir) / f
                if src.is_file():
                    shutil.copy2(src, tmp / f)
        if report is not None:
            report.save(tmp / REPORT_FILE)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def sparsity_of(model: nn.Module, names: Sequence[str] | None = None) -> float:
    """Fraction of zero weights over the blocks' prunable layers (or the named modules)."""
    layout = find_layout(model)
    mods = [model.get_submodule(n) for n in names] if names is not None else layout.modules()
    z = sum(int((weight_2d(m) == 0).sum()) for m in mods)
    return z / sum(weight_2d(m).numel() for m in mods)
