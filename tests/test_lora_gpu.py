"""The ``paper`` preset (a 7B decoder on a GPU) as a smoke test on a tiny random LLaMA, and the MoE-LoRA layer on
CUDA against the CPU (skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_moe_layer_cuda_matches_cpu():
    from htsr.lora.layer import MoLoraLinear

    torch.manual_seed(0)
    cpu = MoLoraLinear(torch.nn.Linear(64, 48).double(), n_experts=5, top_k=2, r=8, lora_dropout=0.0,
                       init_lora_weights=False).double()
    import copy

    gpu = copy.deepcopy(cpu).cuda()
    x = torch.randn(3, 7, 64, dtype=torch.float64)
    assert torch.allclose(gpu(x.cuda()).cpu(), cpu(x), atol=1e-10)


def test_paper_preset_smoke(tmp_path):
    transformers = pytest.importorskip("transformers")
    from htsr.examples import example_path
    from htsr.lora.config import preset_config
    from htsr.lora.train import run

    tok = transformers.AutoTokenizer.from_pretrained(str(example_path("minilm")))
    cfg = transformers.LlamaConfig(vocab_size=tok.vocab_size, hidden_size=64, intermediate_size=128,
                                   num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                                   max_position_embeddings=256)
    torch.manual_seed(0)
    transformers.LlamaModel(cfg).save_pretrained(tmp_path / "llama")
    tok.save_pretrained(tmp_path / "llama")
    c = preset_config("paper", model=str(tmp_path / "llama"), budget=16, n_train=32, n_test=16, epochs=1,
                      batch_size=8, max_length=32, warmup_steps=2, task="kjv_testament")
    assert c.device == "cuda" and c.lr == 3e-4 and c.r == 8 and c.lora_alpha == 16.0
    res = run(c, 0, tmp_path / "adapters")
    assert sum(res["allocation"]["experts"]) == 16
    assert 0.0 <= res["metrics"]["accuracy"] <= 1.0
    assert (tmp_path / "adapters" / "adapter_model.safetensors").is_file()
