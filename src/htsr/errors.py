"""Exceptions with messages that say what was wrong and what was expected."""

from __future__ import annotations


class HtsrError(Exception):
    """Base class of htsr's errors."""


class SourceError(HtsrError, ValueError):
    """A weights source cannot be read (missing path, corrupt file, pickle without opt-in)."""


class ConfigError(HtsrError, ValueError):
    """An unknown preset, option or option value."""
