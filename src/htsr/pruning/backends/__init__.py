"""Pruning backends: where the per-layer sparsities that htsr allocates are applied.

``htsr`` (the default) is :func:`htsr.pruning.prune.prune_model`; ``llmcompressor`` hands the same
allocation to llmcompressor's Wanda / SparseGPT modifiers (:mod:`htsr.pruning.backends.llmcompressor`,
the optional extra ``htsr[llmcompressor]``). Importing this package loads neither torch nor llmcompressor.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from htsr.pruning.errors import PruningError

BACKENDS = ("htsr", "llmcompressor")

#: import name -> (pip extra of htsr, what needs it)
EXTRAS = {
    "llmcompressor": ("llmcompressor", "the llmcompressor pruning backend"),
    "compressed_tensors": ("compress", "the compressed-tensors export"),
}


class MissingExtraError(PruningError, ImportError):
    """An optional dependency is not installed; the message names the htsr extra that installs it."""


def require(module: str) -> ModuleType:
    """Import an optional dependency, or raise :class:`MissingExtraError` with a one-line install hint."""
    extra, what = EXTRAS[module]
    try:
        return importlib.import_module(module)
    except ImportError as e:
        if e.name is not None and e.name != module and not e.name.startswith(module + "."):
            detail = f" (importing it failed: {e})"
        else:
            detail = ""
        raise MissingExtraError(f"{what} needs {module.replace('_', '-')}, which is not installed{detail}: "
                                f"pip install 'htsr[{extra}]'") from e


__all__ = ["BACKENDS", "EXTRAS", "MissingExtraError", "require"]
