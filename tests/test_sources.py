"""Weight sources: modules, state dicts, safetensors files, sharded and HF directories, pickle, delta, LoRA."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import htsr
from htsr.errors import SourceError
from htsr.spectra.sources import iter_entries
from tests.conftest import heavy_tailed


def _sd(n_layers: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    sd = {}
    for i in range(n_layers):
        sd[f"model.layers.{i}.mlp.up_proj.weight"] = heavy_tailed(96, 48, seed=seed + i)
        sd[f"model.layers.{i}.input_layernorm.weight"] = torch.ones(48)
    return sd


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _alphas(a) -> dict[str, float]:
    return {k: v for k, v in a.alphas().items() if np.isfinite(v)}


def test_module_state_dict_and_file_agree(tmp_path):
    sd = _sd()
    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList()
    for i in range(3):
        blk = torch.nn.Module()
        blk.mlp = torch.nn.Module()
        blk.mlp.up_proj = torch.nn.Linear(48, 96, bias=False)
        blk.mlp.up_proj.weight.data.copy_(sd[f"model.layers.{i}.mlp.up_proj.weight"])
        blk.input_layernorm = torch.nn.LayerNorm(48)
        model.layers.append(blk)
    wrapper = torch.nn.Module()
    wrapper.model = model
    f = tmp_path / "model.safetensors"
    save_file(sd, str(f))
    a_mod = _alphas(htsr.analyze(wrapper))
    a_sd = _alphas(htsr.analyze(sd))
    a_file = _alphas(htsr.analyze(f))
    a_dir = _alphas(htsr.analyze(tmp_path))
    assert set(a_mod) == {f"model.layers.{i}.mlp.up_proj" for i in range(3)}
    assert a_mod == a_sd == a_file == a_dir


def test_sharded_directory_streams_in_index_order(tmp_path):
    sd = _sd(4)
    keys = list(sd)
    shard1 = {k: sd[k] for k in keys[:4]}
    shard2 = {k: sd[k] for k in keys[4:]}
    save_file(shard1, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file(shard2, str(tmp_path / "model-00002-of-00002.safetensors"))
    wm = {k: "model-00001-of-00002.safetensors" for k in shard1} | {k: "model-00002-of-00002.safetensors"
                                                                     for k in shard2}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}))
    before = {p.name: _sha(p) for p in tmp_path.iterdir()}
    a = htsr.analyze(tmp_path)
    assert [r["name"] for r in a.rows] == [f"model.layers.{i}.mlp.up_proj" for i in range(4)]
    assert _alphas(a) == _alphas(htsr.analyze(sd))
    # the index file itself is also a valid source
    assert _alphas(htsr.analyze(tmp_path / "model.safetensors.index.json")) == _alphas(a)
    assert {p.name: _sha(p) for p in tmp_path.iterdir()} == before  # inputs never modified


def test_entries_are_lazy(tmp_path):
    save_file(_sd(2), str(tmp_path / "model.safetensors"))
    entries = list(iter_entries(tmp_path / "model.safetensors"))
    assert [e.shape for e in entries] == [(96, 48), (96, 48)]
    t = entries[0].load()
    assert t.shape == (96, 48)


def test_missing_shard_is_a_clear_error(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a.weight": "x.safetensors"}}))
    with pytest.raises(SourceError, match="missing: x.safetensors"):
        htsr.analyze(tmp_path)


def test_hf_directory_matches_module(minilm_dir, minilm_model):
    a_dir = htsr.analyze(minilm_dir, layers=["encoder.layer.0.*"])
    a_mod = htsr.analyze(minilm_model, layers=["encoder.layer.0.*"])
    assert len(a_dir.rows) == 6
    assert _alphas(a_dir) == pytest.approx(_alphas(a_mod), rel=1e-12)


def test_pickle_needs_opt_in(tmp_path):
    p = tmp_path / "pytorch_model.bin"
    torch.save(_sd(1), p)
    with pytest.raises(SourceError, match="allow_pickle"):
        htsr.analyze(p)
    with pytest.raises(SourceError, match="allow_pickle"):
        htsr.analyze(tmp_path)
    a = htsr.analyze(p, allow_pickle=True)
    assert a.rows[0]["status"] == "success"


def test_pickle_with_code_is_refused_even_with_opt_in(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    p = tmp_path / "evil.pt"
    torch.save({"a.weight": torch.zeros(3, 3), "x": Evil()}, p)
    with pytest.raises(SourceError, match="weights_only"):
        htsr.analyze(p, allow_pickle=True)


def test_delta_against_base():
    base = _sd(2, seed=0)
    tuned = {k: v + 0.01 * heavy_tailed(*v.shape, seed=9) if v.ndim == 2 else v for k, v in base.items()}
    a = htsr.analyze(tuned, base=base)
    assert all(r["status"] == "success" for r in a.rows)
    # the delta spectrum is the perturbation's: tiny norm compared with the weights'
    direct = htsr.analyze(tuned)
    assert a.rows[0]["log_norm"] < direct.rows[0]["log_norm"] - 3
    # identical models: delta is all-zero, reported as failed with a reason, not a crash
    same = htsr.analyze(base, base=base)
    assert {r["status"] for r in same.rows} == {"failed"}
    assert "all-zero" in same.rows[0]["reason"]


def test_delta_name_or_shape_mismatch_is_a_row_error():
    base = {"a.weight": torch.randn(20, 10)}
    tuned = {"a.weight": torch.randn(20, 11), "b.weight": torch.randn(20, 10)}
    a = htsr.analyze(tuned, base=base)
    r = {x["name"]: x for x in a.rows}
    assert r["a"]["status"] == "error" and "differs from base" in r["a"]["reason"]
    assert r["b"]["status"] == "error" and "no tensor named" in r["b"]["reason"]


def test_lora_adapter_directory(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for i in range(2):
        pre = f"base_model.model.model.layers.{i}.self_attn.q_proj"
        tensors[f"{pre}.lora_A.weight"] = torch.randn(16, 64, generator=g)
        tensors[f"{pre}.lora_B.weight"] = torch.randn(64, 16, generator=g)
    save_file(tensors, str(tmp_path / "adapter_model.safetensors"))
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 16, "lora_alpha": 32}))
    a = htsr.analyze(tmp_path, lora=True, min_evals=8)
    assert [r["name"] for r in a.rows] == [f"model.layers.{i}.self_attn.q_proj" for i in range(2)]
    r0 = a.rows[0]
    assert r0["kind"] == "lora" and r0["N"] == 64 and r0["M"] == 64
    B = tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
    A = tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]
    ref = np.sort(np.linalg.svd((2.0 * B @ A).double().numpy(), compute_uv=False) ** 2)
    np.testing.assert_allclose(a.evals[r0["name"]][-16:], ref[-16:], rtol=1e-6)
    assert r0["matrix_rank"] == 16  # B @ A has rank r
