"""From weight tensors to the matrices whose spectra are analysed (one plan per ESD row).

How each layer kind becomes matrices (documented conventions):
- Linear, HF ``Conv1D`` (stored (in, out)), LoRA B @ A, embeddings: the 2-D weight itself.
  Orientation never matters: eigenvalues are those of the smaller Gram matrix.
- ``Conv2d`` (out, in/groups, kh, kw): one matrix per kernel position (i, j), W[:, :, i, j],
  as WeightWatcher and TempBalance do (no reshape); the kh*kw spectra are pooled into one
  ESD, and eigenvalues are multiplied by ``conv_scale`` (0.5 by default, the references'
  conv normalisation). With groups > 1 the layer's operator at each kernel position is
  block-diagonal, so under ``conv_groups="blockdiag"`` each group's (out/g, in/g) block is
  a separate matrix (its spectrum is the union of the blocks'); ``"stacked"`` keeps the
  references' (out, in/g) matrix. Depthwise convs therefore give one 1x1 block per
  channel and position under "blockdiag". State dicts do not record groups: 1 is assumed.
- ``nn.Conv1d`` (out, in/groups, k): like Conv2d with k positions (WeightWatcher instead
  feeds the 3-D tensor to a batched SVD and keeps the wrong values).
- MoE expert stacks (3-D parameters of non-conv modules, or 3-D tensors whose name
  contains "expert"): one row per expert, ``name[expert=e]``.
- Fused QKV (``split_qkv``): modules named like qkv / c_attn / query_key_value / Wqkv /
  in_proj are split into three equal parts along the output dimension, rows ``name[q]``,
  ``name[k]``, ``name[v]``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from htsr.nn import selected as nn_selected
from htsr.spectra.config import AnalysisConfig
from htsr.spectra.sources import TensorEntry

_EMBED_RE = re.compile(r"(embed|(^|\.)wte$|(^|\.)wpe$|(^|\.)shared$)", re.IGNORECASE)
_QKV_RE = re.compile(r"(qkv|c_attn|query_key_value|in_proj)", re.IGNORECASE)
_NORM_RE = re.compile(r"(norm|(^|\.)ln_|(^|\.)bn\d*$)", re.IGNORECASE)


@dataclass
class MatrixPlan:
    """How to turn one loaded tensor into the batch of matrices of one ESD row."""

    name: str
    module: str
    param: str
    kind: str
    shape: tuple[int, ...]
    N: int  # larger side of each matrix
    M: int  # smaller side of each matrix
    rf: int  # number of matrices pooled (kernel positions x groups)
    scale: float
    extract: Callable[[torch.Tensor], torch.Tensor]
    skip_reason: str = ""

    @property
    def num_evals(self) -> int:
        return self.M * self.rf


def infer_kind(entry: TensorEntry) -> str | None:
    """Kind of a tensor: from its module when known, else from rank and name."""
    if entry.kind is not None:
        if entry.kind == "conv1d" and len(entry.shape) == 2:
            return "linear"
        return entry.kind
    nd = len(entry.shape)
    mod = entry.module
    if nd == 2:
        if _NORM_RE.search(mod):
            return None
        return "embedding" if _EMBED_RE.search(mod) else "linear"
    if nd == 3:
        return "moe_expert" if "expert" in entry.name.lower() else "conv1d"
    if nd == 4:
        return "conv2d"
    return None


def _conv_extract(out: int, inn: int, pos: int, groups: int, blockdiag: bool) -> Callable:
    def f(t: torch.Tensor) -> torch.Tensor:
        w = t.reshape(out, inn, pos)  # (out, in/g, positions)
        if blockdiag and groups > 1:
            w = w.reshape(groups, out // groups, inn, pos).permute(3, 0, 1, 2)
            return w.reshape(pos * groups, out // groups, inn)
        return w.permute(2, 0, 1)

    return f


def plan_entry(entry: TensorEntry, cfg: AnalysisConfig) -> list[MatrixPlan]:
    """All ESD rows of one tensor, with a skip reason where a rule excludes them."""
    kind = infer_kind(entry)
    shape = tuple(int(s) for s in entry.shape)
    name = entry.module
    if kind is None:
        return [MatrixPlan(name, entry.module, entry.name, "unknown", shape, 0, 0, 0, 1.0, _ident,
                           f"unsupported tensor rank {len(shape)} / layer type")]
    plans: list[MatrixPlan] = []
    if kind in ("linear", "hf_conv1d", "embedding", "lora"):
        n, m = shape
        if cfg.split_qkv and kind != "embedding" and _QKV_RE.search(entry.module):
            dim = 1 if kind == "hf_conv1d" else 0
            if shape[dim] % 3 == 0 and shape[dim] > 0:
                part = shape[dim] // 3
                for j, tag in enumerate("qkv"):
                    ps = list(shape)
                    ps[dim] = part
                    plans.append(MatrixPlan(f"{name}[{tag}]", entry.module, entry.name, kind, shape,
                                            max(ps), min(ps), 1, 1.0, _split(dim, j, part)))
                return _apply_rules(plans, cfg)
        plans.append(MatrixPlan(name, entry.module, entry.name, kind, shape, max(n, m), min(n, m), 1, 1.0,
                                lambda t: t.unsqueeze(0)))
    elif kind in ("conv2d", "conv1d"):
        out, inn = shape[0], shape[1]
        pos = 1
        for s in shape[2:]:
            pos *= s
        groups = entry.groups
        g = groups if groups > 0 and out % groups == 0 else 1
        blockdiag = cfg.conv_groups == "blockdiag" and g > 1
        rows, cols = (out // g, inn) if blockdiag else (out, inn)
        rf = pos * (g if blockdiag else 1)
        plans.append(MatrixPlan(name, entry.module, entry.name, kind, shape, max(rows, cols), min(rows, cols), rf,
                                cfg.conv_scale, _conv_extract(out, inn, pos, g, blockdiag)))
    elif kind == "moe_expert":
        E, a, b = shape
        for e in range(E):
            plans.append(MatrixPlan(f"{entry.name}[expert={e}]", entry.module, entry.name, kind, shape,
                                    max(a, b), min(a, b), 1, 1.0, (lambda t, e=e: t[e].unsqueeze(0))))
    return _apply_rules(plans, cfg)


def _ident(t: torch.Tensor) -> torch.Tensor:
    return t


def _split(dim: int, j: int, part: int) -> Callable:
    def f(t: torch.Tensor) -> torch.Tensor:
        return t.narrow(dim, j * part, part).unsqueeze(0)

    return f


def _apply_rules(plans: list[MatrixPlan], cfg: AnalysisConfig) -> list[MatrixPlan]:
    for p in plans:
        if p.kind == "embedding" and not cfg.include_embeddings:
            p.skip_reason = "embedding (opt-in: include_embeddings=True / --embeddings)"
        elif p.kind not in cfg.kinds:
            p.skip_reason = f"kind {p.kind!r} not selected"
        elif p.M == 0 or p.N == 0:
            p.skip_reason = f"empty tensor of shape {p.shape}"
        elif p.num_evals < max(cfg.min_evals, 2):
            p.skip_reason = f"too few eigenvalues ({p.num_evals} < min_evals={max(cfg.min_evals, 2)})"
        elif cfg.max_evals is not None and p.num_evals > cfg.max_evals:
            p.skip_reason = f"too many eigenvalues ({p.num_evals} > max_evals={cfg.max_evals})"
        elif cfg.max_N is not None and p.N > cfg.max_N:
            p.skip_reason = f"matrix too large (N={p.N} > max_N={cfg.max_N})"
        elif cfg.estimator == "farms":
            from htsr.spectra.farms import window_error

            p.skip_reason = window_error(p.N, p.M, cfg.farms_rows, cfg.farms_q)
    return plans


def selected(name: str, module: str, include: tuple[str, ...], exclude: tuple[str, ...]) -> bool:
    """Glob (or ``re:<regex>``) selection on the full row name or module path (:mod:`htsr.nn`'s one matcher)."""
    return nn_selected((name, module), include, exclude)
