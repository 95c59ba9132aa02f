"""Regularizers (spectral norm, loss truncation, example-tied dropout), fine-tuning, models and checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from htsr.errors import ConfigError
from htsr.memorization.data import TinyMemConfig, make_math_data
from htsr.memorization.errors import MemorizationError
from htsr.memorization.finetune import finetune, finetune_data
from htsr.memorization.mlp import find_mlps
from htsr.memorization.regularizers import ExampleTiedDropout, LossTruncation, SpectralNormPenalty, make_regularizer
from htsr.memorization.testbed import load_testbed, make_model, save_testbed
from htsr.memorization.training import make_optimizer, train_testbed

SMALL = dict(n_main=200, n_aux=80, n_test=20, n_noise=20, length=5, max_ctx=32, prompt_len=8, k=10, aux_ks=(2,))


def test_make_model_matches_the_reference_config_and_is_seeded():
    m = make_model(2, max_ctx=150)
    c = m.config
    assert (c.n_layer, c.n_head, c.n_embd, c.n_positions, c.vocab_size) == (2, 4, 128, 150, 14)
    assert c.activation_function == "relu" and c.resid_pdrop == c.attn_pdrop == c.embd_pdrop == 0.0
    assert abs(c.initializer_range - 0.8 / 128 ** 0.5) < 1e-12
    assert find_mlps(m)[0].n_neurons == 512
    state = torch.random.get_rng_state()
    a, b = make_model(1, max_ctx=20, seed=4), make_model(1, max_ctx=20, seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)  # no global seeding side effect
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
    with pytest.raises(MemorizationError, match="n_layer"):
        make_model(0)


def test_spectral_penalty_power_iteration_converges_to_sigma_max(torch_one_thread):
    m = make_model(2, max_ctx=16, n_embd=32, n_head=2)
    pen = SpectralNormPenalty(m, lam=2.0)
    assert len(pen.u) == 2 * (3 * 2 + 2 + 2)  # per block: 3*heads QKV pieces, heads out-proj pieces, c_fc, c_proj
    for _ in range(60):
        p = pen.penalty()
    sig = [torch.linalg.matrix_norm(w.detach(), ord=2) for w in pen._pieces()]
    assert float(p.detach()) == pytest.approx(float(sum(sig)), rel=1e-3)  # lam/2 = 1
    p.backward()
    assert m.transformer.h[0].mlp.c_fc.weight.grad is not None
    with pytest.raises(ConfigError, match="lam must be a finite number in \\(0, inf\\]"):
        SpectralNormPenalty(m, lam=0)


def test_loss_truncation_drops_the_top_fraction_after_warmup():
    lt = LossTruncation(dropc=0.1, window=100, recompute=50, min_count=100)
    rng = np.random.default_rng(0)
    for _ in range(5):  # 100 samples: warm-up, everything kept
        assert bool((lt.mask(torch.tensor(rng.random(20))) == 1).all())
    batch = torch.tensor(rng.random(200))
    keep = lt.mask(batch)
    assert lt.cutoff == pytest.approx(np.percentile(lt.vals, 90))
    assert torch.equal(keep, (batch < lt.cutoff).double())
    assert 0.02 < 1 - float(keep.mean()) < 0.25
    with pytest.raises(ConfigError, match="dropc"):
        LossTruncation(dropc=1.0)


def test_example_tied_dropout_masks_channels_per_example(torch_one_thread):
    m = make_model(2, max_ctx=16, n_embd=40, n_head=2)
    etd = ExampleTiedDropout(m, n_examples=10, p_fixed=0.2, p_mem=0.5, seed=1)
    assert etd.n_fixed == 8
    for mask in etd.masks:
        assert mask.shape == (10, 40) and bool((mask[:, :8] == 1).all())
    seen = []
    hook = m.transformer.h[1].register_forward_pre_hook(lambda mod, args, kw: seen.append(
        (kw.get("hidden_states", args[0] if args else None)).detach().clone()), with_kwargs=True)
    ids = torch.randint(0, 14, (3, 16), generator=torch.Generator().manual_seed(0))
    m.train()
    etd.loss(m, ids, torch.tensor([0, 1, 2]))
    m.eval()
    with torch.no_grad():
        m(input_ids=ids)
    hook.remove()
    # hooks run in registration order: the dropout hook (registered first) has masked the block input already
    train_in, eval_in = seen
    for row, ex in enumerate((0, 1, 2)):
        dropped = etd.masks[1][ex] == 0
        assert bool((train_in[row][:, dropped] == 0).all())   # whole channels dropped at every position
    assert bool((eval_in[..., 8:] == 0).all()) and bool((eval_in[..., :8] != 0).any())
    assert etd.eval_mask[0] == pytest.approx((0.2 + 0.5) / 0.2)


def test_regularized_training_finetune_and_checkpoint_roundtrip(tmp_path, torch_one_thread):
    d = make_math_data(TinyMemConfig(**SMALL))
    m = make_model(1, max_ctx=32, n_embd=32, n_head=2)
    reg = make_regularizer("example_tied_dropout", m, d.train.shape[0], seed=0)
    res, opt = train_testbed(m, d.train, 1, batch_size=64, regularizer=reg, progress=False)
    assert res.state.step == -(-d.train.shape[0] // 64)
    save_testbed(tmp_path / "ck", m, opt, reg.to_extra())
    m2, extra, opt2 = load_testbed(tmp_path / "ck", with_optimizer=True)
    assert extra["regularizer"]["name"] == "example_tied_dropout"
    with torch.no_grad():
        assert torch.allclose(m(input_ids=d.tests["increment_7"]).logits, m2(input_ids=d.tests["increment_7"]).logits)
    assert finetune_data(d, "clean").shape[0] == 20 and finetune_data(d, "extra").shape[0] == d.retain.shape[0]
    assert finetune_data(d, "both").shape[0] == 20 + d.retain.shape[0]
    with pytest.raises(MemorizationError, match="example indices"):  # ETD needs example ids to train
        finetune(m2, d, "clean", optimizer=opt2, epochs=1, progress=False)
    plain = make_model(1, max_ctx=32, n_embd=32, n_head=2)
    _, popt = train_testbed(plain, d.train, 1, batch_size=64, progress=False)
    save_testbed(tmp_path / "plain", plain, popt)
    p2, _, popt2 = load_testbed(tmp_path / "plain", with_optimizer=True)
    steps0 = float(popt2.state[next(iter(popt2.state))]["step"])
    finetune(p2, d, "clean", optimizer=popt2, epochs=2, batch_size=8, progress=False)
    assert float(popt2.state[next(iter(popt2.state))]["step"]) == steps0 + 2 * 3  # AdamW state resumed
    with pytest.raises(MemorizationError, match="unknown fine-tuning variant"):
        finetune_data(d, "dirty")
    with pytest.raises(ConfigError, match="unknown regularizer"):
        make_regularizer("weight_decay", m, 10)
    with pytest.raises(ConfigError, match=r"unknown option\(s\) for spectral_norm 'lamda'; valid: lam"):
        make_regularizer("spectral_norm", m, 10, lamda=5)  # a typo is an error, not the default
    # loss truncation's default window is half an epoch of this (small) set, so it really drops sequences
    lt = make_regularizer("loss_truncation", make_model(1, max_ctx=32, n_embd=32, n_head=2), d.train.shape[0])
    assert lt.window == d.train.shape[0] // 2
    m3 = make_model(1, max_ctx=32, n_embd=32, n_head=2)
    train_testbed(m3, d.train, 3, batch_size=64, regularizer=lt, progress=False, optimizer=make_optimizer(m3))
    assert lt.n_dropped > 0  # (in the first epoch the cutoff still comes from the early, high losses)
    # a strong spectral penalty ends with smaller top singular values than the same training without it
    sig = {}
    for lam in (None, 1.0):
        m4 = make_model(1, max_ctx=32, n_embd=32, n_head=2)
        r = make_regularizer("spectral_norm", m4, d.train.shape[0], lam=lam) if lam else None
        train_testbed(m4, d.train, 1, batch_size=64, regularizer=r, progress=False, optimizer=make_optimizer(m4))
        sig[lam] = sum(float(torch.linalg.matrix_norm(mod.weight.detach(), ord=2))
                       for mod in m4.modules() if type(mod).__name__ == "Conv1D")
    assert sig[1.0] < sig[None]
