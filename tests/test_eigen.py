"""Eigenvalue backend: Gram + symmetric eigensolver vs a float64 SVD."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from htsr.spectra.eigen import eigenvalues, resolve_device
from tests.conftest import heavy_tailed


def _svd_evals(w: torch.Tensor) -> np.ndarray:
    s = np.linalg.svd(w.double().numpy(), compute_uv=False)
    return np.sort(s**2)


@pytest.mark.parametrize("shape", [(300, 120), (120, 300), (257, 257)])
def test_float64_gram_matches_float64_svd(shape):
    w = heavy_tailed(*shape, seed=1)
    lam = eigenvalues(w, precision="float64")
    ref = _svd_evals(w)
    assert lam.shape == (min(shape),)
    assert np.all(np.diff(lam) >= 0)
    np.testing.assert_allclose(lam, ref, rtol=1e-9, atol=1e-9 * ref.max())


def test_float32_tail_matches_float64_svd():
    """Float32 Gram keeps the tail (the eigenvalues power-law fits use) to ~1e-5 relative."""
    w = heavy_tailed(1024, 512, seed=2)
    lam = eigenvalues(w, precision="float32")
    ref = _svd_evals(w)
    tail = ref.size // 4
    np.testing.assert_allclose(lam[-tail:], ref[-tail:], rtol=1e-5)
    # and the whole spectrum to float32 accuracy relative to the largest eigenvalue
    assert np.max(np.abs(lam - ref)) <= 1e-5 * ref.max()


def test_auto_precision_is_float64_for_small_matrices():
    w = heavy_tailed(200, 100, seed=3)
    np.testing.assert_array_equal(eigenvalues(w), eigenvalues(w, precision="float64"))


def test_batched_equals_loop_and_transpose_invariance():
    b = torch.stack([heavy_tailed(40, 30, seed=s) for s in range(5)])
    batched = eigenvalues(b, precision="float64")
    assert batched.shape == (5, 30)
    for i in range(5):
        np.testing.assert_allclose(batched[i], eigenvalues(b[i], precision="float64"), rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(batched[i], eigenvalues(b[i].T, precision="float64"), rtol=1e-10, atol=1e-10)


def test_svd_method_matches_gram():
    w = heavy_tailed(150, 90, seed=4)
    np.testing.assert_allclose(eigenvalues(w, method="svd"), eigenvalues(w, precision="float64"), rtol=1e-8,
                               atol=1e-8)


def test_half_precision_weights_are_upcast_not_downcast():
    w = heavy_tailed(128, 64, seed=5)
    lam16 = eigenvalues(w.to(torch.bfloat16))
    ref = _svd_evals(w.to(torch.bfloat16).float())
    np.testing.assert_allclose(lam16[-8:], ref[-8:], rtol=1e-8)


def test_bad_arguments():
    with pytest.raises(ValueError, match="matrix"):
        eigenvalues(torch.zeros(3))
    with pytest.raises(ValueError, match="precision"):
        eigenvalues(torch.zeros(3, 3), precision="float16")
    with pytest.raises(ValueError, match="method"):
        eigenvalues(torch.zeros(3, 3), method="qr")


def test_cuda_request_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_path_matches_cpu():
    w = heavy_tailed(512, 256, seed=6)
    for prec in ("float64", "float32"):
        cpu = eigenvalues(w, precision=prec)
        gpu = eigenvalues(w, device="cuda", precision=prec)
        np.testing.assert_allclose(gpu[-32:], cpu[-32:], rtol=1e-4 if prec == "float32" else 1e-9, err_msg=prec)
    b = torch.stack([w[:64, :32], w[64:128, :32]])
    np.testing.assert_allclose(eigenvalues(b, device="cuda", precision="float64"),
                               eigenvalues(b, precision="float64"), rtol=1e-9, atol=1e-9)


def test_large_matrix_solver_path_matches_svd():
    """Matrices with a side >= 1024 use a different LAPACK driver (syevr); same eigenvalues."""
    w = heavy_tailed(1100, 1030, seed=7)
    lam = eigenvalues(w, precision="float64")
    ref = _svd_evals(w)
    np.testing.assert_allclose(lam[-100:], ref[-100:], rtol=1e-9)
    assert np.max(np.abs(lam - ref)) <= 1e-9 * ref.max()
