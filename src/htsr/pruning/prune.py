"""Prune a model block by block (AlphaPruning, OWL or uniform layer sparsities; magnitude, Wanda or SparseGPT), load
and save Hugging Face model directories.

The transformer blocks and their Linear / HF Conv1D layers come from :func:`htsr.nn.find_layout` (LLaMA/Mistral
``model.layers``, GPT-2 ``transformer.h``, GPT-NeoX/Pythia ``gpt_neox.layers``, OPT ``model.decoder.layers``,
BERT-style ``encoder.layer``; embeddings and the LM head are never pruned, as in the references). Settings are one
:class:`~htsr.pruning.config.PruneConfig`; per-layer metrics come from an :class:`htsr.Analysis` (given, or computed
with :func:`htsr.analyze`) through :meth:`~htsr.Analysis.metric` with the ``mean`` NaN policy (a layer whose fit
failed gets the mean of the others and is listed in the report). Calibration is sequential as in
Wanda/SparseGPT/AlphaPruning: the inputs of block k+1 are the outputs of the already-pruned block k.
"""

from __future__ import annotations

import inspect
import json
import logging
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
from htsr.nn import Layout, eval_mode, find_layout, weight_2d
from htsr.progress import progress_bar
from htsr.pruning import allocation as A
from htsr.pruning.config import PruneConfig, resolve
from htsr.pruning.errors import PruningError
from htsr.pruning.pruners import NM, LayerStats, magnitude_prune, sparsegpt_prune, wanda_prune

log = logging.getLogger(__name__)

REPORT_SCHEMA = "htsr.pruning/1"
REPORT_FILE = "htsr_pruning_report.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
                   "merges.txt", "tokenizer.model", "added_tokens.json", "generation_config.json")


def n_positions(model_or_config: Any) -> int | None:
    """The number of positions a model (or its Hugging Face config, or that config as a dict) accepts, or None
    when it does not say."""
    cfg = getattr(model_or_config, "config", model_or_config)
    for key in ("max_position_embeddings", "n_positions"):
        v = cfg.get(key) if isinstance(cfg, dict) else getattr(cfg, key, None)
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
    n_pos = n_positions(model)
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


def layer_metrics(model: nn.Module, layout: Layout, config: PruneConfig, metrics: Any = None,
                  analysis: Any = None) -> tuple[np.ndarray, list[str]]:
    """Per-layer metric values in layout order and the layers whose value was imputed.

    ``metrics``: precomputed values (a dict by module path, or a sequence in layout order). Otherwise the values are
    ``analysis.metric(column, layout.names, policy="mean")`` of the ``analysis`` given, or of
    ``htsr.analyze(model, preset)`` for ``config.metric`` (a layer whose fit failed gets the mean of the others).
    """
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
        bad = ~np.isfinite(vals)
        if bad.all():
            raise PruningError(f"metric {config.metric!r}: none of the {len(names)} values given is finite")
        imputed = [n for n, b in zip(names, bad, strict=True) if b]
        if bad.any():
            vals[bad] = float(np.mean(vals[~bad]))
            log.warning("metric %s is not finite for %d layer(s); the mean of the others is used for them",
                        config.metric, len(imputed))
        return vals, imputed
    preset, column = config.analysis_preset()
    if analysis is None:
        from htsr.spectra.analysis import analyze

        analysis = analyze(model, preset, layers=names, kinds=("linear", "hf_conv1d"))
    else:
        given = (getattr(analysis, "metadata", None) or {}).get("preset")
        if given is not None and given != preset:
            log.warning("metric %s is defined with the %r preset; the analysis given was computed with %r",
                        config.metric, preset, given)
    from htsr.errors import ConfigError

    wanted = set(names)
    rows = [r for r in analysis.rows if r.get("name") in wanted or r.get("module") in wanted]
    if rows and not any(column in r for r in rows) and not any(r.get("status") == "success" for r in rows):
        why = "; ".join(f"{r['name']}: {r['status']}: {r.get('reason', '')}" for r in rows[:3])
        raise PruningError(f"metric {config.metric!r} could not be computed for any of the {len(rows)} layers "
                           f"({why}{' ...' if len(rows) > 3 else ''})")
    try:
        vec = analysis.metric(column, names, policy="mean")
    except ConfigError as e:
        if "has no column" in str(e):
            raise PruningError(f"unknown metric {config.metric!r} ({e}); expected alpha_peak, alpha_median or an "
                               "analysis column such as alpha_hat, stable_rank, log_norm, entropy") from None
        raise PruningError(f"metric {config.metric!r}: {e}") from None
    return vec.values.astype(np.float64), list(vec.imputed)


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


def allocate(model: nn.Module, layout: Layout, config: PruneConfig, *, metrics: Any = None, analysis: Any = None,
             owl_stats: dict[str, LayerStats] | None = None) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """Per-layer sparsities (layout order), the per-layer metric used (or None), and imputed layers."""
    mods = layout.modules()
    params = np.array([weight_2d(m).numel() for m in mods], dtype=np.float64)
    allocation, target = config.resolved_allocation, config.target
    if allocation == "uniform":
        return A.uniform_allocation(params, target), None, []
    if allocation == "alpha":
        vals, imputed = layer_metrics(model, layout, config, metrics, analysis)
        blocks = layout.block_ids if config.mapping == "block" else None
        return (A.alpha_allocation(vals, params, target, config.epsilon, blocks=blocks, max_ratio=config.max_ratio),
                vals, imputed)
    if allocation == "owl":
        if owl_stats is None:
            raise PruningError("the OWL allocation needs the calibration pass's layer statistics (owl_stats)")
        ratios = []
        for blk in layout.layers:
            scores = [(weight_2d(m).abs().float() * torch.sqrt(owl_stats[n].col_sq_norm).reshape(1, -1)).cpu().numpy()
                      for n, m in blk.items()]
            ratios.append(A.outlier_ratio(scores, config.owl_m))
        bparams = np.array([sum(weight_2d(m).numel() for m in blk.values()) for blk in layout.layers], float)
        s_blocks = A.owl_allocation(ratios, bparams, target, config.owl_lambda, max_ratio=config.max_ratio)
        return A.expand(s_blocks, layout.block_ids), A.expand(ratios, layout.block_ids), []
    raise PruningError(f"unknown allocation {allocation!r}")  # pragma: no cover (PruneConfig checks it)


def check_settings(layout: Layout, config: PruneConfig) -> PruneConfig:
    """Check the settings against the layout (shared by every backend): a target sparsity is given, and with an
    N:M pattern every layer's input dimension is a multiple of M. Returns the config with ``sparsity`` and
    ``allocation`` resolved."""
    target = config.target
    if config.nm is not None:
        m = config.nm[1]
        for name, mod in zip(layout.names, layout.modules(), strict=True):
            if weight_2d(mod).shape[1] % m:
                raise PruningError(f"{name}: input dimension {weight_2d(mod).shape[1]} is not a multiple of {m}")
    return config.replace(sparsity=target, allocation=config.resolved_allocation)


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
    sparsity: float | None = None,
    pruner: str | None = None,
    allocation: str | None = None,
    epsilon: float | None = None,
    calibration_ids: torch.Tensor | None = None,
    *,
    config: PruneConfig | dict[str, Any] | None = None,
    analysis: Any = None,
    metrics: Any = None,
    progress: bool | None = None,
    **settings: Any,
) -> PruneReport:
    """Prune ``model`` in place: allocate per-layer sparsities, then prune block by block.

    Args:
        sparsity: global target in [0, 1) (parameter-weighted over the blocks' layers); None with ``nm``.
        pruner: magnitude | wanda | sparsegpt. allocation: alpha | uniform | owl | auto.
        epsilon: AlphaPruning's relative band (see :func:`~htsr.pruning.allocation.alpha_allocation`).
        calibration_ids: (nsamples, seqlen) token ids; needed by wanda, sparsegpt and owl.
        config: a :class:`~htsr.pruning.config.PruneConfig` (or a dict of its fields); the arguments above and
            ``settings`` (any other field: ``nm``, ``metric``, ``mapping``, ``max_ratio``, ``owl_lambda``, ``owl_m``,
            ``blocksize``, ``percdamp``) override it when not None. Defaults: :class:`PruneConfig`'s.
        analysis: an :class:`htsr.Analysis` of ``model`` the caller already has; AlphaPruning reads its metric
            from it (``Analysis.metric(column, layers, policy="mean")``) instead of analysing the model again.
        metrics: precomputed per-layer values instead of an analysis (dict by module path, or layout order).
        progress: a tqdm bar over blocks (None: when stderr is a terminal).
    All inputs are validated, and the dense model checked for NaN/Inf activations, before any weight changes.
    """
    t0 = time.perf_counter()
    cfg = resolve(config, sparsity=sparsity, pruner=pruner, allocation=allocation, epsilon=epsilon, **settings)
    layout = find_layout(model)
    cfg = check_settings(layout, cfg)
    needs_data = cfg.pruner != "magnitude" or cfg.allocation == "owl"
    with eval_mode(model):
        calls = None
        owl_stats = None
        if cfg.allocation != "owl":  # cheap checks first: a bad epsilon fails before any forward pass
            targets, used, imputed = allocate(model, layout, cfg, metrics=metrics, analysis=analysis)
        if needs_data:
            ids = _check_calibration(model, calibration_ids)
            if cfg.allocation == "owl":
                owl_stats = owl_layer_stats(layout)
            calls = _dense_pass(model, layout, ids, owl_stats)
        if cfg.allocation == "owl":
            targets, used, imputed = allocate(model, layout, cfg, owl_stats=owl_stats)
        target_of = dict(zip(layout.names, targets, strict=True))
        if cfg.pruner == "magnitude":
            for name, mod in zip(layout.names, layout.modules(), strict=True):
                magnitude_prune(weight_2d(mod), target_of[name], cfg.nm)
        else:
            _sequential(layout, calls, cfg.pruner, target_of, cfg.nm, cfg.blocksize, cfg.percdamp, progress)
    rows, pruned, total = layer_rows(layout, targets, used)
    settings_out = report_settings(model, layout, calibration_ids, cfg, metrics_given=metrics is not None,
                                   analysis_given=analysis is not None)
    return PruneReport(rows, cfg.target, pruned / total, settings_out, imputed, time.perf_counter() - t0)


def owl_layer_stats(layout: Layout) -> dict[str, LayerStats]:
    """Empty per-layer input-norm accumulators for OWL's outlier ratios, filled by the dense calibration pass."""
    return {n: LayerStats(weight_2d(m).shape[1], device=m.weight.device)
            for n, m in zip(layout.names, layout.modules(), strict=True)}


def report_settings(model: nn.Module, layout: Layout, calibration_ids: Any, config: PruneConfig, *,
                    metrics_given: bool = False, analysis_given: bool = False) -> dict[str, Any]:
    """The settings a :class:`PruneReport` records (every backend's report has these keys)."""
    ids = None if calibration_ids is None else torch.as_tensor(calibration_ids)
    alloc = config.resolved_allocation
    return {"pruner": config.pruner, "allocation": alloc, "epsilon": float(config.epsilon),
            "nm": list(config.nm) if config.nm else None,
            "metric": config.metric if alloc == "alpha" else ("outlier_ratio" if alloc == "owl" else None),
            "metrics_given": metrics_given, "analysis_given": analysis_given, "mapping": config.mapping,
            "max_ratio": config.max_ratio, "owl_lambda": config.owl_lambda, "owl_m": config.owl_m,
            "blocksize": config.blocksize, "percdamp": config.percdamp,
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


def read_model_config(model_dir: str | Path) -> dict[str, Any]:
    """The ``config.json`` of a Hugging Face model directory as a dict (no weights read), or a one-line error."""
    path = Path(model_dir)
    f = path / "config.json"
    if not f.is_file():
        raise PruningError(f"{path} is not a Hugging Face model directory (no config.json)")
    try:
        cfg = json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PruningError(f"{f} is not a JSON config ({type(e).__name__}: {e})") from None
    if not isinstance(cfg, dict):
        raise PruningError(f"{f} holds a JSON {type(cfg).__name__}; expected an object")
    return cfg


def load_model(model_dir: str | Path, dtype: torch.dtype | None = None) -> nn.Module:
    """Load an HF model directory: the causal-LM class when the config names one, else the base model."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    from htsr.io import safe_text
    from htsr.spectra.reader import check_weights_dir

    path = Path(model_dir)
    read_model_config(path)
    check_weights_dir(path)  # every header and index validated by htsr's reader before transformers reads them
    try:
        cfg = AutoConfig.from_pretrained(str(path))
        archs = getattr(cfg, "architectures", None) or []
        causal = any(isinstance(a, str) and a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
        cls = AutoModelForCausalLM if causal else AutoModel
        kw = {"dtype": dtype} if dtype is not None else {}
        return cls.from_pretrained(str(path), **kw).eval()
    except (OSError, ValueError, KeyError, TypeError) as e:
        msg = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
        raise PruningError(f"{path}: transformers cannot load this model ({safe_text(msg)})") from None


def save_pruned(model: nn.Module, out_dir: str | Path, report: PruneReport | None = None,
                source_dir: str | Path | None = None, overwrite: bool = False,
                config_updates: dict[str, Any] | None = None) -> Path:
    """Save the pruned model (safetensors, HF layout) and the JSON report into ``out_dir``.

    Written by :func:`htsr.io.replace_dir`: a hidden sibling is filled and renamed into place, so ``out_dir`` is
    complete or absent; an existing non-empty ``out_dir`` is replaced only with ``overwrite`` and only when it is a
    previous htsr output (never the current directory, never through a symbolic link); ``out_dir`` must not be,
    lie inside or contain ``source_dir``. Tokenizer files are copied from ``source_dir``, which is never written.
    ``config_updates`` are set in the written ``config.json`` after ``save_pretrained`` (whichever the model
    carries: llmcompressor's wrapper rewrites that file from the source model's).
    """
    from htsr.io import replace_dir, write_json

    def fill(tmp: Path) -> None:
        model.save_pretrained(str(tmp))
        if config_updates:
            cfg = tmp / "config.json"
            write_json(cfg, {**json.loads(cfg.read_text(encoding="utf-8")), **config_updates})
        if source_dir is not None:
            for f in TOKENIZER_FILES:
                src = Path(source_dir) / f
                if src.is_file():
                    shutil.copy2(src, tmp / f)
        if report is not None:
            report.save(tmp / REPORT_FILE)

    return replace_dir(out_dir, fill, overwrite=overwrite, inputs=[source_dir] if source_dir is not None else [])


def sparsity_of(model: nn.Module, names: Sequence[str] | None = None) -> float:
    """Fraction of zero weights over the blocks' prunable layers (or the named modules)."""
    layout = find_layout(model)
    mods = [model.get_submodule(n) for n in names] if names is not None else layout.modules()
    z = sum(int((weight_2d(m) == 0).sum()) for m in mods)
    return z / sum(weight_2d(m).numel() for m in mods)
