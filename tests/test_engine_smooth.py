"""SVD smoothing / low-rank truncation: exact truncation, the rules' k, checkpoints written, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from htsr.cli.main import main
from htsr.errors import ConfigError, SourceError
from htsr.spectra.detx import detx
from htsr.spectra.smooth import smooth, smooth_state_dict


def _state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"fc1.weight": torch.randn(60, 40, generator=g), "fc1.bias": torch.randn(60, generator=g),
            "fc2.weight": torch.randn(30, 60, generator=g), "ln.weight": torch.ones(30)}


def _truncated(w: torch.Tensor, k: int) -> np.ndarray:
    u, s, vt = np.linalg.svd(w.double().numpy(), full_matrices=False)
    return (u[:, :k] * s[:k]) @ vt[:k]


def test_fixed_rank_is_the_truncated_svd():
    sd = _state()
    new, res = smooth_state_dict(sd, rule="rank", rank=5)
    np.testing.assert_allclose(new["fc1.weight"].double().numpy(), _truncated(sd["fc1.weight"], 5), atol=1e-5)
    np.testing.assert_allclose(new["fc2.weight"].double().numpy(), _truncated(sd["fc2.weight"], 5), atol=1e-5)
    assert torch.equal(new["fc1.bias"], sd["fc1.bias"]) and torch.equal(new["ln.weight"], sd["ln.weight"])
    assert np.linalg.matrix_rank(new["fc1.weight"].double().numpy(), tol=1e-4) == 5
    s = np.linalg.svd(sd["fc1.weight"].double().numpy(), compute_uv=False)
    row = {r["param"]: r for r in res.rows}["fc1.weight"]
    assert row["energy_kept"] == pytest.approx((s[:5] ** 2).sum() / (s ** 2).sum())
    assert row["rel_error"] == pytest.approx(np.sqrt((s[5:] ** 2).sum() / (s ** 2).sum()))
    assert sd["fc1.weight"].abs().sum() > 0 and not torch.equal(new["fc1.weight"], sd["fc1.weight"])


def test_mp_rule_keeps_the_planted_spikes():
    g = torch.Generator().manual_seed(1)
    n, m = 400, 200
    noise = torch.randn(n, m, generator=g, dtype=torch.float64)
    u = torch.linalg.qr(torch.randn(n, 3, generator=g, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(m, 3, generator=g, dtype=torch.float64))[0]
    w = noise + u @ torch.diag(torch.tensor([200.0, 150.0, 100.0], dtype=torch.float64)) @ v.T  # 3 spikes
    _, res = smooth_state_dict({"w.weight": w.float()}, rule="mp")
    assert res.rows[0]["k"] == 3 and res.rows[0]["status"] == "smoothed"


def test_detx_and_xmin_rules():
    sd = _state(2)
    lam = np.linalg.svd(sd["fc1.weight"].double().numpy(), compute_uv=False) ** 2
    _, res = smooth_state_dict(sd, rule="detx", layers=["fc1"])
    assert res.rows[0]["k"] == detx(lam)[0]
    from htsr.spectra.analysis import analyze

    xmin = analyze({"fc1.weight": sd["fc1.weight"]}, workers=1)["fc1"]["xmin"]
    _, res = smooth_state_dict(sd, rule="xmin", layers=["fc1"])
    assert res.rows[0]["k"] == int((lam >= xmin * (1 - 1e-9)).sum())


def test_writes_file_and_hf_directory(tmp_path):
    sd = _state()
    src = tmp_path / "src"
    src.mkdir()
    save_file({k: sd[k] for k in ("fc1.weight", "fc1.bias")}, str(src / "model-00001-of-00002.safetensors"),
              metadata={"format": "pt"})
    save_file({k: sd[k] for k in ("fc2.weight", "ln.weight")}, str(src / "model-00002-of-00002.safetensors"),
              metadata={"format": "pt"})
    (src / "config.json").write_text('{"model_type": "x"}')
    res = smooth(src, tmp_path / "out", rule="rank", rank=4, layers=["fc2"])
    out = tmp_path / "out"
    assert (out / "config.json").read_text() == '{"model_type": "x"}' and (out / ".htsr-output").is_file()
    a = load_file(str(out / "model-00001-of-00002.safetensors"))
    b = load_file(str(out / "model-00002-of-00002.safetensors"))
    assert torch.equal(a["fc1.weight"], sd["fc1.weight"])  # not selected
    np.testing.assert_allclose(b["fc2.weight"].double().numpy(), _truncated(sd["fc2.weight"], 4), atol=1e-5)
    assert json.loads((out / "htsr_smooth.json").read_text())["rows"][0]["k"] == 4
    assert [r["name"] for r in res.rows] == ["fc2"]
    with pytest.raises(Exception, match="not empty"):
        smooth(src, out, rule="rank", rank=4)
    smooth(src, out, rule="rank", rank=3, overwrite=True)
    f = smooth(torch.nn.Linear(20, 30), tmp_path / "one.safetensors", rule="rank", rank=2).path
    assert np.linalg.matrix_rank(load_file(str(f))["weight"].double().numpy(), tol=1e-4) == 2


def test_bad_input(tmp_path, capsys):
    sd = _state()
    with pytest.raises(ConfigError, match="rank 500 is above the matrix's dimensions 60x40"):
        smooth_state_dict(sd, rule="rank", rank=500, layers=["fc1"])
    _, res = smooth_state_dict(sd, rule="rank", rank=30)  # fc1 (rank 40) smoothed; fc2 (rank 30) not
    rows = {r["name"]: r for r in res.rows}
    assert rows["fc1"]["status"] == "smoothed"
    assert rows["fc2"]["status"] == "unchanged" and "not below the matrix rank 30" in rows["fc2"]["reason"]
    with pytest.raises(ConfigError, match="rank >= 1"):
        smooth_state_dict(sd, rule="rank")
    with pytest.raises(ConfigError, match="unknown smoothing rule"):
        smooth_state_dict(sd, rule="laser")
    with pytest.raises(ConfigError, match="no weight matrix selected"):
        smooth_state_dict(sd, rule="rank", rank=2, layers=["nothing*"])
    (tmp_path / "m.gguf").write_bytes(b"x")
    with pytest.raises(SourceError, match="smoothing reads .safetensors"):
        smooth(tmp_path / "m.gguf", tmp_path / "o.safetensors", rule="rank", rank=2)
    save_file(sd, str(tmp_path / "m.safetensors"))
    m, o = str(tmp_path / "m.safetensors"), str(tmp_path / "o.safetensors")
    assert main(["smooth", m, "--rank", "500", "-o", o]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "rank 500 is above" in err[0]
    assert main(["smooth", m, "-o", o]) == 2
    assert "--rule rank needs --rank" in capsys.readouterr().err
    assert main(["smooth", m, "--rank", "3", "-o", m]) == 2
    assert "is the input" in capsys.readouterr().err
    assert not (tmp_path / "o.safetensors").exists()
    assert main(["smooth", m, "--rank", "3", "-o", o]) == 0
    assert (tmp_path / "o.safetensors").is_file()
