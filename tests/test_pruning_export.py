"""compressed-tensors export of pruned models: config block, 2:4 marking, reload by transformers, bad input."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import torch

from htsr.nn import find_layout, weight_2d
from htsr.pruning import PruningError
from htsr.pruning.backends import MissingExtraError, require
from htsr.pruning.prune import REPORT_FILE, prune_model, sparsity_of

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("torch_one_thread")

V = 256


def tiny_llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(cfg).eval()


def calib(n=4, seqlen=16):
    return torch.randint(0, V, (n, seqlen), generator=torch.Generator().manual_seed(0))


def _reload_ok() -> bool:
    """transformers 5.17 cannot load a compressed-tensors config without quantization groups (AttributeError on
    ``config_groups`` in CompressedTensorsHfQuantizer); 5.24 can. Versions in between were not checked."""
    from packaging.version import Version

    return Version(transformers.__version__) >= Version("5.24")


def test_missing_extra_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "compressed_tensors", None)  # makes `import compressed_tensors` fail
    with pytest.raises(MissingExtraError) as e:
        require("compressed_tensors")
    msg = str(e.value)
    assert "\n" not in msg and "pip install 'htsr[compress]'" in msg and "compressed-tensors" in msg
    assert isinstance(e.value, ImportError) and isinstance(e.value, PruningError)
    from htsr.pruning.export import export_compressed_tensors

    with pytest.raises(MissingExtraError, match=r"htsr\[compress\]"):
        export_compressed_tensors(tiny_llama(), "/nonexistent/never-written")


def test_is_nm():
    from htsr.pruning.export import is_nm

    w = torch.tensor([[1.0, 0, 2, 0, 0, 0, 3, 4]])
    assert is_nm(w)
    assert not is_nm(torch.tensor([[1.0, 1, 2, 0, 0, 0, 3, 4]]))
    assert not is_nm(torch.ones(2, 6) * torch.tensor([1.0, 0, 0, 1, 0, 0]))  # 6 columns: no groups of 4
    assert is_nm(torch.tensor([[1.0, 0, 0, 0]]), 1, 4) and not is_nm(torch.tensor([[1.0, 1, 0, 0]]), 1, 4)


HAS_CT = importlib.util.find_spec("compressed_tensors") is not None
needs_ct = pytest.mark.skipif(not HAS_CT, reason="compressed-tensors not installed (pip install 'htsr[compress]')")


@needs_ct
def test_export_24_marks_sparsity_and_reloads(tmp_path):
    import compressed_tensors as ct

    from htsr.pruning.export import compressed_tensors_config, export_compressed_tensors, sparsity_structure

    m = tiny_llama()
    rep = prune_model(m, None, "wanda", "uniform", 0.0, calib(), nm=(2, 4))
    assert sparsity_structure(m) == "2:4"
    src = tmp_path / "src"
    m.save_pretrained(str(src))  # stands for the input model directory (tokenizer files are copied from it)
    (src / "tokenizer_config.json").write_text("{}")
    out = export_compressed_tensors(m, tmp_path / "ct", rep, source_dir=src)
    cfg = json.loads((out / "config.json").read_text())
    qc = cfg["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["format"] == "dense" and qc["version"] == ct.__version__
    sc = qc["sparsity_config"]
    assert sc["format"] == "dense" and sc["sparsity_structure"] == "2:4" and sc["targets"] == ["Linear"]
    assert sc["ignore"] == ["lm_head"] and abs(sc["global_sparsity"] - 0.5) < 1e-12
    from compressed_tensors.config import SparsityCompressionConfig

    assert SparsityCompressionConfig.model_validate(sc).sparsity_structure == "2:4"  # the schema servers parse
    assert qc == compressed_tensors_config(m)
    report = json.loads((out / REPORT_FILE).read_text())
    assert report["settings"]["export"] == {"format": "compressed-tensors", "sparsity_structure": "2:4",
                                            "compressed_tensors_version": ct.__version__,
                                            "sparsity_config_written": True}
    assert (out / "tokenizer_config.json").is_file()
    assert "save_pretrained" not in vars(m) and not hasattr(m.config, "quantization_config")  # model left as it was
    if not _reload_ok():
        pytest.skip(f"transformers {transformers.__version__} cannot load sparsity-only compressed-tensors configs")
    re = transformers.AutoModelForCausalLM.from_pretrained(str(out))
    for name in find_layout(m).names:
        assert torch.equal(weight_2d(re.get_submodule(name)), weight_2d(m.get_submodule(name)))
    x = calib(1)
    with torch.no_grad():
        assert torch.allclose(re(x).logits, m(x).logits, atol=1e-6)
    assert sparsity_of(re) == rep.achieved_sparsity


@needs_ct
def test_export_unstructured(tmp_path):
    from htsr.pruning.export import export_compressed_tensors

    m = tiny_llama()
    rep = prune_model(m, 0.6, "wanda", "alpha", 0.2, calib())
    out = export_compressed_tensors(m, tmp_path / "u", rep)
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["sparsity_config"] == {}  # no server kernel for unstructured sparsity: nothing marked by default
    out2 = export_compressed_tensors(m, tmp_path / "u2", rep, mark_sparsity=True)
    sc = json.loads((out2 / "config.json").read_text())["quantization_config"]["sparsity_config"]
    assert sc["sparsity_structure"] == "unstructured" and abs(sc["global_sparsity"] - rep.achieved_sparsity) < 1e-12
    if _reload_ok():
        re = transformers.AutoModelForCausalLM.from_pretrained(str(out2))
        assert sparsity_of(re) == rep.achieved_sparsity


@needs_ct
def test_export_bad_input(tmp_path):
    from htsr.pruning.export import export_compressed_tensors, save

    m = tiny_llama()
    prune_model(m, 0.5, "magnitude", "uniform", 0.0)
    with pytest.raises(PruningError, match="does not have the 2:4 pattern"):
        export_compressed_tensors(m, tmp_path / "x", structure="2:4")
    with pytest.raises(PruningError, match="unknown sparsity structure"):
        export_compressed_tensors(m, tmp_path / "x", structure="3:8")
    with pytest.raises(PruningError, match="unknown output format"):
        save(m, tmp_path / "x", format="gguf")
    with pytest.raises(PruningError, match="not a Hugging Face model"):
        export_compressed_tensors(torch.nn.Linear(4, 4), tmp_path / "x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    from htsr.io import OutputError

    with pytest.raises(OutputError, match="exists and is not empty"):
        export_compressed_tensors(m, tmp_path / "full")
    with pytest.raises(OutputError, match="not written by htsr"):
        export_compressed_tensors(m, tmp_path / "full", overwrite=True)
    assert not (tmp_path / "x").exists() and (tmp_path / "full" / "keep.txt").read_text() == "x"


def run(argv):
    """``htsr ARGV`` through the CLI's error rule: the exit code (argparse errors included)."""
    from htsr.cli.main import main

    try:
        return main(argv)
    except SystemExit as e:
        return e.code


@needs_ct
def test_cli_format_compressed_tensors(tmp_path, capsys):
    d = tmp_path / "dense"
    tiny_llama().save_pretrained(str(d))
    (tmp_path / "calib.txt").write_text("In the beginning God created the heaven and the earth. " * 40)
    out = tmp_path / "ct24"
    rc = run(["prune", str(d), "--nm", "2:4", "--pruner", "sparsegpt", "--calibration", str(tmp_path / "calib.txt"),
              "--nsamples", "2", "--seqlen", "32", "--format", "compressed-tensors", "--out-dir", str(out)])
    assert rc == 0, capsys.readouterr().err
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["sparsity_config"]["sparsity_structure"] == "2:4"
    out2 = tmp_path / "ct-off"
    rc = run(["prune", str(d), "--nm", "2:4", "--pruner", "wanda", "--calibration", str(tmp_path / "calib.txt"),
              "--nsamples", "2", "--seqlen", "32", "--format", "compressed-tensors", "--sparsity-config", "off",
              "--out-dir", str(out2)])
    assert rc == 0, capsys.readouterr().err
    rep = json.loads((out2 / REPORT_FILE).read_text())
    assert json.loads((out2 / "config.json").read_text())["quantization_config"]["sparsity_config"] == {}
    assert rep["settings"]["export"]["sparsity_structure"] == "2:4"
    assert not rep["settings"]["export"]["sparsity_config_written"]
