"""The unit every weight source yields: one tensor, not yet loaded (its own module so that source plug-ins such as
:mod:`htsr.spectra.gguf_source` need not import :mod:`htsr.spectra.sources`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["TensorEntry"]


@dataclass
class TensorEntry:
    """One weight tensor, not yet loaded."""

    name: str  # full parameter path, e.g. "encoder.layer.0.attention.self.query.weight"
    shape: tuple[int, ...]
    dtype: str
    load: Callable[[], torch.Tensor]
    kind: str | None = None  # known module kind (from an nn.Module), else inferred from name/shape
    module_type: str | None = None  # class name when known
    groups: int = 1  # conv groups when known (state dicts do not record them)
    release: Callable[[], None] | None = None  # drop the loaded bytes from memory once analysed (file maps)

    @property
    def module(self) -> str:
        """Module path: the parameter name without its trailing '.weight'."""
        return self.name[: -len(".weight")] if self.name.endswith(".weight") else self.name
