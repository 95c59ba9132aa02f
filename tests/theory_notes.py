"""The research notes on the single-index study (``shared/research/methods_mem_phish_htgd.md`` section 3), read as
data for the tests that check htsr's defaults against the paper's setup. Skips when the notes are not on disk (a
checkout without the shared research folder)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

NOTES = "methods_mem_phish_htgd.md"


def theory_notes() -> str:
    """Section 3 of the notes (up to section 4); ``HTSR_RESEARCH_DIR`` overrides where they are looked for."""
    here = Path(__file__).resolve()
    cands = [Path(os.environ["HTSR_RESEARCH_DIR"]) / NOTES] if os.environ.get("HTSR_RESEARCH_DIR") else []
    cands += [p / "shared" / "research" / NOTES for p in here.parents]
    for c in cands:
        if c.is_file():
            text = c.read_text(encoding="utf-8")
            start = text.index("## 3.")
            end = text.find("\n## 4.", start)
            return text[start:end if end > 0 else None]
    pytest.skip(f"research notes {NOTES} not found (set HTSR_RESEARCH_DIR)")
