"""The one place that knows model layers: what a layer is, its 2-D weight, where the blocks are, name patterns.

Every method (the spectral engine's module walker, TempBalance, the pruners, TinyMem's unlearning, AlphaLoRA,
the landscape toolkit) asks this module, so a layer type is recognised the same way everywhere:

* :func:`layer_kind` / :func:`is_linear_like` / :func:`is_hf_conv1d` / :func:`is_norm`: what a module is.
  Hugging Face's ``Conv1D`` (GPT-2) is a Linear stored as ``(in, out)``; it is recognised here and nowhere else.
* :func:`weight_2d` / :func:`in_out_features`: the ``(out, in)`` view of a linear-like weight (edits stick).
* :func:`block_of`: **the** definition of a block: the module path up to the first numeric index
  (``model.layers.3.mlp.down_proj`` -> ``model.layers.3``; ``layer1.0.conv1`` -> ``layer1.0``), usable on names
  alone (state dicts, analysis rows). :func:`find_layout` finds the transformer stack of a live model (the
  outermost ``ModuleList`` named ``layers``/``layer``/``h``/``blocks``) and its linear-like layers per block; its
  block paths are exactly :func:`block_of` of their layers.
* :class:`Patterns` / :func:`match_any`: name selection, globs (``fnmatch``) or ``re:REGEX`` (searched), with
  regexes compiled (and rejected) up front.
* :func:`eval_mode` / :func:`train_mode`: set a model's mode for a block of code and restore it after.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from htsr.errors import ConfigError, HtsrError

__all__ = [
    "BLOCK_LIST_NAMES", "BLOCK_PATTERN", "Layout", "LayoutError", "Patterns", "block_of", "eval_mode",
    "find_layout", "in_out_features", "is_hf_conv1d", "is_linear_like", "is_norm", "layer_kind", "linear_layers",
    "match_any", "parent", "selected", "train_mode", "weight_2d",
]

#: ModuleList attribute names that hold transformer blocks, searched outermost first.
BLOCK_LIST_NAMES = ("layers", "layer", "h", "blocks")
#: A block is the module path up to and including the first numeric component (the TempBalance reference's
#: ``(.*?)\.(\d+)\.(.*)`` rule).
BLOCK_PATTERN = r"^(.*?\.\d+)\."
_BLOCK_RE = re.compile(BLOCK_PATTERN)


class LayoutError(HtsrError, ValueError):
    """A model does not have the layers or blocks a method needs."""


# ------------------------------------------------------------------ what a module is
def is_hf_conv1d(mod: nn.Module) -> bool:
    """``transformers.pytorch_utils.Conv1D`` (GPT-2 family): a Linear whose weight is stored ``(in, out)``."""
    return type(mod).__name__ == "Conv1D" and hasattr(mod, "nf") and getattr(mod, "weight", None) is not None


def is_linear_like(mod: nn.Module) -> bool:
    """``nn.Linear`` or HF ``Conv1D``: a layer computing ``x @ W.T + b`` with a 2-D weight."""
    return isinstance(mod, nn.Linear) or is_hf_conv1d(mod)


def is_norm(mod: nn.Module) -> bool:
    """BatchNorm / LayerNorm / GroupNorm, or any module whose class name contains "norm" and holds parameters
    (RMSNorm variants)."""
    if isinstance(mod, nn.modules.batchnorm._NormBase | nn.LayerNorm | nn.GroupNorm):
        return True
    name = type(mod).__name__.lower()
    return "norm" in name and any(True for _ in mod.parameters(recurse=False))


def layer_kind(mod: nn.Module) -> str | None:
    """The kind of layer a module is, as the spectral engine names it: ``linear``, ``hf_conv1d``, ``conv1d``,
    ``conv2d``, ``embedding``, ``norm``, or None (a container or an unknown module)."""
    if isinstance(mod, nn.Linear):
        return "linear"
    if isinstance(mod, nn.Conv2d):
        return "conv2d"
    if isinstance(mod, nn.Conv1d):
        return "conv1d"
    if isinstance(mod, nn.Embedding | nn.EmbeddingBag):
        return "embedding"
    if is_hf_conv1d(mod):
        return "hf_conv1d"
    low = type(mod).__name__.lower()
    if "norm" in low:
        return "norm"
    if "linear" in low:  # quantised / LoRA-wrapped linears expose a 2-D weight too
        return "linear"
    return None


def weight_2d(mod: nn.Module, *, differentiable: bool = False) -> torch.Tensor:
    """The ``(out, in)`` weight of a Linear, or a transposed view of an HF Conv1D's ``(in, out)`` weight (in-place
    edits through the view stick). Works on ``.weight.data`` (no autograd history) unless ``differentiable``: then
    a view of the parameter itself, for losses on the weights (a spectral-norm penalty)."""
    if isinstance(mod, nn.Linear):
        return mod.weight if differentiable else mod.weight.data
    if is_hf_conv1d(mod):
        return (mod.weight if differentiable else mod.weight.data).t()
    raise LayoutError(f"{type(mod).__name__} is not a linear-like layer (expected nn.Linear or HF Conv1D)")


def in_out_features(mod: nn.Module) -> tuple[int, int]:
    """``(in_features, out_features)`` of a linear-like layer."""
    out, inn = weight_2d(mod).shape
    return int(inn), int(out)


def parent(name: str) -> str:
    """The parent module path of ``name`` (``a.b.c`` -> ``a.b``; top level -> ``""``)."""
    return name.rpartition(".")[0]


def linear_layers(model: nn.Module, prefix: str = "") -> dict[str, nn.Module]:
    """Every linear-like layer of ``model`` by full module path, in module order."""
    pre = f"{prefix}." if prefix else ""
    return {pre + n: m for n, m in model.named_modules() if n and is_linear_like(m)}


# ------------------------------------------------------------------ names
class Patterns:
    """Name selection by globs (``fnmatch``, case-sensitive) or ``re:REGEX`` (``re.search``), compiled once.

    An invalid regex raises :class:`~htsr.errors.ConfigError` here, before any work starts.
    """

    def __init__(self, patterns: str | Iterable[str] | None = ()) -> None:
        if patterns is None:
            patterns = ()
        if isinstance(patterns, str):
            patterns = (patterns,)
        self.patterns: tuple[str, ...] = tuple(patterns)
        self._compiled: list[re.Pattern | str] = []
        for p in self.patterns:
            if not isinstance(p, str) or not p:
                raise ConfigError(f"a name pattern must be a non-empty string (glob or re:REGEX), got {p!r}")
            if p.startswith("re:"):
                try:
                    self._compiled.append(re.compile(p[3:]))
                except re.error as e:
                    raise ConfigError(f"invalid regular expression {p!r}: {e}") from None
            else:
                self._compiled.append(p)

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def __repr__(self) -> str:
        return f"Patterns({list(self.patterns)!r})"

    def match(self, *names: str) -> bool:
        """True when any pattern matches any of ``names``."""
        for c in self._compiled:
            for n in names:
                if isinstance(c, str):
                    if fnmatch.fnmatchcase(n, c):
                        return True
                elif c.search(n) is not None:
                    return True
        return False

    def select(self, names: Iterable[str], exclude: Patterns | None = None) -> list[str]:
        """``names`` matched by these patterns (all when there are none) and not by ``exclude``."""
        return [n for n in names if (not self or self.match(n)) and not (exclude and exclude.match(n))]


@functools.lru_cache(maxsize=256)
def _cached(patterns: tuple[str, ...]) -> Patterns:
    return Patterns(patterns)


def _patterns(patterns: str | Iterable[str] | None) -> Patterns:
    if patterns is None:
        return _cached(())
    if isinstance(patterns, Patterns):
        return patterns
    return _cached((patterns,) if isinstance(patterns, str) else tuple(patterns))


def match_any(patterns: str | Iterable[str] | None, *names: str) -> bool:
    """True when any glob / ``re:`` pattern matches any of ``names`` (False for no patterns)."""
    return _patterns(patterns).match(*names)


def selected(names: Sequence[str], include: Iterable[str] | None = (), exclude: Iterable[str] | None = ()) -> bool:
    """Whether an object known by any of ``names`` is kept: matched by ``include`` (or no include patterns)
    and by no ``exclude`` pattern."""
    inc, exc = _patterns(include), _patterns(exclude)
    return (not inc or inc.match(*names)) and not exc.match(*names)


def block_of(name: str, pattern: str | re.Pattern = _BLOCK_RE) -> str | None:
    """The block a module path belongs to (see the module docstring), or None when it has no numeric index."""
    pat = re.compile(pattern) if isinstance(pattern, str) else pattern
    m = pat.match(name)
    return m.group(1) if m else None


# ------------------------------------------------------------------ blocks of a live model
@dataclass
class Layout:
    """Where a model's blocks are and which linear-like layers each block has (full module paths, module order)."""

    blocks_path: str
    blocks: list[nn.Module]
    layers: list[dict[str, nn.Module]]

    @property
    def names(self) -> list[str]:
        return [n for blk in self.layers for n in blk]

    @property
    def block_names(self) -> list[str]:
        return [f"{self.blocks_path}.{k}" for k in range(len(self.blocks))]

    @property
    def block_ids(self) -> np.ndarray:
        return np.array([k for k, blk in enumerate(self.layers) for _ in blk], dtype=np.int64)

    def modules(self) -> list[nn.Module]:
        return [m for blk in self.layers for m in blk.values()]


def find_layout(model: nn.Module) -> Layout:
    """Locate the transformer blocks and their linear-like layers, or raise a :class:`LayoutError`."""
    candidates = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and name.split(".")[-1] in BLOCK_LIST_NAMES and len(mod) > 0:
            if all(any(is_linear_like(m) for m in blk.modules()) for blk in mod):
                candidates.append(name)
    if not candidates:
        raise LayoutError(
            f"cannot find the transformer blocks of {type(model).__name__}: expected a ModuleList named "
            f"{'/'.join(BLOCK_LIST_NAMES)} whose blocks hold Linear layers (LLaMA/Mistral model.layers, GPT-2 "
            "transformer.h, GPT-NeoX gpt_neox.layers, OPT model.decoder.layers, BERT encoder.layer)")
    path = min(candidates, key=lambda n: n.count("."))  # outermost stack (not, e.g., an inner expert list)
    blocks = list(model.get_submodule(path))
    layers = [linear_layers(blk, f"{path}.{k}") for k, blk in enumerate(blocks)]
    return Layout(path, blocks, layers)


# ------------------------------------------------------------------ modes
def _modes(models: Sequence[nn.Module]) -> list[tuple[nn.Module, bool]]:
    return [(m, m.training) for model in models for m in model.modules()]


@contextlib.contextmanager
def eval_mode(*models: nn.Module) -> Iterator[None]:
    """``model.eval()`` inside the block; afterwards every submodule's own train/eval flag is restored (a frozen
    BatchNorm left in eval mode inside a training model stays so)."""
    saved = _modes(models)
    try:
        for m in models:
            m.eval()
        yield
    finally:
        for m, w in saved:
            m.training = w


@contextlib.contextmanager
def train_mode(*models: nn.Module) -> Iterator[None]:
    """``model.train()`` inside the block; every submodule's previous flag restored afterwards."""
    saved = _modes(models)
    try:
        for m in models:
            m.train()
        yield
    finally:
        for m, w in saved:
            m.training = w
