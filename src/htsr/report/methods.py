"""Sections of the method outputs' reports: pruning, TempBalance, TinyMem, MD tree."""

from __future__ import annotations

BUILDERS: dict = {}
