"""Export a pruned model in the compressed-tensors format (the checkpoint layout llmcompressor writes and vLLM reads).

The weights stay dense (zeros included) in safetensors; ``config.json`` gains a ``quantization_config``
block with ``quant_method: compressed-tensors`` and ``format: dense``, and, when every pruned layer has
the 2:4 pattern, a ``sparsity_config`` built with compressed-tensors' own schema
(``format: dense``, ``sparsity_structure: "2:4"``, ``targets: ["Linear"]``, ``ignore``: the linear
layers that were not pruned, e.g. ``lm_head``). That block is how a server is told which layers are
2:4 (vLLM's CUTLASS 2:4 integration read exactly these fields). The directory is written by
:func:`htsr.pruning.prune.save_pruned` (atomic; tokenizer files and the htsr report beside it) and
reloads with ``transformers.AutoModelForCausalLM.from_pretrained`` when compressed-tensors is installed.

Compatibility, as of compressed-tensors 0.19/0.20 and vLLM's 2026 releases (see docs/pruning.md):
compressed-tensors no longer ships sparse (bitmask) compressors and writes ``sparsity_config: {}``
itself, so the bitmask storage formats (``sparse-bitmask``, ``sparse-24-bitmask``) are not offered
here; vLLM v0.19.1 and later removed its 2:4 kernels and refuses checkpoints that mark 2:4 layers.
``mark_sparsity=False`` writes the block without ``sparsity_config`` targets for those servers.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from htsr.nn import find_layout, is_linear_like, weight_2d
from htsr.pruning.backends import require
from htsr.pruning.errors import PruningError
from htsr.pruning.prune import PruneReport, save_pruned, sparsity_of

FORMATS = ("hf", "compressed-tensors")
STRUCTURES = ("auto", "2:4", "unstructured")


def is_nm(w: torch.Tensor, n: int = 2, m: int = 4) -> bool:
    """True when every group of ``m`` consecutive input weights of each row of ``w`` (out, in) has <= ``n`` nonzeros."""
    if w.dim() != 2 or w.shape[1] % m:
        return False
    return bool(((w.reshape(w.shape[0], -1, m) != 0).sum(-1) <= n).all())


def sparsity_structure(model: nn.Module) -> str:
    """``"2:4"`` if every prunable layer of the model's blocks has the 2:4 pattern, else ``"unstructured"``."""
    return "2:4" if all(is_nm(weight_2d(m)) for m in find_layout(model).modules()) else "unstructured"


def _check_structure(model: nn.Module, structure: str) -> str:
    if structure not in STRUCTURES:
        raise PruningError(f"unknown sparsity structure {structure!r}; expected one of {', '.join(STRUCTURES)}")
    layout = find_layout(model)
    if structure == "2:4":
        for name, mod in zip(layout.names, layout.modules(), strict=True):
            if not is_nm(weight_2d(mod)):
                raise PruningError(f"{name} does not have the 2:4 pattern (at most 2 nonzeros in every 4 consecutive "
                                   "input weights); prune with --nm 2:4, or export with structure 'unstructured'")
        return structure
    if structure == "auto":
        return sparsity_structure(model)
    return structure


def _dense_linears(model: nn.Module) -> list[str]:
    """Linear / HF Conv1D modules outside the pruned blocks (embeddings' projections, the LM head): never sparse."""
    pruned = set(find_layout(model).names)
    return [n for n, m in model.named_modules() if n and is_linear_like(m) and n not in pruned]


def compressed_tensors_config(model: nn.Module, structure: str = "auto", mark_sparsity: bool | None = None) -> dict:
    """The ``quantization_config`` block of a compressed-tensors checkpoint for this (pruned, dense-stored) model.

    Args:
        structure: ``auto`` (2:4 if every pruned layer is 2:4), ``2:4`` (required: error otherwise) or
            ``unstructured``.
        mark_sparsity: write a ``sparsity_config`` naming the sparse layers; default: only for 2:4, the one
            structure a server has kernels for.
    """
    return _ct_block(model, structure, mark_sparsity)[0]


def _ct_block(model: nn.Module, structure: str, mark_sparsity: bool | None) -> tuple[dict, str]:
    ct = require("compressed_tensors")
    from compressed_tensors.config import SparsityCompressionConfig

    struct = _check_structure(model, structure)
    if mark_sparsity is None:
        mark_sparsity = struct == "2:4"
    global_sparsity = sparsity_of(model)
    block: dict[str, Any] = {"quant_method": "compressed-tensors", "format": "dense", "version": ct.__version__,
                             "sparsity_config": {}}
    if mark_sparsity:
        sc = SparsityCompressionConfig.load_from_registry(
            "dense", global_sparsity=global_sparsity, sparsity_structure=struct, targets=["Linear"],
            ignore=_dense_linears(model))
        block["sparsity_config"] = sc.model_dump()
    return block, struct


def export_compressed_tensors(
    model: nn.Module,
    out_dir: str | Path,
    report: PruneReport | None = None,
    source_dir: str | Path | None = None,
    *,
    structure: str = "auto",
    mark_sparsity: bool | None = None,
    overwrite: bool = False,
) -> Path:
    """Save ``model`` as a compressed-tensors checkpoint (dense storage, sparsity metadata) into ``out_dir``.

    Same directory contract as :func:`~htsr.pruning.prune.save_pruned` (atomic, tokenizer files copied
    from ``source_dir``, never writes into it). The model is left unchanged.
    The report, when given, is written with an ``export`` entry in its settings.
    """
    hfq = getattr(model, "hf_quantizer", None)
    if hfq is not None and type(hfq).__name__ != "CompressedTensorsHfQuantizer":
        raise PruningError(f"the model is quantized by {type(hfq).__name__}; the compressed-tensors export writes "
                           "dense weights and needs an unquantized model")
    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(model, "save_pretrained"):
        raise PruningError(f"{type(model).__name__} is not a Hugging Face model (no config / save_pretrained)")
    qc, struct = _ct_block(model, structure, mark_sparsity)
    if report is not None:
        export = {"format": "compressed-tensors", "compressed_tensors_version": qc["version"],
                  "sparsity_structure": struct, "sparsity_config_written": bool(qc["sparsity_config"])}
        report = dataclasses.replace(report, settings={**report.settings, "export": export})
    return save_pruned(model, out_dir, report, source_dir=source_dir, overwrite=overwrite,
                       config_updates={"quantization_config": qc})


def save(model: nn.Module, out_dir: str | Path, report: PruneReport | None = None,
         source_dir: str | Path | None = None, *, format: str = "hf", overwrite: bool = False, **kw: Any) -> Path:
    """Save a pruned model as a plain Hugging Face directory (``hf``) or a compressed-tensors checkpoint."""
    if format == "hf":
        if kw:
            raise PruningError(f"options {sorted(kw)} apply to the compressed-tensors format only")
        return save_pruned(model, out_dir, report, source_dir=source_dir, overwrite=overwrite)
    if format == "compressed-tensors":
        return export_compressed_tensors(model, out_dir, report, source_dir, overwrite=overwrite, **kw)
    raise PruningError(f"unknown output format {format!r}; expected one of {', '.join(FORMATS)}")
