"""Allocation: reference figures from the real LLaMA-7B alphas (shipped with htsr), and invariants."""

from __future__ import annotations

import numpy as np
import pytest

from htsr.pruning import PruningError
from htsr.pruning import allocation as A
from tests.esd_reference import ww_sparsity

# q, k, v, o, gate, up, down of a LLaMA-7B block
LLAMA7B_PARAMS = np.array([4096 * 4096] * 4 + [11008 * 4096] * 3, dtype=float)


@pytest.fixture(scope="module")
def llama7b():
    from htsr.data.reference import alphapruning_alphas

    alphas = alphapruning_alphas("llama-7b-hf")  # AlphaPruning's data/llama-7b-hf/alpha_peak.npy, package data
    assert alphas.shape == (224,)
    return alphas, np.tile(LLAMA7B_PARAMS, 32), np.repeat(np.arange(32), 7)


def test_reference_figures_llama7b(llama7b):
    alphas, params, blocks = llama7b
    s = A.alpha_allocation(alphas, params, 0.7, 0.2, blocks=blocks)
    np.testing.assert_allclose(s, ww_sparsity(alphas, params, blocks, 0.7, 0.2), rtol=1e-12)
    per_block = s.reshape(32, 7)
    assert np.all(per_block == per_block[:, :1])  # block-wise: one ratio per block
    b = per_block[:, 0]
    assert round(b.min(), 3) == 0.568 and round(b.max(), 3) == 0.852
    assert round(b[0], 3) == 0.570 and round(b[31], 3) == 0.732
    assert abs(A.weighted_mean(s, params) - 0.7) < 1e-12
    means = alphas.reshape(32, 7).mean(1)
    assert np.argmin(b) == np.argmin(means) == 9 and np.argmax(b) == np.argmax(means) == 25
    s3 = A.alpha_allocation(alphas, params, 0.7, 0.3, blocks=blocks).reshape(32, 7)[:, 0]
    assert round(s3.min(), 3) == 0.501 and round(s3.max(), 3) == 0.930


def test_per_matrix_mapping_llama7b(llama7b):
    alphas, params, _ = llama7b
    s = A.alpha_allocation(alphas, params, 0.7, 0.2)
    assert abs(A.weighted_mean(s, params) - 0.7) < 1e-12
    order = np.argsort(alphas, kind="stable")
    assert np.all(np.diff(s[order]) >= 0)  # monotone in alpha
    assert np.isclose(s.max() / s.min(), 1.2 / 0.8)  # the band is [1-eps, 1+eps] x c


@pytest.mark.parametrize("target", [0.0, 0.3, 0.5, 0.8])
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.2])
def test_invariants(target, eps):
    rng = np.random.default_rng(0)
    m = rng.uniform(2, 6, 50)
    p = rng.integers(100, 10_000, 50).astype(float)
    s = A.alpha_allocation(m, p, target, eps)
    assert abs(A.weighted_mean(s, p) - target) < 1e-12
    order = np.argsort(m)
    assert np.all(np.diff(s[order]) >= -1e-15)
    if eps == 0.0:
        np.testing.assert_allclose(s, target, atol=1e-15)
    rev = A.alpha_allocation(m, p, target, eps, larger_prunes_more=False)
    assert np.all(np.diff(rev[order]) <= 1e-15)


def test_constant_metric_is_uniform():
    s = A.alpha_allocation([3.0, 3.0, 3.0], [1, 2, 3], 0.6, 0.3)
    np.testing.assert_allclose(s, 0.6)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan")])
def test_bad_sparsity(bad):
    with pytest.raises(PruningError, match="sparsity"):
        A.alpha_allocation([2.0, 3.0], None, bad, 0.1)
    with pytest.raises(PruningError):
        A.uniform_allocation([1, 1], bad)


def test_eps_pushing_outside_is_an_error_then_clip_restores_mean():
    m = np.array([2.0, 3.0, 4.0, 5.0])
    p = np.array([1.0, 1.0, 1.0, 1.0])
    with pytest.raises(PruningError, match=r"outside \[0, 1\)"):
        A.alpha_allocation(m, p, 0.8, 0.3)  # top matrix -> 0.8 * 1.3 / 1.0 = 1.04
    with pytest.raises(PruningError, match="epsilon"):
        A.alpha_allocation(m, p, 0.5, 1.5)
    s = A.alpha_allocation(m, p, 0.8, 0.3, max_ratio=0.95)
    assert s.max() <= 0.95 and abs(A.weighted_mean(s, p) - 0.8) < 1e-12
    assert np.all(np.diff(s) >= 0)
    assert s[-1] == 0.95 and s[-2] < 0.95  # only the overflowing matrix is pinned
    with pytest.raises(PruningError, match="max_ratio"):
        A.alpha_allocation(m, p, 0.96, 0.1, max_ratio=0.95)


def test_clip_pins_several_and_keeps_order():
    rng = np.random.default_rng(1)
    m = rng.uniform(1, 10, 200)
    p = rng.integers(1, 50, 200).astype(float)
    s = A.alpha_allocation(m, p, 0.85, 0.5, max_ratio=0.9)
    assert abs(A.weighted_mean(s, p) - 0.85) < 1e-12
    assert np.sum(s == 0.9) > 1 and s.max() == 0.9
    order = np.argsort(m)
    assert np.all(np.diff(s[order]) >= -1e-15)


def test_nan_metric_is_an_error():
    with pytest.raises(PruningError, match="non-finite"):
        A.alpha_allocation([2.0, np.nan], None, 0.5, 0.1)


def test_owl():
    o = np.array([0.01, 0.02, 0.03, 0.04, 0.05])
    s = A.owl_allocation(o, None, 0.7, 0.08)
    np.testing.assert_allclose(s, [0.78, 0.74, 0.70, 0.66, 0.62])  # symmetric ratios: [t-lam, t+lam]
    p = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    sw = A.owl_allocation([0.0, 0.1, 0.0, 0.3, 0.2], p, 0.6)
    assert abs(A.weighted_mean(sw, p) - 0.6) < 1e-12
    assert np.isclose(sw.max() - sw.min(), 0.16)
    assert np.argmin(sw) == 3  # most outliers -> least pruned
    np.testing.assert_allclose(A.owl_allocation([0.1, 0.1], None, 0.5), 0.5)
    with pytest.raises(PruningError, match="outside"):
        A.owl_allocation(o, None, 0.95, 0.08)


def test_outlier_ratio():
    x = np.ones(100)
    x[:3] = 1000.0
    assert A.outlier_ratio(x, 5) == 0.03
    assert A.outlier_ratio([x[:50], x[50:]], 5) == 0.03
    with pytest.raises(PruningError, match="NaN"):
        A.outlier_ratio(np.array([1.0, np.nan]))


def test_block_mean_and_expand():
    np.testing.assert_allclose(A.block_mean([1, 3, 5, 7], [0, 0, 1, 1]), [2, 2, 6, 6])
    np.testing.assert_allclose(A.expand([0.1, 0.2], [0, 0, 1]), [0.1, 0.1, 0.2])
