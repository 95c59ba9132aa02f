"""The pruning package's error type."""

from __future__ import annotations

from htsr.errors import HtsrError


class PruningError(HtsrError, ValueError):
    """Bad pruning input (sparsity, epsilon, model layout, calibration data), raised before any weight changes."""
