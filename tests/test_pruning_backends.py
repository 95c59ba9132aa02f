"""The llmcompressor backend: htsr's allocation pruned by llmcompressor's modifiers, parity with htsr's pruner.

The parity tests need llmcompressor (``pip install 'htsr[llmcompressor]'``) and skip without it; the
"not installed" messages are tested everywhere.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import sys

import numpy as np
import pytest
import torch

from htsr.nn import find_layout, weight_2d
from htsr.pruning import PruningError
from htsr.pruning.backends import MissingExtraError, require
from htsr.pruning.prune import REPORT_FILE, prune_model

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("torch_one_thread")

V = 256
SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64)
HAS_LLMC = importlib.util.find_spec("llmcompressor") is not None
needs_llmc = pytest.mark.skipif(not HAS_LLMC, reason="llmcompressor not installed (pip install 'htsr[llmcompressor]')")


def make(arch: str):
    torch.manual_seed(0)
    t = transformers
    if arch == "llama":
        return t.LlamaForCausalLM(t.LlamaConfig(vocab_size=V, intermediate_size=64, num_key_value_heads=2,
                                                **SMALL)).eval()
    if arch == "opt":
        return t.OPTForCausalLM(t.OPTConfig(vocab_size=V, ffn_dim=64, word_embed_proj_dim=32, **SMALL)).eval()
    if arch == "gpt2":
        return t.GPT2LMHeadModel(t.GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64)).eval()
    if arch == "mistral":
        return t.MistralForCausalLM(t.MistralConfig(vocab_size=V, intermediate_size=64, num_key_value_heads=2,
                                                    **SMALL)).eval()
    raise ValueError(arch)


def calib(n=4, seqlen=16, seed=0):
    return torch.randint(0, V, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def weights(m):
    return {n: weight_2d(m.get_submodule(n)).clone() for n in find_layout(m).names}


def run(argv):
    """``htsr ARGV`` through the CLI's error rule: the exit code (argparse errors included)."""
    from htsr.cli.main import main

    try:
        return main(argv)
    except SystemExit as e:
        return e.code


@pytest.fixture()
def model_dir(tmp_path):
    d = tmp_path / "dense"
    make("llama").save_pretrained(str(d))
    (tmp_path / "calib.txt").write_text("And God said, Let there be light: and there was light. " * 40)
    return d


# --- without llmcompressor -------------------------------------------------------------------------------------


def test_missing_llmcompressor_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "llmcompressor", None)  # `import llmcompressor` now fails, installed or not
    with pytest.raises(MissingExtraError) as e:
        require("llmcompressor")
    msg = str(e.value)
    assert "\n" not in msg and "pip install 'htsr[llmcompressor]'" in msg
    from htsr.pruning.backends.llmcompressor import prune_with_llmcompressor

    m = make("llama")
    before = weights(m)
    with pytest.raises(MissingExtraError, match=r"htsr\[llmcompressor\]"):
        prune_with_llmcompressor(m, 0.5, "wanda", "alpha", 0.2, calib())
    assert all(torch.equal(before[n], w) for n, w in weights(m).items())


def test_cli_missing_llmcompressor_one_line(model_dir, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "llmcompressor", None)
    before = {p.name: p.read_bytes() for p in model_dir.iterdir()}
    out = model_dir.parent / "o"
    rc = run(["prune", str(model_dir), "--sparsity", "0.5", "--backend", "llmcompressor", "--calibration",
              str(model_dir.parent / "calib.txt"), "--nsamples", "2", "--seqlen", "16", "--out-dir", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "pip install 'htsr[llmcompressor]'" in err
    assert not out.exists() and {p.name: p.read_bytes() for p in model_dir.iterdir()} == before


def test_cli_magnitude_refused_before_loading(model_dir, capsys):
    if not HAS_LLMC:
        pytest.skip("needs llmcompressor to reach the pruner check")
    rc = run(["prune", str(model_dir), "--sparsity", "0.5", "--pruner", "magnitude", "--backend", "llmcompressor",
              "--out-dir", str(model_dir.parent / "o")])
    assert rc == 2 and "no one-shot magnitude pruner" in capsys.readouterr().err


def test_modifier_recipe_from_report():
    from htsr.pruning.backends.llmcompressor import modifier_recipe

    m = make("llama")
    rep = prune_model(m, 0.5, "sparsegpt", "alpha", 0.2, calib())
    r = modifier_recipe(rep)["SparseGPTModifier"]
    assert r["targets"] == find_layout(m).names and r["mask_structure"] == "0:0"
    assert r["sparsity"] == [row["target_sparsity"] for row in rep.layers] and r["block_size"] == 128
    rep_mag = prune_model(make("llama"), 0.5, "magnitude", "uniform", 0.0)
    with pytest.raises(PruningError, match="no one-shot modifier"):
        modifier_recipe(rep_mag)


# --- with llmcompressor ----------------------------------------------------------------------------------------


@needs_llmc
@pytest.mark.parametrize("arch,allocation,mapping", [("llama", "alpha", "block"), ("llama", "alpha", "matrix"),
                                                     ("llama", "owl", "block"), ("opt", "alpha", "block")])
def test_wanda_parity_identical(arch, allocation, mapping):
    """Same allocation, same calibration: llmcompressor's Wanda gives htsr's masks and weights exactly."""
    from htsr.pruning.backends.llmcompressor import prune_with_llmcompressor

    a = make(arch)
    b = copy.deepcopy(a)
    ids = calib()
    ra = prune_model(a, 0.55, "wanda", allocation, 0.3, ids, mapping=mapping)
    rb = prune_with_llmcompressor(b, 0.55, "wanda", allocation, 0.3, ids, mapping=mapping)
    ta = [r["target_sparsity"] for r in ra.layers]
    assert [r["target_sparsity"] for r in rb.layers] == ta and len(set(np.round(ta, 12))) > 1
    assert [r["achieved_sparsity"] for r in rb.layers] == [r["achieved_sparsity"] for r in ra.layers]
    wa, wb = weights(a), weights(b)
    assert all(torch.equal(wa[n], wb[n]) for n in wa)
    assert rb.settings["backend"] == "llmcompressor" and rb.settings["modifier"] == "WandaPruningModifier"


@needs_llmc
def test_sparsegpt_one_more_weight_per_block():
    """llmcompressor's SparseGPT keeps the reference's ``<=`` threshold: int(count*s) + 1 zeros per 128-column block."""
    from htsr.pruning.backends.llmcompressor import prune_with_llmcompressor
    from htsr.pruning.evaluation import perplexity

    a = make("llama")
    b = copy.deepcopy(a)
    ids = calib(6, 32)
    ra = prune_model(a, 0.5, "sparsegpt", "alpha", 0.3, ids)
    rb = prune_with_llmcompressor(b, 0.5, "sparsegpt", "alpha", 0.3, ids)
    for row_a, row_b in zip(ra.layers, rb.layers, strict=True):
        out_f, in_f = row_a["shape"]
        s = row_a["target_sparsity"]
        blocks = [min(128, in_f - i) for i in range(0, in_f, 128)]
        zeros_a = round(row_a["achieved_sparsity"] * out_f * in_f)
        zeros_b = round(row_b["achieved_sparsity"] * out_f * in_f)
        assert zeros_a == sum(int(out_f * w * s) for w in blocks)
        assert zeros_b == sum(int(out_f * w * s) + 1 for w in blocks), row_a["name"]
    text = calib(8, 32, seed=1).reshape(-1)
    pa, pb = perplexity(a, text, 32), perplexity(b, text, 32)
    assert abs(pb / pa - 1) < 0.02


@needs_llmc
def test_nm_24_parity():
    from htsr.pruning.backends.llmcompressor import prune_with_llmcompressor
    from htsr.pruning.export import sparsity_structure

    a = make("llama")
    b = copy.deepcopy(a)
    ids = calib()
    prune_model(a, None, "wanda", "uniform", 0.0, ids, nm=(2, 4))
    rb = prune_with_llmcompressor(b, None, "wanda", "uniform", 0.0, ids, nm=(2, 4))
    assert sparsity_structure(b) == "2:4" and rb.achieved_sparsity == 0.5
    wa, wb = weights(a), weights(b)
    assert all(torch.equal(wa[n], wb[n]) for n in wa)
    with pytest.raises(PruningError, match="use allocation='uniform'"):
        prune_with_llmcompressor(copy.deepcopy(a), None, "wanda", "alpha", 0.2, ids, nm=(2, 4))


@needs_llmc
@pytest.mark.parametrize("arch,pruner,msg", [
    ("gpt2", "wanda", "does not support GPT2LMHeadModel.*Conv1D"),
    ("mistral", "sparsegpt", "does not support MistralForCausalLM.*causal mask"),
    ("llama", "magnitude", "no one-shot magnitude pruner"),
    ("llama", "movement", "unknown pruner"),
])
def test_unsupported_refused_before_any_change(arch, pruner, msg):
    from htsr.pruning.backends.llmcompressor import prune_with_llmcompressor

    m = make(arch)
    before = weights(m)
    with pytest.raises(PruningError, match=msg):
        prune_with_llmcompressor(m, 0.5, pruner, "alpha", 0.2, calib())
    assert all(torch.equal(before[n], w) for n, w in weights(m).items())


@needs_llmc
def test_bad_input_before_any_change():
    from htsr.pruning.backends.llmcompressor import prune_with_llmcompressor

    m = make("llama")
    before = weights(m)
    with pytest.raises(PruningError, match="needs calibration data"):
        prune_with_llmcompressor(m, 0.5, "wanda", "alpha", 0.2, None)
    with pytest.raises(PruningError, match="outside"):
        prune_with_llmcompressor(m, 0.8, "wanda", "alpha", 0.5, calib())
    with pytest.raises(PruningError, match="exceeds the model's 64 positions"):
        prune_with_llmcompressor(m, 0.5, "wanda", "alpha", 0.2, calib(2, 65))
    with pytest.raises(PruningError, match="PreTrainedModel"):
        prune_with_llmcompressor(torch.nn.Linear(4, 4), 0.5, "wanda", "alpha", 0.2, calib())
    assert all(torch.equal(before[n], w) for n, w in weights(m).items())


@needs_llmc
def test_cli_llmcompressor_to_compressed_tensors(model_dir, capsys):
    if importlib.util.find_spec("compressed_tensors") is None:  # pragma: no cover - llmcompressor requires it
        pytest.skip("compressed-tensors not installed")
    out = model_dir.parent / "llmc-ct"
    rc = run(["prune", str(model_dir), "--nm", "2:4", "--pruner", "sparsegpt", "--backend", "llmcompressor",
              "--format", "compressed-tensors", "--calibration", str(model_dir.parent / "calib.txt"),
              "--nsamples", "2", "--seqlen", "32", "--out-dir", str(out)])
    io = capsys.readouterr()
    assert rc == 0, io.err
    assert "llmcompressor)" in io.out
    rep = json.loads((out / REPORT_FILE).read_text())
    assert rep["settings"]["backend"] == "llmcompressor" and rep["settings"]["modifier"] == "SparseGPTModifier"
    assert rep["settings"]["export"]["sparsity_structure"] == "2:4"
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["sparsity_config"]["sparsity_structure"] == "2:4"
    assert (out / "recipe.yaml").is_file()  # written by llmcompressor's save wrapper: the recipe that was run
    from safetensors.torch import load_file

    w = load_file(str(out / "model.safetensors"))["model.layers.1.mlp.down_proj.weight"]
    assert int((w.reshape(w.shape[0], -1, 4) != 0).sum(-1).max()) <= 2
