"""The shared skeleton: htsr.nn (layers, blocks, patterns, modes), htsr.config, Analysis.metric, htsr.io safety."""

from __future__ import annotations

import dataclasses
import math
import os
import stat

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from htsr import nn as hnn
from htsr.config import Config, Registry
from htsr.errors import ConfigError
from htsr.io import MARKER, OutputError, atomic_write, check_not_input, replace_dir, safe_text, write_json, write_table
from htsr.spectra.analysis import metric_vector


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=30, n_positions=16))


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(num_hidden_layers=2, hidden_size=16, intermediate_size=24,
                                        num_attention_heads=2, num_key_value_heads=2, vocab_size=30))


def test_hf_conv1d_is_linear_like_with_out_in_view():
    m = _gpt2()
    c = m.transformer.h[0].attn.c_attn  # Conv1D weight (in=16, out=48)
    assert hnn.is_hf_conv1d(c) and hnn.is_linear_like(c) and hnn.layer_kind(c) == "hf_conv1d"
    assert hnn.in_out_features(c) == (16, 48)
    w = hnn.weight_2d(c)
    w[0, 0] = 123.0  # the view writes through
    assert c.weight.data[0, 0] == 123.0
    x = torch.randn(3, 16)
    np.testing.assert_allclose(c(x).detach().numpy(), (x @ w.T + c.bias).detach().numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(hnn.LayoutError, match="not a linear-like layer"):
        hnn.weight_2d(nn.ReLU())


@pytest.mark.parametrize("make", [_gpt2, _llama])
def test_layout_blocks_agree_with_block_of(make):
    model = make()
    lay = hnn.find_layout(model)
    assert len(lay.blocks) == 2
    for k, blk in enumerate(lay.layers):
        for name in blk:
            assert hnn.block_of(name) == lay.block_names[k]
    # embeddings / lm_head are outside the blocks
    assert all(hnn.block_of(n) is None for n in ("lm_head", "model.embed_tokens", "transformer.wte"))
    with pytest.raises(hnn.LayoutError, match="cannot find the transformer blocks"):
        hnn.find_layout(nn.Sequential(nn.Linear(2, 2)))


def test_block_of_resnet_names():
    assert hnn.block_of("layer1.0.conv1") == "layer1.0"
    assert hnn.block_of("encoder.layer.3.attention.self.query") == "encoder.layer.3"
    assert hnn.block_of("conv1") is None


def test_patterns_glob_and_regex():
    p = hnn.Patterns(["*.mlp.*", "re:attn\\.(q|k)_proj$"])
    assert p.match("model.layers.0.mlp.up_proj")
    assert p.match("model.layers.0.attn.q_proj") and not p.match("model.layers.0.attn.v_proj")
    assert p.select(["a.mlp.b", "x"], exclude=hnn.Patterns("a.*")) == []
    assert hnn.selected(("x.mlp.y",), ["*.mlp.*"], ["re:^z"]) and not hnn.selected(("x",), ["*.mlp.*"])
    assert hnn.selected(("anything",), (), ())
    with pytest.raises(ConfigError, match="invalid regular expression"):
        hnn.Patterns(["re:(("])


def test_eval_mode_restores_each_submodule_flag():
    m = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    m.train()
    m[1].eval()  # a frozen BN inside a training model
    with hnn.eval_mode(m):
        assert not m.training and not m[0].training
    assert m.training and m[0].training and not m[1].training
    with pytest.raises(RuntimeError), hnn.train_mode(m):
        assert m[1].training
        raise RuntimeError
    assert m.training and not m[1].training


@dataclasses.dataclass(frozen=True)
class _Cfg(Config):
    epochs: int = 3
    lr: float = 0.1
    name: str = "a"
    widths: tuple[int, ...] = (8, 16)
    limit: int | None = None
    flag: bool = False

    def validate(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")


def test_config_convention():
    c = _Cfg.from_dict({"epochs": "5", "lr": 1, "widths": [4, 8], "flag": "true", "limit": "none"})
    assert (c.epochs, c.lr, c.widths, c.flag, c.limit) == (5, 1.0, (4, 8), True, None)
    assert isinstance(c.lr, float)
    assert _Cfg.from_dict({"widths": 4}).widths == (4,) and _Cfg.from_dict({"widths": "4,8"}).widths == (4, 8)
    assert c.to_dict() == {"epochs": 5, "lr": 1.0, "name": "a", "widths": [4, 8], "limit": None, "flag": True}
    assert _Cfg.from_dict(c.to_dict()) == c
    assert c.replace(epochs=7).epochs == 7 and c.epochs == 5
    assert c.diff() == {"epochs": 5, "lr": 1.0, "widths": [4, 8], "flag": True}
    with pytest.raises(ConfigError, match=r"unknown option\(s\) for _Cfg 'epoch'; valid: epochs, flag, limit"):
        _Cfg.from_dict({"epoch": 3})
    with pytest.raises(ConfigError, match="epochs must be an integer, got 'abc'"):
        _Cfg.from_dict({"epochs": "abc"})
    with pytest.raises(ConfigError, match="epochs must be >= 1"):
        c.replace(epochs=0)
    with pytest.raises(ConfigError, match="unknown option"):
        c.replace(nope=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.epochs = 3


def test_registry():
    reg: Registry[type] = Registry("widget")

    @reg.register("a")
    class A:
        pass

    assert reg.get("a") is A and "a" in reg and reg.names() == ("a",)
    with pytest.raises(ConfigError, match="unknown widget 'b'; expected one of a"):
        reg.get("b")
    with pytest.raises(ConfigError, match="registered twice"):
        reg.add("a", int)


ROWS = [
    {"name": "l0", "module": "l0", "status": "success", "reason": "", "alpha": 2.0, "stable_rank": 5.0},
    {"name": "l1", "module": "l1", "status": "failed", "reason": "tail too short", "alpha": math.nan,
     "stable_rank": 7.0},
    {"name": "l2", "module": "l2", "status": "success", "reason": "", "alpha": 4.0, "stable_rank": 1.0},
    {"name": "l3", "module": "l3", "status": "skipped", "reason": "too few eigenvalues", "stable_rank": None},
    {"name": "qkv[q]", "module": "qkv", "status": "success", "reason": "", "alpha": 3.0},
    {"name": "qkv[k]", "module": "qkv", "status": "success", "reason": "", "alpha": 5.0},
]


def test_metric_policies():
    v = metric_vector(ROWS, "alpha", ["l0", "l1", "l2", "l3"])
    np.testing.assert_array_equal(v.values[[0, 2]], [2.0, 4.0])
    assert np.isnan(v.values[[1, 3]]).all()
    assert v.reasons == {"l1": "failed: tail too short", "l3": "skipped: too few eigenvalues"}
    m = metric_vector(ROWS, "alpha", ["l0", "l1", "l2"], policy="mean")
    np.testing.assert_array_equal(m.values, [2.0, 3.0, 4.0])
    assert m.imputed == ["l1"]
    d = metric_vector(ROWS, "alpha", ["l0", "l1", "l2"], policy="drop")
    assert d.names == ["l0", "l2"] and d.dropped == ["l1"]
    with pytest.raises(ConfigError, match="alpha is not available for 1 of 3 layer.*l1: failed: tail too short"):
        metric_vector(ROWS, "alpha", ["l0", "l1", "l2"], policy="raise")
    # a failed fit keeps its rank metrics; success-only excludes them
    assert metric_vector(ROWS, "stable_rank", ["l1"]).values[0] == 7.0
    assert np.isnan(metric_vector(ROWS, "stable_rank", ["l1"], statuses=("success",)).values[0])
    with pytest.raises(ConfigError, match="has 2 rows"):
        metric_vector(ROWS, "alpha", ["qkv"])
    assert metric_vector(ROWS, "alpha", ["qkv[k]"]).values[0] == 5.0
    assert metric_vector(ROWS, "alpha", ["nope"]).reasons == {"nope": "not in the analysis"}
    with pytest.raises(ConfigError, match="no column 'alpah'"):
        metric_vector(ROWS, "alpah")
    with pytest.raises(ConfigError, match="unknown NaN policy"):
        metric_vector(ROWS, "alpha", policy="zero")
    with pytest.raises(ConfigError, match="not available for 4 of 4"):
        metric_vector(ROWS, "alpha", ["l1", "l3", "x", "y"], policy="mean")


def test_analysis_metric_and_round_trip(tmp_path):
    import htsr

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 32))
    a = htsr.analyze(model)
    v = a.metric("alpha")
    assert v.names == ["0", "2"] and np.allclose(v.values, [r["alpha"] for r in a.rows])
    for ext in (".json", ".parquet"):
        b = htsr.Analysis.load(a.save(tmp_path / f"a{ext}", **({"include_evals": True} if ext == ".json" else {})))
        assert [r["name"] for r in b.rows] == ["0", "2"]
        np.testing.assert_allclose(b.metric("alpha").values, v.values)
        assert b.metadata["config"] == a.metadata["config"]
    np.testing.assert_allclose(htsr.Analysis.load(tmp_path / "a.json").evals["0"], a.evals["0"])
    (tmp_path / "other.json").write_text('{"schema": "htsr.pruning/1"}')
    with pytest.raises(htsr.errors.SourceError, match="not an htsr analysis file"):
        htsr.Analysis.load(tmp_path / "other.json")
    (tmp_path / "v9.json").write_text('{"metadata": {"schema": "htsr.analysis/9"}, "rows": []}')
    with pytest.raises(htsr.errors.SourceError, match="schema htsr.analysis/9 is not supported"):
        htsr.Analysis.load(tmp_path / "v9.json")


def test_atomic_write_keeps_mode_and_uses_umask(tmp_path):
    old = os.umask(0o022)
    try:
        p = write_json(tmp_path / "new.json", {"a": 1})
        assert stat.S_IMODE(p.stat().st_mode) == 0o644
        p.chmod(0o640)
        write_json(p, {"a": 2})
        assert stat.S_IMODE(p.stat().st_mode) == 0o640
    finally:
        os.umask(old)
    with pytest.raises(RuntimeError):
        atomic_write(p, lambda tmp: (_ for _ in ()).throw(RuntimeError("boom")))
    assert p.read_text().strip().endswith("}") and len(list(tmp_path.iterdir())) == 1


def test_outputs_never_clobber_inputs(tmp_path):
    src = tmp_path / "model"
    src.mkdir()
    (src / "w.safetensors").write_bytes(b"x")
    with pytest.raises(OutputError, match="is the input"):
        check_not_input(src / "w.safetensors", [str(src / "w.safetensors")])
    with pytest.raises(OutputError, match="inside the input directory"):
        check_not_input(src / "out.json", [src])
    check_not_input(tmp_path / "out.json", [src, None, {"not": "a path"}])


def test_replace_dir_rules(tmp_path, monkeypatch):
    out = tmp_path / "out"
    replace_dir(out, lambda d: (d / "a.txt").write_text("1"))
    assert (out / "a.txt").read_text() == "1" and (out / MARKER).is_file()
    with pytest.raises(OutputError, match="not empty"):
        replace_dir(out, lambda d: None)
    replace_dir(out, lambda d: (d / "b.txt").write_text("2"), overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "b.txt"]
    user = tmp_path / "user"
    user.mkdir()
    (user / "precious.txt").write_text("keep")
    with pytest.raises(OutputError, match="not written by htsr"):
        replace_dir(user, lambda d: None, overwrite=True)
    link = tmp_path / "link"
    link.symlink_to(out)
    with pytest.raises(OutputError, match="symbolic link"):
        replace_dir(link, lambda d: None, overwrite=True)
    assert (out / "b.txt").is_file() and (user / "precious.txt").read_text() == "keep"
    monkeypatch.chdir(out)
    with pytest.raises(OutputError, match="current directory"):
        replace_dir(".", lambda d: None, overwrite=True)
    with pytest.raises(RuntimeError):
        replace_dir(tmp_path / "new", lambda d: (_ for _ in ()).throw(RuntimeError("x")))
    assert not (tmp_path / "new").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_csv_cells_cannot_run_as_formulas_and_terminal_text_is_escaped(tmp_path):
    p = write_table(tmp_path / "t.csv", pd.DataFrame({"name": ["=cmd|'/c calc'!A1", "ok", "@x"], "v": [-1.0, 2, 3]}))
    df = pd.read_csv(p)
    assert list(df.name) == ["'=cmd|'/c calc'!A1", "ok", "'@x"] and list(df.v) == [-1.0, 2.0, 3.0]
    assert safe_text("a\x1b[31mred\nb") == "a\\x1b[31mred\\x0ab"


def test_prepare_run_dir_is_the_one_resume_rule(tmp_path):
    import json

    from htsr.io import MARKER, OutputError, prepare_run_dir

    out = tmp_path / "run"
    assert prepare_run_dir(out, {"lr": 0.1, "seeds": (0, 1)}, "sweep.json") is False
    assert (out / MARKER).is_file() and json.loads((out / "sweep.json").read_text())["resume_key"]["seeds"] == [0, 1]
    (out / "cells").mkdir()
    assert prepare_run_dir(out, {"seeds": [0, 1], "lr": 0.1}, "sweep.json") is True  # same key (tuple == list)
    with pytest.raises(OutputError, match="different configuration"):
        prepare_run_dir(out, {"lr": 0.2, "seeds": [0, 1]}, "sweep.json")
    (out / "cache").mkdir()
    (out / "cache" / "w.bin").write_bytes(b"x")
    assert prepare_run_dir(out, {"lr": 0.2}, "sweep.json", overwrite=True, keep=("cache",)) is False
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, "cache", "sweep.json"])
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(OutputError, match="not empty"):
        prepare_run_dir(foreign, {}, "run.json")
    with pytest.raises(OutputError):
        prepare_run_dir(foreign, {}, "run.json", overwrite=True)  # never replaces what htsr did not write
    assert (foreign / "notes.txt").read_text() == "keep me"
    (tmp_path / "data").mkdir()
    with pytest.raises(OutputError, match="inside the input"):
        prepare_run_dir(tmp_path / "data" / "out", {}, inputs=[tmp_path / "data"])
