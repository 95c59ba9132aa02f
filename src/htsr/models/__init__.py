"""Small model zoo shared by recipes: CNNs for 8x8 images (``vision``), a 1-D Fourier Neural Operator
(``fno``) and a sentence classifier on the packaged all-MiniLM-L6-v2 (``text``).

Every constructor takes a ``seed`` and initialises its weights from a private ``torch`` RNG state
(:func:`seeded_init`), so building a model never changes the global random state.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """Run module construction under ``torch.manual_seed(seed)`` and restore the global CPU RNG afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


__all__ = ["seeded_init"]
