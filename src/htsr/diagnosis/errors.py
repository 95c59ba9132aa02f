"""The diagnosis package's error type."""

from __future__ import annotations

from htsr.errors import ConfigError


class DiagnosisError(ConfigError):
    """Bad diagnosis input: a missing or non-finite feature column, an unknown label, a one-class
    population, a threshold outside its bounds, an unknown transfer scheme."""
