"""The memorization package's error type."""

from __future__ import annotations

from htsr.errors import ConfigError


class MemorizationError(ConfigError):
    """Bad TinyMem input (prompt length, empty forget set, model without MLP layers, ratio, ...), raised before
    any weight changes."""
