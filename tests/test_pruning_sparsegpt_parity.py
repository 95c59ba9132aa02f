"""SparseGPT's transposed sweep against the previous implementation (the reference's layout), kept verbatim here.

Same masks, weights and output error equal to float32 rounding, for unstructured and N:M sparsity, dead inputs,
ragged blocks; and the CPU factor of H^-1 against the reference's two factorisations.
"""

from __future__ import annotations

import pytest
import torch

from htsr.pruning.pruners import _lowest_mask, check_nm, check_sparsity, sparsegpt_prune


def _reference(W, sparsity, H, nm=None, blocksize=128, percdamp=0.01):
    """htsr's sparsegpt_prune before the transposed layout, verbatim but for its error handling."""
    rows, cols = W.shape
    nm = check_nm(nm, cols)
    s = check_sparsity(sparsity) if nm is None else 0.0
    dtype = W.dtype
    Wf = W.detach().clone().float()
    H = H.detach().clone().float().to(W.device)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    Wf[:, dead] = 0
    damp = percdamp * torch.mean(torch.diag(H))
    H += damp * torch.eye(cols, device=H.device)
    L = torch.linalg.cholesky(H)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)
    mask = torch.zeros(rows, cols, dtype=torch.bool, device=W.device)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        W1 = Wf[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        d1 = torch.diag(Hinv1)
        if nm is None:
            scores = W1 ** 2 / d1.reshape(1, -1) ** 2
            mask1 = _lowest_mask(scores.reshape(-1), int(scores.numel() * s), 0).reshape(scores.shape)
        else:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if nm is not None and i % nm[1] == 0:
                sc = W1[:, i:i + nm[1]] ** 2 / d1[i:i + nm[1]].reshape(1, -1) ** 2
                mask1[:, i:i + nm[1]] = _lowest_mask(sc, nm[1] - nm[0], dim=1)
            q = w.masked_fill(mask1[:, i], 0)
            Q1[:, i] = q
            err = (w - q) / d
            W1[:, i:].addr_(err, Hinv1[i, i:], alpha=-1)
            Err1[:, i] = err
        Wf[:, i1:i2] = Q1
        mask[:, i1:i2] = mask1
        Wf[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    W.copy_(Wf.to(dtype))
    return mask | (W == 0)


@pytest.mark.parametrize("rows,cols,sparsity,nm,blocksize,dead", [
    (96, 320, 0.5, None, 128, False),
    (200, 256, 0.7, None, 64, True),
    (64, 300, 0.3, None, 128, False),  # ragged last block
    (80, 256, 0.0, (2, 4), 128, False),
    (50, 192, 0.0, (4, 8), 32, True),
])
def test_sparsegpt_transposed_sweep_equals_reference(rows, cols, sparsity, nm, blocksize, dead):
    g = torch.Generator().manual_seed(rows + cols)
    W = torch.randn(rows, cols, generator=g) / cols ** 0.5
    X = torch.randn(4 * cols, cols, generator=g) @ (torch.eye(cols) + 0.3 * torch.randn(cols, cols, generator=g))
    if dead:
        X[:, :5] = 0
    H = 2 * X.T @ X / X.shape[0]
    a, b = W.clone(), W.clone()
    ma = sparsegpt_prune(a, sparsity, H, nm, blocksize=blocksize)
    mb = _reference(b, sparsity, H, nm, blocksize=blocksize)
    assert torch.equal(ma, mb)
    # float32 rounding: H^-1's factor is formed another way on CPU (~3e-7 relative), the sweep in W^T
    assert float((a - b).abs().max()) <= 1e-5 * float(W.abs().max())
    err_a, err_b = float(((a - W) @ X.T).norm()), float(((b - W) @ X.T).norm())  # the layer's output error
    assert err_a == pytest.approx(err_b, rel=1e-6)


def test_sparsegpt_bf16_weights_keep_dtype():
    g = torch.Generator().manual_seed(1)
    W = (torch.randn(64, 128, generator=g) / 11).to(torch.bfloat16)
    X = torch.randn(512, 128, generator=g)
    H = 2 * X.T @ X / 512
    a, b = W.clone(), W.clone()
    ma, mb = sparsegpt_prune(a, 0.5, H), _reference(b, 0.5, H)
    assert a.dtype == torch.bfloat16 and torch.equal(ma, mb)
    assert float((a.float() - b.float()).abs().max()) <= 2 ** -7 * float(W.float().abs().max())  # <= 1 bf16 ulp


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hinv_factor_equals_reference(dtype):
    from htsr.pruning.pruners import _hinv_upper_cholesky

    g = torch.Generator().manual_seed(3)
    X = torch.randn(600, 150, generator=g, dtype=dtype)
    H = X.T @ X / 600 + 0.01 * torch.eye(150, dtype=dtype)
    ref = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    U = _hinv_upper_cholesky(H)
    assert U.dtype == dtype and torch.equal(U, U.triu())
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert float((U - ref).abs().max()) <= tol * float(ref.abs().max())
    assert torch.allclose(U.T @ U @ H, torch.eye(150, dtype=dtype), atol=100 * tol)
