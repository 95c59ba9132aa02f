"""Layer kinds become the right matrices: conv slices, groups, Conv1d, HF Conv1D, embeddings, QKV, MoE."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import htsr
from tests.conftest import heavy_tailed


def _svd2(w: torch.Tensor) -> np.ndarray:
    return np.linalg.svd(w.double().numpy(), compute_uv=False) ** 2


def test_conv2d_pools_kernel_position_slices_with_scale():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(16, 32, kernel_size=3)
    a = htsr.analyze(conv, precision="float64")
    r = a.rows[0]
    assert (r["kind"], r["N"], r["M"], r["rf"], r["num_evals"]) == ("conv2d", 32, 16, 9, 144)
    w = conv.weight.detach()
    ref = np.sort(np.concatenate([_svd2(w[:, :, i, j]) for i in range(3) for j in range(3)]) * 0.5)
    np.testing.assert_allclose(a.evals[a.rows[0]["name"]], ref, rtol=1e-9, atol=1e-12)


def test_grouped_conv_blockdiag_and_stacked():
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(8, 12, kernel_size=2, groups=4)  # weight (12, 2, 2, 2)
    w = conv.weight.detach()
    blk = htsr.analyze(conv, min_evals=2, precision="float64")
    st = htsr.analyze(conv, min_evals=2, conv_groups="stacked", precision="float64")
    # block-diagonal operator per kernel position: union of each group's (3 x 2) block spectrum
    ref_blk = np.sort(np.concatenate([_svd2(w[g * 3:(g + 1) * 3, :, i, j]) for i in range(2) for j in range(2)
                                      for g in range(4)]) * 0.5)
    ref_st = np.sort(np.concatenate([_svd2(w[:, :, i, j]) for i in range(2) for j in range(2)]) * 0.5)
    np.testing.assert_allclose(blk.evals[blk.rows[0]["name"]], ref_blk, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(st.evals[st.rows[0]["name"]], ref_st, rtol=1e-9, atol=1e-12)
    assert blk.rows[0]["rf"] == 16 and st.rows[0]["rf"] == 4


def test_depthwise_conv_gives_one_value_per_channel_and_position():
    torch.manual_seed(2)
    conv = torch.nn.Conv2d(10, 10, kernel_size=3, groups=10)
    a = htsr.analyze(conv, precision="float64")
    ref = np.sort(conv.weight.detach().double().numpy().ravel() ** 2 * 0.5)
    np.testing.assert_allclose(a.evals[a.rows[0]["name"]], ref, rtol=1e-9, atol=1e-15)


def test_nn_conv1d_slices_per_kernel_position():
    torch.manual_seed(3)
    conv = torch.nn.Conv1d(64, 128, kernel_size=16)
    a = htsr.analyze(conv, precision="float64")
    r = a.rows[0]
    assert (r["kind"], r["N"], r["M"], r["rf"]) == ("conv1d", 128, 64, 16)
    w = conv.weight.detach()
    ref = np.sort(np.concatenate([_svd2(w[:, :, k]) for k in range(16)]) * 0.5)
    np.testing.assert_allclose(a.evals[a.rows[0]["name"]], ref, rtol=1e-9, atol=1e-12)
    # sane exponent, unlike WeightWatcher's 76.5 on this layer
    assert 1.5 < r["alpha"] < 20


def test_hf_conv1d_equals_linear_of_transposed_weight():
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(4)
    c = Conv1D(96, 48)  # weight (48, 96): in x out
    lin = torch.nn.Linear(48, 96, bias=False)
    lin.weight.data.copy_(c.weight.detach().T)
    ra, rb = htsr.analyze(c).rows[0], htsr.analyze(lin).rows[0]
    assert ra["kind"] == "hf_conv1d" and rb["kind"] == "linear"
    assert ra["alpha"] == pytest.approx(rb["alpha"], rel=1e-10)


def test_embedding_is_opt_in():
    torch.manual_seed(5)
    m = torch.nn.Sequential(torch.nn.Embedding(500, 32), torch.nn.Linear(32, 64))
    a = htsr.analyze(m)
    r0 = a.rows[0]
    assert r0["kind"] == "embedding" and r0["status"] == "skipped" and "opt-in" in r0["reason"]
    b = htsr.analyze(m, include_embeddings=True)
    assert b.rows[0]["status"] == "success"


def test_split_qkv_for_linear_and_hf_conv1d():
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(6)
    m = torch.nn.Module()
    m.attn = torch.nn.Module()
    m.attn.c_attn = Conv1D(3 * 64, 64)  # GPT-2 layout (in, 3*out)
    m.attn.qkv = torch.nn.Linear(64, 3 * 64)
    a = htsr.analyze(m, split_qkv=True, precision="float64")
    names = [r["name"] for r in a.rows]
    assert names == ["attn.c_attn[q]", "attn.c_attn[k]", "attn.c_attn[v]", "attn.qkv[q]", "attn.qkv[k]",
                     "attn.qkv[v]"]
    wq = m.attn.qkv.weight.detach()[64:128]  # the k part of the Linear
    np.testing.assert_allclose(a.evals["attn.qkv[k]"], np.sort(_svd2(wq)), rtol=1e-7, atol=1e-12)
    wc = m.attn.c_attn.weight.detach()[:, 128:]  # the v part of the Conv1D
    np.testing.assert_allclose(a.evals["attn.c_attn[v]"], np.sort(_svd2(wc)), rtol=1e-7, atol=1e-12)
    assert len(htsr.analyze(m).rows) == 2  # not split by default


def test_moe_expert_tensor_one_row_per_expert():
    class Experts(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gate_up_proj = torch.nn.Parameter(torch.stack([heavy_tailed(64, 32, seed=s) for s in range(4)]))

    m = torch.nn.Module()
    m.experts = Experts()
    a = htsr.analyze(m, precision="float64")
    assert [r["name"] for r in a.rows] == [f"experts.gate_up_proj[expert={e}]" for e in range(4)]
    assert {r["kind"] for r in a.rows} == {"moe_expert"}
    np.testing.assert_allclose(a.evals["experts.gate_up_proj[expert=2]"],
                               np.sort(_svd2(m.experts.gate_up_proj.detach()[2])), rtol=1e-9)
    # the same tensor in a state dict is recognised by its name
    sd = {"model.layers.0.mlp.experts.down_proj": m.experts.gate_up_proj.detach()}
    assert len(htsr.analyze(sd).rows) == 4


def test_selection_by_glob_regex_and_kind(minilm_model):
    a = htsr.analyze(minilm_model, layers=["encoder.layer.1.*"], exclude=["*.output.*"])
    assert {r["name"] for r in a.rows} == {
        "encoder.layer.1.attention.self.query", "encoder.layer.1.attention.self.key",
        "encoder.layer.1.attention.self.value", "encoder.layer.1.intermediate.dense"}
    b = htsr.analyze(minilm_model, layers=[r"re:layer\.[0-1]\.attention\.self\.(query|key)$"])
    assert len(b.rows) == 4
    c = htsr.analyze(minilm_model, kinds=["embedding"], include_embeddings=True)
    assert {r["kind"] for r in c.rows if r["status"] == "success"} == {"embedding"}
    assert all(r["status"] == "skipped" for r in c.rows if r["kind"] != "embedding")
