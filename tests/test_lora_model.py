"""MoE-LoRA layer and model: one expert == PEFT LoRA (Linear and GPT-2 Conv1D), top-k routing against a per-token
loop written here, freezing, save/load, removal, bad input."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from htsr.lora.config import MoLoraConfig
from htsr.lora.layer import MoLoraLinear
from htsr.lora.model import LoraError, MoLoraModel, inject, layer_alphas, target_layers

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")


def tiny_bert(hidden: int = 32, layers: int = 3, seed: int = 0) -> nn.Module:
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                                  intermediate_size=2 * hidden, max_position_embeddings=32,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(seed)
    return transformers.BertModel(cfg, add_pooling_layer=False).eval()


def tiny_gpt2(seed: int = 0) -> nn.Module:
    cfg = transformers.GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=2, n_positions=32, resid_pdrop=0.0,
                                  embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(seed)
    return transformers.GPT2Model(cfg).eval()


def ids(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(seed))


def _copy_from_peft(pm: nn.Module, ours: MoLoraModel) -> int:
    n = 0
    for name, mod in pm.named_modules():
        if hasattr(mod, "lora_A") and isinstance(mod.lora_A, nn.ModuleDict) and "default" in mod.lora_A:
            short = name.split("base_model.model.", 1)[1]
            layer = ours.layers[short]
            with torch.no_grad():
                layer.lora_A[0].copy_(mod.lora_A["default"].weight)
                layer.lora_B[0].copy_(mod.lora_B["default"].weight)
            n += 1
    return n


@pytest.mark.parametrize("make, targets, fan", [(tiny_bert, ("query", "value", "dense"), False),
                                                (tiny_gpt2, ("c_attn", "c_fc", "c_proj"), True)])
def test_one_expert_equals_peft_lora(make, targets, fan):
    base = make()
    pcfg = peft.LoraConfig(r=4, lora_alpha=12, lora_dropout=0.0, target_modules=list(targets),
                           init_lora_weights=False, fan_in_fan_out=fan)
    pm = peft.get_peft_model(copy.deepcopy(base), pcfg).eval()
    ours = inject(base, MoLoraConfig(target_modules=targets, experts=(1,), r=4, lora_alpha=12, lora_dropout=0.0))
    assert _copy_from_peft(pm, ours) == len(ours.layers) > 0
    x = ids()
    with torch.no_grad():
        want = pm(input_ids=x).last_hidden_state
        got = ours(input_ids=x).last_hidden_state
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(want, make()(input_ids=x).last_hidden_state, atol=1e-3)  # the adapter matters


def test_topk_routing_matches_a_per_token_loop():
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    layer = MoLoraLinear(base, n_experts=4, top_k=2, r=3, lora_alpha=6.0, lora_dropout=0.0, init_lora_weights=False)
    x = torch.randn(2, 3, 6)
    got = layer(x)
    # independent reference: token by token, the k best experts by softmax probability, weights renormalised
    want = torch.empty(2, 3, 5)
    with torch.no_grad():
        _loop(layer, base, x, want)
    assert torch.allclose(got, want, atol=1e-5)


def _loop(layer, base, x, want):
    for i in range(2):
        for j in range(3):
            t = x[i, j]
            p = torch.softmax(layer.router.weight @ t, dim=0)
            order = sorted(range(4), key=lambda e: -float(p[e]))[:2]
            tot = float(p[order[0]] + p[order[1]])
            y = base(t)
            for e in order:
                y = y + float(p[e]) / tot * 2.0 * (layer.lora_B[e] @ (layer.lora_A[e] @ t))
            want[i, j] = y


def test_init_is_identity_and_router_has_no_bias():
    base = nn.Linear(8, 8)
    layer = MoLoraLinear(base, n_experts=3, top_k=2, r=2)
    x = torch.randn(4, 8)
    assert torch.equal(layer(x), base(x))
    assert layer.router.bias is None
    assert layer.lora_A.shape == (3, 2, 8) and layer.lora_B.shape == (3, 8, 2)


def test_balance_loss_uniform_router_is_one():
    layer = MoLoraLinear(nn.Linear(4, 4), n_experts=4, top_k=2, r=2)
    with torch.no_grad():
        layer.router.weight.zero_()  # p = 1/4 for each expert: E * sum f_e / E = 1
    layer(torch.randn(10, 4))
    assert float(layer.balance_loss().detach()) == pytest.approx(1.0)


def test_freeze_and_gradients_only_on_adapters():
    model = tiny_bert()
    w = inject(model, MoLoraConfig(target_modules=("query", "value"), experts=(1, 3, 4), r=2, lora_dropout=0.0,
                                   init_lora_weights=False), seed=0)
    assert [r["experts"] for r in w.allocation_table()] == [1, 3, 4]
    assert w.top_k == [1, 2, 2]
    out = w(input_ids=ids()).last_hidden_state.sum()
    out.backward()
    for n, p in model.named_parameters():
        is_adapter = ".lora_A" in n or ".lora_B" in n or ".router." in n
        assert p.requires_grad == is_adapter, n
        if not is_adapter:
            assert p.grad is None, n
    assert all(la.lora_A.grad is not None for la in w.layers.values())
    counts = w.parameter_counts()
    # 3 blocks x (query, value): experts (1, 3, 4) x (A 2x32 + B 32x2) = 8 x 128 each; routers 32 x E for E > 1
    assert counts["experts"] == 2 * (1 + 3 + 4) * 128
    assert counts["routers"] == 2 * 32 * (3 + 4)


def test_save_load_roundtrip_and_unload(tmp_path):
    model = tiny_bert()
    ref = copy.deepcopy(model)
    x = ids()
    with torch.no_grad():
        before = model(input_ids=x).last_hidden_state.clone()
    w = inject(model, MoLoraConfig(target_modules=("query", "key", "value", "dense"), experts=(2, 1, 3), r=2,
                                   init_lora_weights=False), seed=3)
    with torch.no_grad():
        adapted = w(input_ids=x).last_hidden_state.clone()
    assert not torch.allclose(adapted, before, atol=1e-4)
    d = w.save_pretrained(tmp_path / "adapter", base_model_name_or_path="tiny-bert")
    doc = json.loads((d / "adapter_config.json").read_text())
    assert doc["experts"] == [2, 1, 3] and doc["base_model_name_or_path"] == "tiny-bert"
    assert (d / "adapter_model.safetensors").is_file()
    restored = w.unload()
    assert restored is model and not any(isinstance(m, MoLoraLinear) for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(input_ids=x).last_hidden_state, before)
    assert all(p.requires_grad for p in model.parameters())
    assert set(dict(model.named_parameters())) == set(dict(ref.named_parameters()))
    loaded = MoLoraModel.from_pretrained(ref, d)
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=x).last_hidden_state, adapted, atol=1e-6)
    assert not any(p.requires_grad for p in ref.parameters())


def test_modules_to_save_trained_saved_and_restored(tmp_path):
    model = tiny_bert()
    head_before = model.encoder.layer[2].output.LayerNorm.weight.detach().clone()
    w = inject(model, MoLoraConfig(target_modules=("query",), modules_to_save=("encoder.layer.2.output.LayerNorm",)))
    ln = model.encoder.layer[2].output.LayerNorm
    assert ln.weight.requires_grad
    with torch.no_grad():
        ln.weight.add_(1.0)
    d = w.save_pretrained(tmp_path / "a")
    w.unload()
    assert torch.equal(ln.weight, head_before)
    loaded = MoLoraModel.from_pretrained(model, d)
    assert torch.equal(loaded.model.encoder.layer[2].output.LayerNorm.weight, head_before + 1.0)


def test_targets_and_blocks_per_model():
    blocks, per = target_layers(tiny_gpt2(), ("c_attn",))
    assert blocks == ["h.0", "h.1"] and [list(b) for b in per] == [["h.0.attn.c_attn"], ["h.1.attn.c_attn"]]
    _, per = target_layers(tiny_bert(), ("re:attention\\.self\\.(query|key)$",))
    assert list(per[0]) == ["encoder.layer.0.attention.self.query", "encoder.layer.0.attention.self.key"]


def test_bad_input(tmp_path):
    with pytest.raises(LoraError, match="match none of the"):
        inject(tiny_bert(), MoLoraConfig(target_modules=("q_proj",)))
    with pytest.raises(LoraError, match="cannot find the transformer blocks"):
        inject(nn.Sequential(nn.Linear(3, 3)), MoLoraConfig(target_modules=("0",)))
    with pytest.raises(Exception, match="experts has 2 values but the model has 3 blocks"):
        inject(tiny_bert(), MoLoraConfig(target_modules=("query",), experts=(1, 2)))
    # adapters of another base model: hidden 32 vs 16 -> a shape mismatch, and the model is left unchanged
    w = inject(tiny_bert(), MoLoraConfig(target_modules=("query",), experts=(2,)))
    d = w.save_pretrained(tmp_path / "a")
    other = tiny_bert(hidden=16)
    with pytest.raises(LoraError, match="shape mismatch"):
        MoLoraModel.from_pretrained(other, d)
    assert not any(isinstance(m, MoLoraLinear) for m in other.modules())
    assert all(p.requires_grad for p in other.parameters())
    with pytest.raises(LoraError, match="do not fit"):
        MoLoraModel.from_pretrained(tiny_bert(layers=2), d)
    with pytest.raises(LoraError, match="not an adapter directory"):
        MoLoraModel.from_pretrained(tiny_bert(), tmp_path)
    wrapped = inject(tiny_bert(), MoLoraConfig(target_modules=("query",)))
    with pytest.raises(LoraError, match="already has MoE-LoRA"):
        inject(wrapped.model, MoLoraConfig(target_modules=("query",)))
    with pytest.raises(LoraError, match="modules_to_save"):
        inject(tiny_bert(), MoLoraConfig(target_modules=("query",), modules_to_save=("classifier",)))


def test_layer_alphas_from_the_spectral_engine(minilm_model):
    from htsr.spectra.analysis import analyze

    alphas, blocks, rows = layer_alphas(minilm_model, ("query", "key", "value", "dense"))
    assert len(blocks) == 6 and len(rows) == 36
    an = analyze(minilm_model, "alphapruning", layers=[r["name"] for r in rows])
    per = {r["name"]: r["alpha"] for r in an.rows}
    for k in range(6):
        vals = [per[r["name"]] for r in rows if r["block"] == k]
        assert alphas[k] == pytest.approx(sum(vals) / len(vals))
    assert all(1.0 < a < 10.0 for a in alphas)


@pytest.mark.parametrize("keep_scaling", [True, False])
def test_peft_rank_config(keep_scaling):
    from htsr.lora.model import peft_rank_config

    model = tiny_bert()
    cfg = peft_rank_config(model, [1, 2, 5], ("query", "value"), r=4, lora_alpha=8.0, keep_scaling=keep_scaling,
                           lora_dropout=0.0)
    pm = peft.get_peft_model(model, cfg)
    seen = {}
    for name, mod in pm.named_modules():
        if hasattr(mod, "r") and isinstance(mod.r, dict) and "default" in mod.r:
            block = int(name.split("encoder.layer.")[1].split(".")[0])
            seen[name] = (block, mod.r["default"], mod.scaling["default"], tuple(mod.lora_A["default"].weight.shape))
    assert len(seen) == 6
    for block, rank, scaling, shape in seen.values():
        assert rank == [1, 2, 5][block] and shape == (rank, 32)
        assert scaling == pytest.approx(2.0 if keep_scaling else 8.0 / rank)
    # the same total rank as a uniform rank-(8/3) adapter would have: 2 x (1 + 2 + 5) x (32 + 32) parameters
    n = sum(p.numel() for n, p in pm.named_parameters() if "lora_" in n)
    assert n == 2 * (1 + 2 + 5) * 64


def test_peft_rank_config_bad_input():
    from htsr.lora.model import peft_rank_config

    with pytest.raises(Exception, match="one rank per block"):
        peft_rank_config(tiny_bert(), [1, 2], ("query",))
    with pytest.raises(LoraError, match="match none"):
        peft_rank_config(tiny_bert(), [1, 2, 3], ("nope",))


def test_layer_alphas_failed_fit_is_an_error():
    model = tiny_bert(hidden=64, layers=2)
    with torch.no_grad():
        model.encoder.layer[1].attention.self.query.weight.zero_()  # no spectrum to fit: alpha NaN
    with pytest.raises(LoraError, match="alpha fit failed .*encoder.layer.1.attention.self.query"):
        layer_alphas(model, ("query", "key"))
    alphas, _, _ = layer_alphas(model, ("query", "key"), nan_policy="skip")
    assert np.isfinite(alphas).all()


def test_source_alphas_equal_the_live_model_and_peft_keys_are_suffixes(minilm_model, minilm_dir):
    from htsr.lora.config import BERT_TARGETS
    from htsr.lora.model import peft_config_from_names, source_alphas, source_layers

    live, blocks, _ = layer_alphas(minilm_model, BERT_TARGETS)
    disk, dblocks, _, per_block = source_alphas(minilm_dir, BERT_TARGETS)
    assert dblocks == blocks == [f"encoder.layer.{k}" for k in range(6)]
    assert np.allclose(disk, live, rtol=1e-9)
    stack, _, per = source_layers(minilm_dir, ("query",))
    assert stack == "encoder.layer" and per[2] == ["encoder.layer.2.attention.self.query"]
    cfg = peft_config_from_names(per, stack, [1, 2, 3, 4, 5, 6], r=2, lora_alpha=4.0)
    assert cfg.rank_pattern["layer\\.2\\.attention\\.self\\.query"] == 3
    assert cfg.alpha_pattern["layer\\.2\\.attention\\.self\\.query"] == 6.0  # 4 * 3 / 2: scaling stays 2
