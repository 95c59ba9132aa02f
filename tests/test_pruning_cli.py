"""Evaluation (perplexity, calibration windows, tokenizers) and the prune / perplexity subcommands."""

from __future__ import annotations

import json
import math

import pytest
import torch

from htsr.nn import weight_2d
from htsr.pruning import PruningError
from htsr.pruning import evaluation as E
from htsr.pruning.prune import REPORT_FILE, sparsity_of

transformers = pytest.importorskip("transformers")

TEXT = ("In the beginning God created the heaven and the earth. And the earth was without form, and void; "
        "and darkness was upon the face of the deep. And the Spirit of God moved upon the face of the waters. ") * 6


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def tiny_llama(vocab=256):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(cfg).eval()


def run(argv):
    """``htsr ARGV`` through the CLI's error rule: the exit code (argparse errors included)."""
    from htsr.cli.main import main

    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def test_calibration_windows_seeded():
    ids = torch.arange(1000)
    a = E.calibration_windows(ids, 8, 32, seed=3)
    assert a.shape == (8, 32)
    assert torch.equal(a, E.calibration_windows(ids, 8, 32, seed=3))
    assert not torch.equal(a, E.calibration_windows(ids, 8, 32, seed=4))
    assert torch.all(a[:, 1:] - a[:, :-1] == 1)  # contiguous windows
    assert E.calibration_windows(torch.arange(32), 2, 32).tolist() == [list(range(32))] * 2
    with pytest.raises(PruningError, match="shorter than one window"):
        E.calibration_windows(torch.arange(31), 2, 32)


def test_perplexity_matches_manual_nll():
    m = tiny_llama()
    ids = E.tokenize(E.ByteTokenizer(), TEXT)
    ppl = E.perplexity(m, ids, 16)
    n = ids.numel() // 16
    nll = 0.0
    with torch.no_grad():
        for i in range(n):
            x = ids[i * 16:(i + 1) * 16]
            logp = torch.log_softmax(m(x[None]).logits[0, :-1].double(), -1)
            nll -= float(logp[torch.arange(15), x[1:]].sum())
    assert math.isclose(ppl, math.exp(nll / (n * 15)), rel_tol=1e-5)
    assert 150 < ppl < 400  # random init: close to the 256-token vocabulary
    assert math.isclose(E.perplexity(m, ids, 16, batch_size=3), ppl, rel_tol=1e-5)
    with pytest.raises(PruningError, match="shorter than one window"):
        E.perplexity(m, ids[:10], 16)


def test_perplexity_needs_lm_head(minilm_model):
    with pytest.raises(PruningError, match="no language-model head"):
        E.perplexity(minilm_model, torch.arange(64), 32)


def test_tokenizers(tmp_path, minilm_dir):
    assert E.tokenize(E.ByteTokenizer(), "Aé").tolist() == [65, 195, 169]
    assert isinstance(E.load_tokenizer(tmp_path), E.ByteTokenizer)
    with pytest.raises(PruningError, match="byte fallback"):
        E.load_tokenizer(tmp_path, vocab_size=100)
    tok = E.load_tokenizer(minilm_dir)
    ids = E.tokenize(tok, "hello world " * 400)  # longer than 512: no truncation
    assert ids.numel() == 800 and ids[0] == ids[2] != ids[1]


@pytest.fixture()
def model_dir(tmp_path):
    d = tmp_path / "dense"
    tiny_llama().save_pretrained(str(d))
    (tmp_path / "calib.txt").write_text(TEXT, encoding="utf-8")
    return d


@pytest.mark.parametrize("pruner,allocation", [("wanda", "alpha"), ("sparsegpt", "owl"), ("magnitude", "uniform")])
def test_cli_prune_and_perplexity(model_dir, capsys, pruner, allocation):
    before = {p.name: p.read_bytes() for p in model_dir.iterdir()}
    out = model_dir.parent / "pruned"
    rc = run(["prune", str(model_dir), "--sparsity", "0.6", "--pruner", pruner, "--allocation", allocation,
              "--epsilon", "0.2", "--calibration", str(model_dir.parent / "calib.txt"), "--nsamples", "4",
              "--seqlen", "32", "--seed", "1", "--out-dir", str(out)])
    io = capsys.readouterr()
    assert rc == 0, io.err
    assert "achieved 0.6" in io.out or "achieved 0.59" in io.out
    rep = json.loads((out / REPORT_FILE).read_text())
    assert rep["settings"]["pruner"] == pruner and rep["settings"]["allocation"] == allocation
    assert rep["settings"]["nsamples"] == 4 and rep["settings"]["seqlen"] == 32 and rep["settings"]["seed"] == 1
    re = transformers.AutoModelForCausalLM.from_pretrained(str(out))
    assert abs(sparsity_of(re) - rep["achieved_sparsity"]) < 1e-12
    assert {p.name: p.read_bytes() for p in model_dir.iterdir()} == before
    assert run(["perplexity", str(out), "--text", str(model_dir.parent / "calib.txt"), "--seqlen", "32",
                "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["seqlen"] == 32 and res["windows"] == len(TEXT.encode()) // 32 and res["perplexity"] > 1


def test_cli_nm(model_dir, capsys):
    out = model_dir.parent / "nm"
    rc = run(["prune", str(model_dir), "--nm", "2:4", "--pruner", "wanda",
              "--calibration", str(model_dir.parent / "calib.txt"), "--nsamples", "2", "--seqlen", "16",
              "--out-dir", str(out)])
    assert rc == 0, capsys.readouterr().err
    re = transformers.AutoModelForCausalLM.from_pretrained(str(out))
    w = weight_2d(re.model.layers[0].mlp.down_proj)
    assert int((w.reshape(w.shape[0], -1, 4) != 0).sum(-1).max()) <= 2


@pytest.mark.parametrize("extra,msg", [
    (["--sparsity", "1.2"], "1.2 is outside [0, 1)"),
    (["--sparsity", "0.8", "--epsilon", "0.5", "--pruner", "magnitude"], "outside [0, 1)"),
    (["--sparsity", "0.5", "--seqlen", "4000"], "--seqlen 4000 exceeds the model's 64 positions"),
    (["--sparsity", "0.5", "--seqlen", "0"], "0 is outside [2, inf]"),
    (["--sparsity", "0.5", "--owl-m", "-1", "--allocation", "owl"], "-1 is outside (0, inf]"),
    (["--sparsity", "0.5", "--owl-lambda", "-0.1"], "-0.1 is outside [0, inf]"),
    (["--sparsity", "0.5", "--nm", "4:2"], "needs 0 < N < M"),
    (["--sparsity", "0.5", "--device", "banana"], "unknown device 'banana'"),
    (["--sparsity", "0.5", "--set", "epochs=abc"], "unknown option(s) for PruneConfig 'epochs'"),
    (["--sparsity", "0.5", "--set", "blocksize=abc"], "blocksize must be an integer"),
    (["--sparsity", "0.5", "--threads", "0"], "0 is outside [1, inf]"),
    (["--pruner", "magnitude"], "a target sparsity is required"),
    (["--sparsity", "0.5", "--seqlen", "63", "--calibration", "/nonexistent.txt"], "not found"),
    (["--sparsity", "0.5", "--pruner", "wanda", "--no-calibration"], "--calibration TEXTFILE is needed"),
    (["--sparsity", "0.5", "--pruner", "magnitude", "--out-is-input"], "is the input"),
    (["--sparsity", "0.5", "--pruner", "magnitude", "--out-inside-input"], "lies inside the input"),
])
def test_cli_errors(model_dir, capsys, extra, msg):
    calib = ["--calibration", str(model_dir.parent / "calib.txt")]
    out = ["--out-dir", str(model_dir.parent / "o")]
    if "--no-calibration" in extra:
        extra, calib = [e for e in extra if e != "--no-calibration"], []
    if "--out-is-input" in extra:
        extra, out = [e for e in extra if e != "--out-is-input"], ["--out-dir", str(model_dir)]
    if "--out-inside-input" in extra:
        extra, out = [e for e in extra if e != "--out-inside-input"], ["--out-dir", str(model_dir / "pruned")]
    if any(e.startswith("/nonexistent") for e in extra):
        calib = []
    before = {p.name: p.read_bytes() for p in model_dir.iterdir()}
    rc = run(["prune", str(model_dir), "--nsamples", "2", *calib, *out, *extra])
    err = capsys.readouterr().err
    assert rc == 2
    assert msg in err and "Traceback" not in err
    assert not (model_dir.parent / "o").exists() and not (model_dir / "pruned").exists()
    assert {p.name: p.read_bytes() for p in model_dir.iterdir()} == before


def _files(d):
    return {str(p.relative_to(d)): p.read_bytes() for p in d.rglob("*") if p.is_file()}


def test_cli_out_dir_is_never_the_users_files(model_dir, capsys, tmp_path, monkeypatch):
    """issue 15: `--out-dir . --overwrite` in a directory of the user's files, `--out-dir` a symlink to a non-empty
    directory, `--out-dir` inside the input model: refused before any loading, nothing deleted; an earlier htsr
    output is replaced with --overwrite."""
    import htsr.pruning.prune as P

    args = ["prune", str(model_dir), "--sparsity", "0.5", "--pruner", "magnitude", "--allocation", "uniform"]
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    (work / "data").mkdir()
    (work / "data" / "x.csv").write_text("1,2")
    snapshot = _files(work)
    monkeypatch.chdir(work)
    loads = []
    real_load = P.load_model
    monkeypatch.setattr(P, "load_model", lambda *a, **k: loads.append(1) or real_load(*a, **k))
    for out in (".", str(work)):
        assert run([*args, "--out-dir", out, "--overwrite"]) == 2
        assert "was not written by htsr" in capsys.readouterr().err
        assert _files(work) == snapshot
    (work / ".htsr-output").write_text("")  # even a marked cwd is refused
    assert run([*args, "--out-dir", ".", "--overwrite"]) == 2
    assert "current directory" in capsys.readouterr().err
    (work / ".htsr-output").unlink()
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep.bin").write_bytes(b"\x00\x01")
    (target / ".htsr-output").write_text("")  # a marker behind a link does not make the link replaceable
    link = tmp_path / "link"
    link.symlink_to(target, target_is_directory=True)
    assert run([*args, "--out-dir", str(link), "--overwrite"]) == 2
    assert "symbolic link" in capsys.readouterr().err
    assert (target / "keep.bin").read_bytes() == b"\x00\x01" and link.is_symlink()
    assert run([*args, "--out-dir", str(model_dir / "out"), "--overwrite"]) == 2
    assert "lies inside the input" in capsys.readouterr().err
    assert loads == [] and _files(work) == snapshot
    # a previous htsr output is replaced with --overwrite, refused without it
    prev = tmp_path / "prev"
    assert run([*args, "--out-dir", str(prev)]) == 0
    assert run([*args, "--out-dir", str(prev), "--sparsity", "0.3"]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert run([*args, "--out-dir", str(prev), "--sparsity", "0.3", "--overwrite", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["target_sparsity"] == 0.3
    assert json.loads((prev / REPORT_FILE).read_text())["target_sparsity"] == 0.3


def test_cli_perplexity_errors(model_dir, capsys, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("tiny", encoding="utf-8")
    assert run(["perplexity", str(model_dir), "--text", str(short), "--seqlen", "32"]) == 2
    assert "shorter than one window" in capsys.readouterr().err
    assert run(["perplexity", str(tmp_path), "--text", str(short)]) == 2
    assert "not a Hugging Face model directory" in capsys.readouterr().err
    for bad, msg in ((["--seqlen", "65"], "exceeds the model's 64 positions"), (["--seqlen", "1"], "is outside"),
                     (["--device", "tpu"], "unknown device")):
        assert run(["perplexity", str(model_dir), "--text", str(short), *bad]) == 2
        assert msg in capsys.readouterr().err


def test_cli_prune_minilm_encoder(minilm_dir, tmp_path, capsys):
    text = tmp_path / "calib.txt"
    text.write_text("A sentence embedding model maps text to vectors for search and clustering. " * 30)
    out = tmp_path / "minilm-pruned"
    rc = run(["prune", str(minilm_dir), "--sparsity", "0.4", "--pruner", "sparsegpt", "--allocation", "alpha",
              "--epsilon", "0.2", "--calibration", str(text), "--nsamples", "2", "--seqlen", "32",
              "--out-dir", str(out), "--dtype", "float32"])
    assert rc == 0, capsys.readouterr().err
    assert (out / "tokenizer.json").is_file() and (out / "vocab.txt").is_file()
    rep = json.loads((out / REPORT_FILE).read_text())
    assert rep["settings"]["blocks_path"] == "encoder.layer" and len(rep["layers"]) == 36
    re = transformers.AutoModel.from_pretrained(str(out))
    assert abs(sparsity_of(re) - rep["achieved_sparsity"]) < 1e-12 and abs(rep["achieved_sparsity"] - 0.4) < 0.01
    assert run(["perplexity", str(out), "--text", str(text), "--seqlen", "32"]) == 2
    assert "no language-model head" in capsys.readouterr().err


def test_read_text_formats(tmp_path):
    import gzip

    (tmp_path / "a.txt").write_text("plain text", encoding="utf-8")
    assert E.read_text(tmp_path / "a.txt") == "plain text"
    recs = [{"text": "first doc", "url": "x"}, {"text": "second doc"}]
    lines = "\n".join(json.dumps(r) for r in recs) + "\n"
    (tmp_path / "c.jsonl").write_text(lines, encoding="utf-8")
    with gzip.open(tmp_path / "c4.json.gz", "wt", encoding="utf-8") as f:
        f.write(lines)
    assert E.read_text(tmp_path / "c.jsonl") == E.read_text(tmp_path / "c4.json.gz") == "first doc\n\nsecond doc"
    (tmp_path / "bad.jsonl").write_text('{"text": 1}\n', encoding="utf-8")
    with pytest.raises(PruningError, match="line 1"):
        E.read_text(tmp_path / "bad.jsonl")
    (tmp_path / "latin.txt").write_bytes(b"caf\xe9")
    with pytest.raises(PruningError, match="not UTF-8"):
        E.read_text(tmp_path / "latin.txt")
    with pytest.raises(PruningError, match="not found"):
        E.read_text(tmp_path / "missing.txt")
