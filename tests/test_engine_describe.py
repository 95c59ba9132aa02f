"""describe(): the layer table without eigensolves, consistent with analyze's rows."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from htsr.cli.main import main
from htsr.spectra.analysis import analyze
from htsr.spectra.describe import NOT_SELECTED, describe


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.fc1 = nn.Linear(16, 40)
        self.conv = nn.Conv2d(4, 6, 3)
        self.tiny = nn.Linear(16, 3)  # 3 eigenvalues < min_evals=10
        self.norm = nn.LayerNorm(16)


@pytest.fixture
def net():
    torch.manual_seed(0)
    return Net()


def test_rows_shapes_params_and_reasons(net):
    d = describe(net)
    by = {r["name"]: r for r in d.rows}
    assert set(by) == {"emb", "fc1", "conv", "tiny"}  # the LayerNorm weight is 1-D: not a matrix
    # expected values from the layer definitions, not from the code under test
    assert (by["fc1"]["N"], by["fc1"]["M"], by["fc1"]["params"], by["fc1"]["status"]) == (40, 16, 640, "analyze")
    assert by["conv"]["shape"] == "6x4x3x3" and by["conv"]["rf"] == 9 and by["conv"]["params"] == 6 * 4 * 9
    assert by["conv"]["num_evals"] == 4 * 9
    assert by["emb"]["status"] == "skip" and "embedding" in by["emb"]["reason"]
    assert by["tiny"]["status"] == "skip" and "too few eigenvalues (3 < min_evals=10)" in by["tiny"]["reason"]
    s = d.summary()
    assert s["n_analyze"] == 2 and s["params_analyze"] == 640 + 216
    assert s["params_total"] == 640 + 216 + 50 * 16 + 48


def test_matches_analyze(net):
    d = describe(net, layers=["fc1", "conv", "tiny", "emb"], exclude=["conv"])
    a = analyze(net, layers=["fc1", "conv", "tiny", "emb"], exclude=["conv"])
    dn = {r["name"]: r for r in d.rows if r["reason"] != NOT_SELECTED}
    assert set(dn) == {r["name"] for r in a.rows}
    for r in a.rows:
        assert (dn[r["name"]]["status"] == "analyze") == (r["status"] != "skipped")
        if r["status"] == "skipped":
            assert dn[r["name"]]["reason"] == r["reason"]
    assert {r["name"]: r["reason"] for r in d.rows}["conv"] == NOT_SELECTED


def test_no_tensor_data_is_read(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    save_file({"a.weight": torch.randn(30, 20), "b.weight": torch.randn(20, 20)}, str(tmp_path / "m.safetensors"))
    import htsr.spectra.sources as S

    real = S.safetensors_entries

    def no_load(*a, **k):
        for e in real(*a, **k):
            def boom():
                raise AssertionError("describe loaded a tensor")
            e.load = boom
            yield e

    monkeypatch.setattr(S, "safetensors_entries", no_load)
    d = describe(tmp_path / "m.safetensors")
    assert [(r["name"], r["status"]) for r in d.rows] == [("a", "analyze"), ("b", "analyze")]


def test_split_qkv_and_moe_rows():
    sd = {"blk.attn.qkv.weight": torch.zeros(48, 16), "blk.experts.w": torch.zeros(3, 20, 12)}
    d = describe(sd, split_qkv=True)
    names = [r["name"] for r in d.rows]
    assert names == ["blk.attn.qkv[q]", "blk.attn.qkv[k]", "blk.attn.qkv[v]", "blk.experts.w[expert=0]",
                     "blk.experts.w[expert=1]", "blk.experts.w[expert=2]"]
    assert d.rows[0]["params"] == 16 * 16 and d.rows[3]["params"] == 240


def test_cli_describe(tmp_path, capsys):
    out = tmp_path / "d.json"
    assert main(["describe", "--example", "minilm", "--layers", "encoder.layer.0.*", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "encoder.layer.0.intermediate.dense" in text and "summary: 6/" in text
    data = json.loads(out.read_text())
    assert data["schema"] == "htsr.describe/1" and data["summary"]["n_analyze"] == 6
    assert main(["describe", "--example", "minilm", "--json"]) == 0
    js = json.loads(capsys.readouterr().out)
    assert js["summary"]["n_analyze"] == 37  # analyze fits 37 of 40 rows of MiniLM (3 embeddings skipped)


def test_cli_describe_bad_input(tmp_path, capsys):
    assert main(["describe", str(tmp_path / "missing.safetensors")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such file" in err[0]
    (tmp_path / "x.txt").write_text("hi")
    assert main(["describe", str(tmp_path / "x.txt")]) == 2
    assert "unsupported file type" in capsys.readouterr().err
    assert main(["describe", "--example", "minilm", "--set", "bogus=1"]) == 2
    assert "bogus" in capsys.readouterr().err
