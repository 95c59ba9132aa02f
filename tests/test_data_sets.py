"""Recipe data: digits splits, Burgers solver and dataset, KJV classification splits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from htsr.data.burgers import burgers_split, grf_initial_conditions, nrmse, solve_burgers
from htsr.data.digits import digits_split
from htsr.errors import ConfigError


def test_digits_split_fixed_test_set_stratified_subsets():
    a = digits_split(0.2, seed=0, normalize=False)
    b = digits_split(0.2, seed=1, normalize=False)
    full = digits_split(1.0, seed=0, normalize=False)
    assert torch.equal(a[2], b[2]) and torch.equal(a[3], b[3])  # same test set for every seed and fraction
    assert torch.equal(a[3], full[3])
    assert not torch.equal(a[0], b[0])
    assert a[0].shape[1:] == (1, 8, 8) and a[0].dtype == torch.float32
    counts = np.bincount(a[1].numpy(), minlength=10)
    assert counts.min() >= 22 and counts.max() <= 28  # 20% of the ~126 pool images per class
    assert full[1].numel() + full[3].numel() == 1797
    with pytest.raises(ConfigError):
        digits_split(0.0)


def test_burgers_solver_matches_cole_hopf_exact_solution():
    # u = -2 nu phi_x / phi with phi = 2 + exp(-4 pi^2 nu t) cos(2 pi x) solves viscous Burgers exactly
    nu, n = 0.05, 128
    x = np.arange(n) / n

    def exact(t):
        e = np.exp(-4 * np.pi**2 * nu * t)
        return 4 * np.pi * nu * e * np.sin(2 * np.pi * x) / (2 + e * np.cos(2 * np.pi * x))

    u = solve_burgers(exact(0.0)[None], nu=nu, t_end=0.5, dt=2e-3)[0]
    assert np.abs(u - exact(0.5)).max() < 1e-9 * np.abs(exact(0.5)).max() + 1e-12


def test_burgers_solver_converges_and_dissipates():
    u0 = grf_initial_conditions(4, 128, seed=0)
    assert np.abs(u0.mean(axis=1)).max() < 1e-12  # zero-mean field
    a = solve_burgers(u0, nu=0.05, t_end=0.3, dt=2e-3)
    b = solve_burgers(u0, nu=0.05, t_end=0.3, dt=1e-3)
    assert np.abs(a - b).max() < 1e-6 * np.abs(b).max()
    assert np.all((a**2).sum(1) < (u0**2).sum(1))  # energy decays
    assert np.abs(a.mean(1)).max() < 1e-10  # the mean is conserved


def test_burgers_split_and_nrmse():
    xtr, ytr, xte, yte = burgers_split(0.25, seed=1, n_pool=16, n_test=4, n_grid=32, solver_grid=64)
    assert xtr.shape == (4, 32) and xte.shape == (4, 32) and ytr.dtype == torch.float32
    again = burgers_split(0.25, seed=1, n_pool=16, n_test=4, n_grid=32, solver_grid=64)
    assert torch.equal(xtr, again[0]) and torch.equal(yte, again[3])
    assert nrmse(yte, yte) == 0.0
    assert nrmse(torch.zeros_like(yte), yte) == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="multiple"):
        burgers_split(1.0, n_pool=4, n_test=2, n_grid=48, solver_grid=64)


def test_kjv_classification_split_balanced_and_disjoint():
    from htsr.data.text import kjv_classification_split

    tr, ytr, te, yte, classes = kjv_classification_split(0.25, seed=0, n_pool=160, n_test=80)
    assert len(classes) == 8 and "law" in classes
    assert np.bincount(ytr).tolist() == [5] * 8 and np.bincount(yte).tolist() == [10] * 8
    assert not set(tr) & set(te)
    tr2, *_ = kjv_classification_split(0.25, seed=1, n_pool=160, n_test=80)
    _, _, te2, _, _ = kjv_classification_split(1.0, seed=1, n_pool=160, n_test=80)
    assert tr2 != tr and te2 == te
    with pytest.raises(ConfigError, match="unknown label"):
        kjv_classification_split(label="book")


def test_tokenized_batches_pad_and_shuffle(minilm_dir):
    from transformers import AutoTokenizer

    from htsr.data.text import TokenizedBatches

    tok = AutoTokenizer.from_pretrained(str(minilm_dir))
    texts = ["Jesus wept.", "In the beginning God created the heaven and the earth.", "Amen."]
    b = TokenizedBatches(texts, [0, 1, 2], tok, batch_size=2, seed=0)
    batches = list(b)
    assert len(b) == 2 and [x["labels"].numel() for x in batches] == [2, 1]
    for x in batches:
        assert x["input_ids"].shape == x["attention_mask"].shape
        assert (x["input_ids"][x["attention_mask"] == 0] == tok.pad_token_id).all()
    fixed = TokenizedBatches(texts, [0, 1, 2], tok, batch_size=3, shuffle=False)
    assert next(iter(fixed))["labels"].tolist() == [0, 1, 2]
    with pytest.raises(ConfigError, match="labels"):
        TokenizedBatches(texts, [0], tok)
