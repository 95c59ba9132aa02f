"""TinyMem metrics on real (tiny) GPT-2 models: greedy decoding, % memorized, ASR, accuracy, forget set."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from htsr.memorization.data import TinyMemConfig, make_math_data
from htsr.memorization.errors import MemorizationError
from htsr.memorization.metrics import (
    accuracy_perplexity,
    backdoor_success,
    forget_set,
    greedy_generate,
    measure,
    noise_memorization,
)
from htsr.memorization.testbed import make_model
from htsr.memorization.training import train_testbed

SMALL = dict(n_main=300, n_aux=120, n_test=30, n_noise=30, length=6, max_ctx=40, prompt_len=10, k=12, aux_ks=(2,))


def overfit_model(ids: torch.Tensor, steps: int = 120, seed: int = 0, n_layer: int = 1, lr: float = 3e-3):
    """A real 1-layer GPT-2 (width 64) trained full-batch to reproduce ``ids`` exactly."""
    torch.set_num_threads(1)
    m = make_model(n_layer, max_ctx=ids.shape[1], n_embd=64, n_head=2, seed=seed)
    train_testbed(m, ids, None, max_steps=steps, batch_size=ids.shape[0], lr=lr, progress=False)
    return m.eval()


@functools.lru_cache(maxsize=1)
def _noise_case():
    d = make_math_data(TinyMemConfig(**SMALL))
    clean = d.retain[:8].clone()
    noised = clean.clone()
    noised[:, 14] = (noised[:, 14] + 1) % 10  # digit changes inside the checked window, prompt identical
    noised[:, 14] = torch.where(clean[:, 14] > 9, clean[:, 14], noised[:, 14])
    keep = noised[:, 14] != clean[:, 14]
    return clean[keep], noised[keep], overfit_model(noised[keep])


def test_greedy_generate_matches_uncached_decoding(torch_one_thread):
    m = make_model(2, max_ctx=30, n_embd=32, n_head=2, seed=1)
    p = torch.randint(0, 13, (5, 7), generator=torch.Generator().manual_seed(0))
    x = p.clone()
    with torch.no_grad():
        for _ in range(9):
            x = torch.cat([x, m(input_ids=x).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(greedy_generate(m, p, 9, batch_size=2), x)
    with pytest.raises(MemorizationError, match="exceeds the model"):
        greedy_generate(m, p, 30)


def test_noise_memorization_counts_exact_matches(torch_one_thread):
    clean, noised, model = _noise_case()
    r = noise_memorization(model, noised, clean, prompt_len=10, k=12)
    assert r.checked.size == clean.shape[0]
    assert r.perc_memorized == 100.0 and r.perc_correct == 0.0
    fresh = make_model(1, max_ctx=40, n_embd=64, n_head=2, seed=5)
    assert noise_memorization(fresh, noised, clean, 10, 12).perc_memorized == 0.0
    # sequences whose noise lies outside the window are not checked
    assert noise_memorization(model, noised, clean, prompt_len=20, k=12).checked.size == 0
    with pytest.raises(MemorizationError, match="not shorter than the sequence"):
        noise_memorization(model, noised, clean, prompt_len=40, k=1)


def test_accuracy_and_perplexity(torch_one_thread):
    clean, noised, model = _noise_case()
    acc, ppl = accuracy_perplexity(model, noised, pad_id=13)
    assert acc > 90 and ppl < 1.5  # only the first digits after BOS are ambiguous
    acc_pad, _ = accuracy_perplexity(model, noised, pad_id=13, include_pad=True)
    assert acc_pad > acc  # padding is trivially predicted: counting it inflates accuracy
    fresh = make_model(1, max_ctx=40, n_embd=64, n_head=2, seed=5)
    acc0, ppl0 = accuracy_perplexity(fresh, noised, pad_id=13)
    assert acc0 < 50 and ppl0 > 3


def test_backdoor_success_and_measure(torch_one_thread):
    d = make_math_data(TinyMemConfig(**{**SMALL, "artifact": "backdoor", "n_main": 1200, "n_test": 100}))
    model = overfit_model(d.backdoor, steps=100)
    r = backdoor_success(model, d.backdoor_clean, d.trigger_ids, k=12)
    assert r.checked.size == d.backdoor.shape[0] and r.perc_memorized > 90
    m = measure(model, d)
    assert m.perc_memorized == r.perc_memorized and m.n_asr == d.backdoor_test.shape[0]
    assert set(m.accuracy) == set(d.tests) and np.isnan(m.perc_correct)
    f = forget_set(d, m)
    assert f.shape[0] == int(r.memorized.sum()) and bool((f == 2).any(dim=1).all())
    fresh = make_model(1, max_ctx=40, n_embd=64, n_head=2, seed=5)
    with pytest.raises(MemorizationError, match="forget set is empty"):
        forget_set(d, measure(fresh, d))
