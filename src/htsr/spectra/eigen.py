"""Eigenvalues lambda = sigma^2 of weight matrices, batched, on CPU or CUDA.

The default method forms the Gram matrix of the smaller side (M x M) and runs a
symmetric eigensolver on it, which is several times cheaper than a full SVD. Weights are
never downcast below float32; ``precision="float64"`` accumulates the Gram matrix and
solves in float64 (exact enough for every eigenvalue), ``"float32"`` is faster and keeps
the tail (the large eigenvalues, which power-law fits use) accurate to ~1e-6 relative.
``"auto"`` uses float64 unless the smaller side exceeds ``AUTO_FP64_MAX_DIM``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

Precision = Literal["auto", "float32", "float64"]
Method = Literal["gram", "svd"]

#: Matrices whose smaller side is at most this are solved in float64 under "auto".
AUTO_FP64_MAX_DIM = 2048


def resolve_device(device: str | torch.device | None) -> torch.device:
    """'auto' -> cuda when available, else cpu; validates explicit names."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use 'cpu' or 'auto'")
    return dev


def _dtype_for(m: int, precision: Precision) -> torch.dtype:
    if precision == "float64":
        return torch.float64
    if precision == "float32":
        return torch.float32
    if precision == "auto":
        return torch.float64 if m <= AUTO_FP64_MAX_DIM else torch.float32
    raise ValueError(f"unknown precision {precision!r}; expected 'auto', 'float32' or 'float64'")


def _cpu_gram(mat: torch.Tensor) -> torch.Tensor:
    """Gram of the smaller side on CPU with BLAS syrk: half the flops of a matmul."""
    from scipy.linalg import blas

    a = mat.numpy()
    f = blas.dsyrk if a.dtype == np.float64 else blas.ssyrk
    # a is (max, min) and C-contiguous, so a.T is a Fortran-ordered (min, max) view:
    # syrk(trans=0) on it computes a^T a (upper triangle) without copying the weights
    g = f(1.0, a.T, trans=0, lower=0)
    return torch.from_numpy(g)


def eigenvalues(
    weights: torch.Tensor,
    *,
    device: str | torch.device | None = "cpu",
    precision: Precision = "auto",
    method: Method = "gram",
) -> np.ndarray:
    """Eigenvalues of W^T W for one (n, m) matrix or a batch (B, n, m).

    Returns a float64 numpy array of shape (min(n, m),) or (B, min(n, m)), ascending.
    ``method="svd"`` squares singular values instead (more accurate for tiny
    eigenvalues of ill-conditioned matrices, several times slower).
    """
    if not isinstance(weights, torch.Tensor):
        weights = torch.as_tensor(np.asarray(weights))
    if weights.ndim not in (2, 3):
        raise ValueError(f"expected a matrix (n, m) or a batch (B, n, m), got shape {tuple(weights.shape)}")
    dev = resolve_device(device)
    n, m = weights.shape[-2], weights.shape[-1]
    k = min(n, m)
    dtype = _dtype_for(k, precision)
    w = weights.detach()
    if w.is_complex():
        raise ValueError("complex weights are not supported")
    w = w.to(device=dev, dtype=dtype)
    if method == "svd":
        s = torch.linalg.svdvals(w)
        lam = (s.to(torch.float64) ** 2).flip(-1)
        return lam.cpu().numpy()
    if method != "gram":
        raise ValueError(f"unknown eigen method {method!r}; expected 'gram' or 'svd'")
    if n < m:
        w = w.transpose(-1, -2)
    if dev.type == "cpu" and (w.ndim == 2 or w.shape[0] == 1 or k >= 256):
        # per-matrix BLAS syrk + LAPACK syevd: fastest on CPU for all but tiny batched slices
        mats = [w] if w.ndim == 2 else list(w)
        out = np.stack([_cpu_eigvalsh(x.contiguous()) for x in mats])
        return out[0] if w.ndim == 2 else out
    g = w.transpose(-1, -2) @ w
    lam = torch.linalg.eigvalsh(g)
    lam = lam.to(torch.float64).clamp_min(0.0)
    return lam.cpu().numpy()


def _cpu_eigvalsh(w: torch.Tensor) -> np.ndarray:
    from scipy.linalg import eigh

    # scipy's syevd is ~1.6x faster than torch.linalg.eigvalsh on small matrices here
    g = _cpu_gram(w)
    lam = eigh(g, lower=False, eigvals_only=True, driver="evd", check_finite=False, overwrite_a=True)
    return np.clip(lam.astype(np.float64), 0.0, None)
