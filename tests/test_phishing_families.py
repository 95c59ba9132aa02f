"""The attack and the defence on other causal-LM families (GPT-NeoX/Pythia, LLaMA), tiny and random; the paper
preset's smoke test on a GPU."""

from __future__ import annotations

import pytest
import torch

from htsr.phishing.attack import greedy_continuations, run_phish
from htsr.phishing.config import DefendConfig, preset
from htsr.phishing.defend import defend
from htsr.phishing.model import ByteTokenizer


def _neox():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    return GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=256, hidden_size=32, num_hidden_layers=2,
                                            num_attention_heads=2, intermediate_size=64, max_position_embeddings=256))


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                        num_key_value_heads=2, intermediate_size=64, max_position_embeddings=256,
                                        bos_token_id=None, eos_token_id=None, pad_token_id=None))


@pytest.mark.parametrize("build", [_neox, _llama], ids=["gpt_neox", "llama"])
def test_left_padded_generation_matches_single_prompts(build):
    model = build()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3)
    tok = ByteTokenizer()
    prompts = ["My password is:", "I go by Avery, 30, a chef at Bluefin Labs. My credit card number is:"]
    batched = greedy_continuations(model, tok, prompts, 6)
    single = [greedy_continuations(model, tok, [p], 6)[0] for p in prompts]
    assert batched == single


@pytest.mark.parametrize("build", [_neox, _llama], ids=["gpt_neox", "llama"])
def test_run_and_defend_on_other_families(build):
    model = build()
    c = preset("tiny")[0]
    r = run_phish(model, ByteTokenizer(), c, 0)
    assert r["steps"] == c.total_steps and len(r["attacks"]) == c.attack_iters
    d = defend(model, ByteTokenizer(), r, c, DefendConfig(methods=("durable", "balanced_subnet"), forget="all",
                                                          n_retain=8, ppl_windows=2), 0)
    assert [m["method"] for m in d["methods"]] == ["durable", "balanced_subnet"]
    assert all(m["n_changed"] > 0 for m in d["methods"])


@pytest.mark.gpu
def test_paper_preset_smoke_on_a_gpu(tmp_path):
    """The paper preset (its lr, batch 64, 64-token rows... shortened phases) on a Pythia-70m-shaped GPT-NeoX built
    from its config (random weights: nothing is downloaded), with bytes as tokens, on CUDA."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from htsr.cli.main import main

    cfg = GPTNeoXConfig(vocab_size=50304, hidden_size=512, num_hidden_layers=6, num_attention_heads=8,
                        intermediate_size=2048, max_position_embeddings=2048, rotary_pct=0.25)
    GPTNeoXForCausalLM(cfg).save_pretrained(tmp_path / "pythia70m-shaped")
    assert main(["phish", "run", "--preset", "paper", "--model", str(tmp_path / "pythia70m-shaped"),
                 "--set", "seqlen=192", "--set", "clean_iters=2", "--set", "num_poisons=5", "--set", "gap=2",
                 "--set", "phase4_iters=2", "--set", "attack_iters=2", "--set", "n_random_prompts=10",
                 "--out-dir", str(tmp_path / "run")]) == 0
