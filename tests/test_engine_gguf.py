"""GGUF files as a source: dequantised tensors vs the float matrix (independent ggml reference formulas)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from htsr.cli.main import main
from htsr.errors import SourceError
from htsr.spectra.analysis import analyze
from htsr.spectra.describe import describe
from htsr.spectra.gguf_source import gguf_entries, supported_types

gguf = pytest.importorskip("gguf")
T = gguf.GGMLQuantizationType


def _q8_0(x: np.ndarray) -> np.ndarray:
    """ggml's reference Q8_0 round trip: blocks of 32, d = max|x| / 127 (stored fp16), q = round(x / d)."""
    b = x.reshape(-1, 32).astype(np.float64)
    d = np.abs(b).max(axis=1, keepdims=True) / 127
    q = np.trunc(np.abs(b / np.where(d == 0, 1, d)) + 0.5) * np.sign(b)  # round half away from zero
    return (q * d.astype(np.float16).astype(np.float64)).reshape(x.shape)


def _q4_0(x: np.ndarray) -> np.ndarray:
    """ggml's reference Q4_0 round trip: d = (value of largest |x|) / -8, q = min(15, trunc(x / d + 8.5))."""
    b = x.reshape(-1, 32).astype(np.float64)
    mx = np.take_along_axis(b, np.abs(b).argmax(axis=1)[:, None], axis=1)
    d = mx / -8
    q = np.clip(np.trunc(b / np.where(d == 0, 1, d) + 8.5), 0, 15)
    return ((q - 8) * d.astype(np.float16).astype(np.float64)).reshape(x.shape)


def _write(path, tensors: dict) -> None:
    from gguf.quants import quantize

    w = gguf.GGUFWriter(str(path), "llama")
    for name, (arr, qtype) in tensors.items():
        if qtype in (T.F32, T.F16):
            w.add_tensor(name, quantize(arr, qtype))
        elif qtype is None:  # raw bytes of an undequantisable type
            w.add_tensor(name, arr[0], raw_dtype=arr[1])
        else:
            w.add_tensor(name, quantize(arr, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture
def weights():
    rng = np.random.default_rng(0)
    return rng.standard_normal((48, 96)).astype(np.float32)


def test_types_round_trip_against_the_float_matrix(tmp_path, weights):
    f = tmp_path / "m.gguf"
    _write(f, {f"blk.0.{t.name.lower()}.weight": (weights, t) for t in (T.F32, T.F16, T.Q8_0, T.Q4_0)}
           | {"blk.0.attn_norm.weight": (np.ones(96, np.float32), T.F32),
              "token_embd.weight": (weights, T.F32)})
    got = {e.name: e for e in gguf_entries(f)}
    assert set(got) == {"blk.0.f32.weight", "blk.0.f16.weight", "blk.0.q8_0.weight", "blk.0.q4_0.weight",
                        "token_embd.weight"}  # the 1-D norm is not a matrix
    assert all(e.shape == (48, 96) for e in got.values())
    assert got["token_embd.weight"].kind == "embedding" and got["blk.0.q4_0.weight"].dtype == "q4_0"
    np.testing.assert_array_equal(got["blk.0.f32.weight"].load().numpy(), weights)
    np.testing.assert_array_equal(got["blk.0.f16.weight"].load().numpy(), weights.astype(np.float16).astype(np.float32))
    np.testing.assert_allclose(got["blk.0.q8_0.weight"].load().numpy(), _q8_0(weights), atol=1e-6)
    q4 = got["blk.0.q4_0.weight"].load().numpy()
    np.testing.assert_allclose(q4, _q4_0(weights), atol=1e-6)
    assert np.abs(q4 - weights).max() > 0.05  # 4 bits really quantise


def test_analyze_and_describe_a_gguf_file(tmp_path, weights):
    f = tmp_path / "m.gguf"
    _write(f, {"blk.0.ffn_up.weight": (weights, T.F32), "blk.0.ffn_down.weight": (weights, T.Q8_0)})
    a = analyze(f, workers=1)
    ref = analyze({"blk.0.ffn_up.weight": torch.from_numpy(weights)}, workers=1)
    assert a["blk.0.ffn_up"]["alpha"] == pytest.approx(ref["blk.0.ffn_up"]["alpha"], rel=1e-9)
    assert a["blk.0.ffn_down"]["status"] == "success" and a["blk.0.ffn_down"]["dtype"] == "q8_0"
    assert [r["status"] for r in describe(f).rows] == ["analyze", "analyze"]


def test_unsupported_type_is_a_row_reason(tmp_path, weights):
    f = tmp_path / "m.gguf"
    raw = np.zeros((48, 96 // 32 * 40), np.uint8)  # Q8_1: 32 values in 40 bytes; gguf cannot dequantise it
    _write(f, {"good.weight": (weights, T.Q8_0), "bad.weight": ((raw, T.Q8_1), None)})
    assert "Q8_1" not in supported_types() and {"F32", "F16", "Q8_0", "Q4_0"} <= set(supported_types())
    a = analyze(f, workers=1)
    assert a["good"]["status"] == "success"
    assert a["bad"]["status"] == "error" and "unsupported GGUF quantisation type Q8_1" in a["bad"]["reason"]
    assert "Q4_0" in a["bad"]["reason"]


def test_corrupt_gguf_one_line_error(tmp_path, capsys):
    f = tmp_path / "bad.gguf"
    f.write_bytes(b"GGUF\x03\x00\x00\x00garbage")
    with pytest.raises(SourceError, match="cannot read GGUF file"):
        list(gguf_entries(f))
    assert main(["analyze", str(f)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot read GGUF file" in err[0]
