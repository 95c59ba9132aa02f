"""Every bad input gets a clear error or a per-row status, and the rest of the analysis completes."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import save_file

import htsr
from htsr.cli.main import main
from htsr.errors import SourceError
from tests.conftest import heavy_tailed


def test_missing_path(tmp_path, capsys):
    with pytest.raises(SourceError, match="no such file or directory"):
        htsr.analyze(tmp_path / "nope.safetensors")
    assert main(["analyze", str(tmp_path / "nope"), "--no-progress"]) == 2
    assert "no such file or directory" in capsys.readouterr().err


def test_directory_without_weights(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SourceError, match="no weights found"):
        htsr.analyze(tmp_path)
    assert main(["analyze", str(tmp_path)]) == 2
    assert "no weights found" in capsys.readouterr().err


def test_unsupported_file_type(tmp_path):
    p = tmp_path / "w.npz"
    p.write_bytes(b"x")
    with pytest.raises(SourceError, match="unsupported file type"):
        htsr.analyze(p)


def test_truncated_safetensors(tmp_path, capsys):
    good = tmp_path / "good.safetensors"
    save_file({"a.weight": heavy_tailed(64, 32)}, str(good))
    data = good.read_bytes()
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(data[: len(data) - 100])
    with pytest.raises(SourceError, match="truncated safetensors file"):
        htsr.analyze(bad)
    assert main(["analyze", str(bad)]) == 2
    assert "truncated" in capsys.readouterr().err


@pytest.mark.parametrize("payload,match", [
    (b"abc", "header missing"),
    (struct.pack("<Q", 10**9) + b"{}", "corrupt or truncated safetensors header"),
    (struct.pack("<Q", 8) + b"not json", "corrupt safetensors header"),
])
def test_corrupt_safetensors_header(tmp_path, payload, match):
    p = tmp_path / "x.safetensors"
    p.write_bytes(payload)
    with pytest.raises(SourceError, match=match):
        htsr.analyze(p)


def test_invalid_index(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text("{not json")
    with pytest.raises(SourceError, match="not a valid safetensors index"):
        htsr.analyze(tmp_path)


def test_pickle_without_opt_in(tmp_path, capsys):
    p = tmp_path / "model.pt"
    torch.save({"a.weight": torch.randn(10, 10)}, p)
    assert main(["analyze", str(p)]) == 2
    err = capsys.readouterr().err
    assert "refusing to load a pickle checkpoint" in err and "--allow-pickle" in err


def test_bad_layers_do_not_kill_the_analysis():
    nan = heavy_tailed(60, 30)
    nan[3, 4] = float("nan")
    inf = heavy_tailed(60, 30)
    inf[0, 0] = float("inf")
    sd = {
        "ok1.weight": heavy_tailed(120, 60, seed=1),
        "nan.weight": nan,
        "inf.weight": inf,
        "zero.weight": torch.zeros(64, 32),
        "row.weight": torch.randn(1, 500),
        "empty.weight": torch.empty(0, 16),
        "ok2.weight": heavy_tailed(120, 60, seed=2),
    }
    rows = {r["name"]: r for r in htsr.analyze(sd).rows}
    assert rows["ok1"]["status"] == rows["ok2"]["status"] == "success"
    assert rows["nan"]["status"] == "error" and "1 non-finite" in rows["nan"]["reason"]
    assert rows["inf"]["status"] == "error" and "non-finite" in rows["inf"]["reason"]
    assert rows["zero"]["status"] == "failed" and "all-zero" in rows["zero"]["reason"]
    assert rows["row"]["status"] == "skipped" and "too few eigenvalues (1" in rows["row"]["reason"]
    assert rows["empty"]["status"] == "skipped" and "empty tensor" in rows["empty"]["reason"]


def test_failing_loader_is_a_row_error(tmp_path):
    """A tensor that cannot be read becomes that row's error; the other rows complete."""
    f = tmp_path / "model.safetensors"
    save_file({"a.weight": heavy_tailed(64, 32), "b.weight": heavy_tailed(64, 32, seed=1)}, str(f))
    from htsr.spectra import sources

    entries = list(sources.iter_entries(f))

    def broken():
        raise OSError("I/O error reading tensor")

    entries[0].load = broken
    from htsr.spectra.analysis import _process_entry
    from htsr.spectra.config import make_config

    cfg = make_config()
    r0 = _process_entry(entries[0], cfg, {}, {})[0]
    r1 = _process_entry(entries[1], cfg, {}, {})[0]
    assert r0["status"] == "error" and "I/O error" in r0["reason"]
    assert r1["status"] == "success"


def test_large_embedding_is_opt_in_and_then_analysed():
    emb = torch.nn.Embedding(50_000, 64)
    torch.nn.init.normal_(emb.weight, generator=torch.Generator().manual_seed(0))
    m = torch.nn.Sequential(emb, torch.nn.Linear(64, 64))
    a = htsr.analyze(m)
    assert a.rows[0]["status"] == "skipped" and "opt-in" in a.rows[0]["reason"]
    b = htsr.analyze(m, include_embeddings=True)
    assert b.rows[0]["status"] == "success" and b.rows[0]["N"] == 50_000
    # WeightWatcher's convention: matrices with N > 50,000 are skipped, with a reason
    c = htsr.analyze(torch.nn.Embedding(50_001, 16), preset="weightwatcher")
    assert c.rows[0]["status"] == "skipped" and "max_N=50000" in c.rows[0]["reason"]


def test_unknown_options_from_cli(capsys):
    assert main(["analyze", "--example", "minilm", "--preset", "nope"]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["analyze", "--example", "minilm", "--bogus"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["analyze", "--example", "minilm", "--out", "x.xlsx"])
    assert e.value.code == 2
    assert "unsupported file type '.xlsx'" in capsys.readouterr().err


def test_source_of_wrong_type():
    with pytest.raises(SourceError, match="unsupported source of type int"):
        htsr.analyze(42)


def test_adapter_config_invalid_json(tmp_path):
    save_file({"m.lora_A.weight": torch.randn(4, 16), "m.lora_B.weight": torch.randn(16, 4)},
              str(tmp_path / "adapter_model.safetensors"))
    (tmp_path / "adapter_config.json").write_text("{bad")
    with pytest.raises(SourceError, match="invalid JSON"):
        htsr.analyze(tmp_path, lora=True)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8}))
    assert htsr.analyze(tmp_path, lora=True, min_evals=2).rows[0]["status"] == "success"
