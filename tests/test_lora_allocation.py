"""AlphaLoRA allocation: the reference's test vector, both roundings on hand-worked cases, MoLA, ranks, bad input.

Expected values are written out by hand (worked in the comments) or come from the research notes; none is
computed with the code under test.
"""

from __future__ import annotations

import numpy as np
import pytest

from htsr.errors import ConfigError
from htsr.lora import allocation as A

# docs: /work/shared/research/methods_tb_ap_alora.md section 4 (LLaMA-7B block means, beta 2.5, T 160)
LLAMA7B_VECTOR = [3, 3, 4, 3, 4, 4, 3, 3, 3, 3, 3, 3, 3, 3, 3, 4, 4, 5, 7, 6, 7, 8, 6, 6, 7, 8, 8, 8, 7, 8, 8, 5]


def _llama_block_means() -> np.ndarray:
    from htsr.data.reference import alphapruning_alphas

    a = alphapruning_alphas("llama-7b-hf")  # 224 per-matrix alphas, 7 per block
    assert a.shape == (224,)
    return a.reshape(32, 7).mean(axis=1)


@pytest.mark.parametrize("rounding", A.ROUNDINGS)
def test_llama7b_test_vector(rounding):
    n = A.expert_counts(_llama_block_means(), 160, 2.5, rounding=rounding)
    assert n.tolist() == LLAMA7B_VECTOR
    assert sum(LLAMA7B_VECTOR) == 160


def test_llama7b_top_k():
    k = A.top_k(LLAMA7B_VECTOR)
    assert k.tolist() == [2] * 32  # every block has > 1 expert
    assert A.top_k([1, 2, 5]).tolist() == [1, 2, 2]
    assert A.top_k([1, 2, 5], k=3).tolist() == [1, 2, 3]


def test_reference_repair_loop_adds_by_unnormalised_weight():
    # w = (1, 1, 4), T = 8: quotas 4/3, 4/3, 16/3 -> round 1, 1, 5 (sum 7). w - n = (0, 0, -1): argmin is the
    # third layer -> (1, 1, 6). Largest remainder: remainders 1/3 each, first wins -> (2, 1, 5).
    assert A.reference_rounding([1, 1, 4], 8).tolist() == [1, 1, 6]
    assert A.largest_remainder([1, 1, 4], 8).tolist() == [2, 1, 5]
    assert A.expert_counts([1, 1, 4], 8, beta=1.0, rounding="reference").tolist() == [1, 1, 6]


def test_reference_repair_loop_removes():
    # w = (1, 1, 1), T = 5: quotas 5/3 -> round 2, 2, 2 (sum 6); w - n = -1 each, argmax first -> (1, 2, 2).
    assert A.reference_rounding([1, 1, 1], 5).tolist() == [1, 2, 2]
    assert A.largest_remainder([1, 1, 1], 5).tolist() == [2, 2, 1]


def test_floor():
    # w = (1, 2, 2), T = 4: quotas .8, 1.6, 1.6 -> round 1, 2, 2 (sum 5); w - n = (0, 0, 0).
    # floor 0 (the reference): the first layer loses its expert -> (0, 2, 2); floor 1: it may not, the second does.
    assert A.reference_rounding([1, 2, 2], 4, floor=0).tolist() == [0, 2, 2]
    assert A.reference_rounding([1, 2, 2], 4, floor=1).tolist() == [1, 1, 2]
    # largest remainder, quotas .1, .1, 3.8 with floor 1 -> 1, 1, 3 (floor raises two; 3 = 5 - 2)
    assert A.largest_remainder([1, 1, 38], 5).tolist() == [1, 1, 3]
    assert A.largest_remainder([1, 1, 38], 5, floor=0).tolist() == [0, 0, 5]


def test_beta_is_an_exponent():
    # alphas (2, 4), beta 1: weights 2:4 -> 4, 8 of 12; beta 2: 4:16 -> 2.4, 9.6 -> 2, 10 (remainders .4 .6)
    assert A.expert_counts([2, 4], 12, beta=1).tolist() == [4, 8]
    assert A.expert_counts([2, 4], 12, beta=2).tolist() == [2, 10]


def test_mola_matches_its_pattern():
    inc = A.mola_counts(32, 160, "increasing")
    assert inc.tolist() == [2] * 8 + [4] * 8 + [6] * 8 + [8] * 8
    assert A.mola_counts(32, 160, "decreasing").tolist() == [8] * 8 + [6] * 8 + [4] * 8 + [2] * 8
    # 6 layers, budget 24: groups 0,0,1,2,2,3 -> weights 2,2,4,6,6,8 (28); quotas 12/7,12/7,24/7,36/7,36/7,48/7
    # floors 1,1,3,5,5,6 (21), remainders .71,.71,.43,.14,.14,.86 -> +1 to layers 5, 0, 1
    assert A.mola_counts(6, 24, "increasing").tolist() == [2, 2, 3, 5, 5, 7]
    assert A.mola_counts(6, 24, "decreasing").tolist() == [7, 5, 5, 3, 2, 2]
    assert A.uniform_counts(6, 24).tolist() == [4] * 6
    assert A.uniform_counts(4, 10).tolist() == [3, 3, 2, 2]


def test_named_allocations_share_the_budget():
    alphas = [2.0, 3.0, 4.0, 5.0, 3.5, 2.5]
    for name in A.ALLOCATIONS:
        n = A.allocation(name, 24, metrics=alphas)
        assert n.sum() == 24 and n.min() >= 1, name
    assert A.allocation("alphalora", 24, metrics=alphas).tolist() == A.expert_counts(alphas, 24).tolist()


def test_rank_allocation_keeps_total_rank():
    # alphas (2, 4), beta 1, uniform rank 6 over 2 layers = 12: -> 4, 8
    assert A.rank_allocation([2, 4], rank=6, beta=1).tolist() == [4, 8]
    r = A.rank_allocation(_llama_block_means(), rank=8)
    assert r.sum() == 8 * 32 and r.min() >= 1


@pytest.mark.parametrize("call, match", [
    (lambda: A.expert_counts([2.0, 3.0, 4.0], budget=2), "smaller than the 3 layers"),
    (lambda: A.expert_counts([2.0, 3.0], budget=10, beta=0), "beta must be"),
    (lambda: A.expert_counts([2.0, 3.0], budget=10, beta=-1.0), "beta must be"),
    (lambda: A.expert_counts([2.0, float("nan"), 3.0], budget=10), "NaN/Inf .*layer 1"),
    (lambda: A.expert_counts([2.0, -1.0], budget=10), "must be > 0"),
    (lambda: A.expert_counts([], budget=10), "no per-layer metrics"),
    (lambda: A.expert_counts([2.0, 3.0], budget=10.5), "integer"),
    (lambda: A.expert_counts([2.0, 3.0], budget=10, rounding="banker"), "unknown rounding"),
    (lambda: A.allocation("fancy", 10, n_layers=2), "unknown allocation"),
    (lambda: A.allocation("alphalora", 10, n_layers=2), "needs per-layer metrics"),
    (lambda: A.mola_counts(4, 10, "sideways"), "MoLA shape"),
    (lambda: A.rank_allocation([2.0, 3.0], rank=0), "rank must be"),
    (lambda: A.top_k([2, 0]), "at least one expert"),
])
def test_bad_input(call, match):
    with pytest.raises(ConfigError, match=match):
        call()


def test_paper_preset_has_the_reference_hyper_parameters():
    from htsr.lora.config import LLAMA_TARGETS, preset_config

    c = preset_config("paper")
    # run_all.sh / mola_training_mistral.py (research notes, section 4)
    assert (c.budget, c.beta, c.r, c.lora_alpha, c.lora_dropout) == (160, 2.5, 8, 16.0, 0.05)
    assert (c.lr, c.epochs, c.batch_size, c.warmup_steps, c.max_length) == (3e-4, 20, 128, 100, 256)
    assert c.target_modules == LLAMA_TARGETS == ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                 "down_proj")
    assert c.balance_loss == 0.0
