"""Pruning on CUDA agrees with CPU (skipped without a GPU)."""

from __future__ import annotations

import copy

import pytest
import torch

from htsr.nn import find_layout, weight_2d
from htsr.pruning import evaluation as E
from htsr.pruning.prune import prune_model

transformers = pytest.importorskip("transformers")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _model():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=256, num_hidden_layers=3,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("pruner,allocation", [("wanda", "alpha"), ("sparsegpt", "alpha"), ("wanda", "owl"),
                                               ("magnitude", "alpha")])
def test_cuda_matches_cpu(pruner, allocation):
    torch.backends.cuda.matmul.allow_tf32 = False  # as the references
    ids = torch.randint(0, 256, (8, 64), generator=torch.Generator().manual_seed(0))
    cpu = _model()
    gpu = copy.deepcopy(cpu).cuda()
    rc = prune_model(cpu, 0.6, pruner, allocation, 0.2, ids)
    rg = prune_model(gpu, 0.6, pruner, allocation, 0.2, ids)
    assert rg.achieved_sparsity == rc.achieved_sparsity
    for a, b in zip(rc.layers, rg.layers, strict=True):
        assert abs(a["target_sparsity"] - b["target_sparsity"]) < 1e-9
    agree = []
    for mc, mg in zip(find_layout(cpu).modules(), find_layout(gpu).modules(), strict=True):
        wc, wg = weight_2d(mc), weight_2d(mg).cpu()
        agree.append(float(((wc == 0) == (wg == 0)).float().mean()))
    assert min(agree) > 0.98, agree
    text = torch.randint(0, 256, (2048,), generator=torch.Generator().manual_seed(1))
    pc, pg = E.perplexity(cpu, text, 64), E.perplexity(gpu, text, 64)
    assert abs(pc - pg) / pc < 0.01
