"""Progress bars: one rule for when to show them (asked for, or stderr is a terminal) and one way to make them."""

from __future__ import annotations

import sys
from typing import Any


def show_progress(progress: bool | None) -> bool:
    """``progress`` when given, else whether stderr is a terminal (no bars in logs and pipes)."""
    if progress is not None:
        return bool(progress)
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def progress_bar(progress: bool | None, iterable: Any = None, **tqdm_kwargs: Any) -> Any:
    """A tqdm bar on stderr over ``iterable`` (or a manual one with ``total=``) when :func:`show_progress`
    says so; otherwise ``iterable`` unchanged (``None`` for a manual bar, so callers test ``if bar``)."""
    if not show_progress(progress):
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, file=sys.stderr, **tqdm_kwargs)
