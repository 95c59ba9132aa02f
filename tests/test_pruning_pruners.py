"""Pruners on small random layers: exact sparsity, N:M validity, SparseGPT reconstruction, Wanda vs magnitude."""

from __future__ import annotations

import pytest
import torch

from htsr.pruning import PruningError
from htsr.pruning.pruners import LayerStats, magnitude_prune, sparsegpt_prune, wanda_prune

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _layer(out=48, inp=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out, inp, generator=g)


def _correlated_inputs(n=1024, inp=256, rank=32, seed=1):
    """Inputs with strongly correlated features (low-rank plus noise) and unequal scales."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, rank, generator=g) @ torch.randn(rank, inp, generator=g)
    return z + 0.1 * torch.randn(n, inp, generator=g)


def _stats(X, hessian=False):
    st = LayerStats(X.shape[1], hessian=hessian)
    for chunk in X.reshape(8, -1, X.shape[1]):  # 8 "samples" of (tokens, features)
        st.add_batch(chunk.unsqueeze(0))
    return st


def _check_nm(W, n, m):
    nz = (W.reshape(W.shape[0], -1, m) != 0).sum(-1)
    assert int(nz.max()) <= n


@pytest.mark.parametrize("s", [0.0, 0.3, 0.5, 0.77])
def test_exact_unstructured_sparsity(s):
    X = _correlated_inputs()
    st = _stats(X, hessian=True)
    for name in ("magnitude", "wanda", "sparsegpt"):
        W = _layer()
        if name == "magnitude":
            magnitude_prune(W, s)
            expected = int(W.numel() * s)
        elif name == "wanda":
            wanda_prune(W, s, st.col_sq_norm)
            expected = W.shape[0] * int(W.shape[1] * s)
        else:
            sparsegpt_prune(W, s, st.H)
            expected = 2 * int(W.shape[0] * 128 * s)  # two 128-column blocks
        assert int((W == 0).sum()) == expected, name


@pytest.mark.parametrize("nm", [(2, 4), (4, 8)])
def test_nm_patterns(nm):
    X = _correlated_inputs()
    st = _stats(X, hessian=True)
    for prune in (lambda W: magnitude_prune(W, 0.5, nm), lambda W: wanda_prune(W, 0.5, st.col_sq_norm, nm),
                  lambda W: sparsegpt_prune(W, 0.5, st.H, nm)):
        W = _layer()
        prune(W)
        _check_nm(W, *nm)
        assert int((W == 0).sum()) == W.numel() // 2


def test_sparsegpt_beats_magnitude_on_correlated_inputs():
    X = _correlated_inputs()
    st = _stats(X, hessian=True)
    W0 = _layer()
    errs = {}
    for name in ("magnitude", "wanda", "sparsegpt"):
        W = W0.clone()
        if name == "magnitude":
            magnitude_prune(W, 0.6)
        elif name == "wanda":
            wanda_prune(W, 0.6, st.col_sq_norm)
        else:
            sparsegpt_prune(W, 0.6, st.H)
        errs[name] = float(torch.linalg.norm(X @ W0.t() - X @ W.t()))
    assert errs["sparsegpt"] < 0.8 * errs["magnitude"], errs
    assert errs["sparsegpt"] < errs["wanda"], errs


def test_sparsegpt_nm_beats_magnitude_nm():
    X = _correlated_inputs()
    st = _stats(X, hessian=True)
    W0 = _layer()
    Wm, Ws = W0.clone(), W0.clone()
    magnitude_prune(Wm, 0.5, (2, 4))
    sparsegpt_prune(Ws, 0.5, st.H, (2, 4))
    em = torch.linalg.norm(X @ (W0 - Wm).t())
    es = torch.linalg.norm(X @ (W0 - Ws).t())
    assert es < 0.8 * em


def test_wanda_equals_magnitude_when_norms_equal():
    W0 = _layer()
    norms = torch.full((W0.shape[1],), 3.7)
    for nm in (None, (2, 4)):
        Ww, Wm = W0.clone(), W0.clone()
        wanda_prune(Ww, 0.45, norms, nm)
        magnitude_prune(Wm, 0.45, nm, group="row")
        assert torch.equal(Ww, Wm)
    # and differs once the norms differ
    Ww, Wm = W0.clone(), W0.clone()
    wanda_prune(Ww, 0.45, torch.linspace(0.1, 10, W0.shape[1]))
    magnitude_prune(Wm, 0.45, group="row")
    assert not torch.equal(Ww, Wm)


def test_layer_stats_match_definition():
    X = _correlated_inputs(n=64, inp=16)
    st = _stats(X, hessian=True)
    torch.testing.assert_close(st.col_sq_norm, (X ** 2).sum(0) / 8, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(st.H, 2 / 8 * X.t() @ X, rtol=1e-4, atol=1e-3)
    assert st.nsamples == 8 and not st.nonfinite
    st.add_batch(torch.full((1, 4, 16), float("nan")))
    assert st.nonfinite


def test_dead_inputs_and_errors():
    X = _correlated_inputs(n=256, inp=64)
    X[:, 5] = 0.0
    st = _stats(X, hessian=True)
    W = _layer(8, 64)
    sparsegpt_prune(W, 0.25, st.H)
    assert torch.all(W[:, 5] == 0)
    with pytest.raises(PruningError, match="multiple"):
        magnitude_prune(_layer(4, 6), 0.5, (2, 4))
    with pytest.raises(PruningError, match="N < M"):
        magnitude_prune(_layer(4, 8), 0.5, (4, 4))
    with pytest.raises(PruningError, match="sparsity"):
        magnitude_prune(_layer(4, 8), 1.0)
    with pytest.raises(PruningError, match="Hessian"):
        sparsegpt_prune(_layer(4, 8), 0.5, torch.eye(7))
