"""Exceptions with messages that say what was wrong and what was expected.

The command line maps them to exit codes once, in :func:`htsr.cli.main.main`: :class:`MeasurementError` (the
input was valid, the measurement failed: a diverged training, a non-finite loss) exits 1; every other
:class:`HtsrError` is bad input or usage and exits 2; anything else is a bug in htsr (a traceback, exit 70).
"""

from __future__ import annotations


class HtsrError(Exception):
    """Base class of htsr's errors."""


class SourceError(HtsrError, ValueError):
    """A weights source cannot be read (missing path, corrupt file, pickle without opt-in)."""


class ConfigError(HtsrError, ValueError):
    """An unknown preset, option or option value."""


class MeasurementError(HtsrError):
    """The input was valid but the measurement failed (training diverged, the loss is NaN/Inf, every method of a
    comparison failed). The CLI exits 1 for it."""
