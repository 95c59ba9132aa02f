"""Numerical honesty: rank and entropy do not depend on the storage dtype of the same values, and a power-law
tail made of rounding noise is a failed fit with a reason, not an alpha."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from htsr.spectra.analysis import analyze


def _row(sd, name="w"):
    return next(r for r in analyze(sd).rows if r["name"] == name)


def _exact_rank_entropy(w: np.ndarray) -> tuple[int, float]:
    """Independent reference: numpy in float64 on the exact values (numpy's own rank tolerance)."""
    s = np.linalg.svd(w.astype(np.float64), compute_uv=False)
    rank = int(np.linalg.matrix_rank(w.astype(np.float64)))
    p = s**2 / (s**2).sum()
    p = p[p > 0]
    return rank, float(-(p * np.log(p)).sum() / math.log(rank))


@pytest.mark.parametrize("seed", [0, 1])
def test_rank_and_entropy_do_not_depend_on_the_storage_dtype(seed):
    g = torch.Generator().manual_seed(seed)
    w32 = torch.randn(48, 96, generator=g).to(torch.bfloat16).to(torch.float32)  # values exact in bf16 and f32
    rank, ent = _exact_rank_entropy(w32.numpy())
    assert rank == 48
    for dt in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        w = w32.to(dt)
        assert torch.equal(w.to(torch.float32), w32)  # the very same values
        r = _row({"w": w})
        assert r["matrix_rank"] == rank, dt
        assert 0.0 <= r["entropy"] <= 1.0, dt
        assert r["entropy"] == pytest.approx(ent, rel=1e-6), dt


def test_low_rank_bf16_keeps_its_rank():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(64, 5, generator=g), torch.randn(5, 80, generator=g)
    w = (a @ b).to(torch.bfloat16)
    rank, ent = _exact_rank_entropy(w.to(torch.float32).numpy())
    r = _row({"w": w})
    assert r["matrix_rank"] == rank  # the stored values are what they are: numpy's rank of them in float64
    assert 0.0 <= r["entropy"] <= 1.0 and r["entropy"] == pytest.approx(ent, rel=1e-6)


@pytest.mark.parametrize("scale", [1e4, 1e5, 1e6])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rank_one_matrix_is_not_fitted_to_rounding_noise(scale, dtype):
    g = torch.Generator().manual_seed(int(math.log10(scale)))
    u, v = torch.randn(64, 1, generator=g), torch.randn(1, 128, generator=g)
    r = _row({"w": ((u @ v) * scale).to(dtype)})
    assert r["status"] == "failed", (r["alpha"], r["reason"])
    assert math.isnan(r["alpha"])
    assert "rounding-noise" in r["reason"] or "too few" in r["reason"]


def test_real_tail_survives_any_scale():
    """A heavy-tailed spectrum keeps its (successful) alpha when the matrix is scaled by 1e6: the noise floor is
    relative, not an absolute threshold."""
    rng = np.random.default_rng(7)
    n, m = 200, 400
    q1, _ = np.linalg.qr(rng.standard_normal((n, n)))
    q2, _ = np.linalg.qr(rng.standard_normal((m, n)))
    sv = (1 + rng.pareto(1.5, n)) ** 0.5
    w = (q1 * sv) @ q2.T
    base = _row({"w": torch.from_numpy(w.astype(np.float32))})
    big = _row({"w": torch.from_numpy((w * 1e6).astype(np.float32))})
    assert base["status"] == big["status"] == "success"
    assert big["alpha"] == pytest.approx(base["alpha"], rel=1e-3)
