"""``htsr tinymem train|measure|mitigate|compare`` end to end on a tiny test-bed, and bad input."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from htsr.cli.main import main

DATA = ["--preset", "tiny", "--set", "data.n_main=200", "--set", "data.n_aux=100", "--set", "data.n_test=20",
        "--data", "n_noise=6", "--set", "data.dup=[40]", "--layers", "1", "--epochs", "3", "--threads", "1"]


def _digest(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("tm") / "base"
    assert main(["tinymem", "train", *DATA, "--out-dir", str(out)]) == 0
    return out


# ------------------------------------------------------------------ independent recomputation of the metrics
def _checkpoint(path: Path):
    """The checkpoint's model (transformers + safetensors directly) and its data (the recorded config)."""
    from safetensors.torch import load_file
    from transformers import GPT2Config, GPT2LMHeadModel

    from htsr.memorization.config import TinyMemConfig
    from htsr.memorization.data import make_math_data

    extra = json.loads((path / "checkpoint.json").read_text())["extra"]
    s = extra["model"]
    cfg = GPT2Config(vocab_size=s["vocab_size"], n_positions=s["max_ctx"], n_embd=s["n_embd"], n_layer=s["n_layer"],
                     n_head=s["n_head"], activation_function="relu", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg).eval()
    model.load_state_dict(load_file(str(path / "model.safetensors")), strict=False)  # (tied lm_head)
    return model, make_math_data(TinyMemConfig.from_dict(extra["data"]))


@torch.no_grad()
def _perc_memorized(model, data) -> float:
    """% of the noised sequences (noise inside the checked window) whose greedy continuation of the *clean* prompt
    is the noised text: a plain full-forward decoding loop, no KV cache, no htsr metric code."""
    p, k = data.prompt_len, data.k
    win = slice(p, p + k)
    checked = [i for i in range(data.noise.shape[0]) if not torch.equal(data.noise[i, win], data.noise_clean[i, win])]
    ids = data.noise_clean[checked, :p]
    for _ in range(k):
        ids = torch.cat([ids, model(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    hits = (ids[:, p:] == data.noise[checked][:, win]).all(dim=1)
    return 100.0 * float(hits.double().mean())


@torch.no_grad()
def _mean_accuracy(model, data) -> float:
    accs = []
    for ids in data.tests.values():
        pred = model(input_ids=ids).logits[:, :-1].argmax(-1)
        y = ids[:, 1:]
        m = y != data.tokenizer.pad_id
        accs.append(100.0 * float(((pred == y) & m).sum()) / float(m.sum()))
    return float(np.mean(accs))


# ------------------------------------------------------------------ end to end
def test_train_measure_mitigate(trained, tmp_path, capsys):
    assert (trained / "checkpoint.json").is_file() and (trained / "optimizer.safetensors").is_file()
    capsys.readouterr()
    assert main(["tinymem", "measure", str(trained), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["perc_memorized"] > 50 and set(m["accuracy"]) == {"increment_7", "increment_2", "increment_3"}
    model, data = _checkpoint(trained)
    assert m["perc_memorized"] == pytest.approx(_perc_memorized(model, data))
    assert m["mean_accuracy"] == pytest.approx(_mean_accuracy(model, data))
    before = _digest(trained)
    out = tmp_path / "unlearned"
    assert main(["tinymem", "mitigate", str(trained), "--method", "balanced_subnet", "--ratio", "0.3",
                 "--set", "epochs=10", "--hp", "loss_weighting=0.7", "--retain-size", "64", "--out-dir",
                 str(out)]) == 0
    row = json.loads((out / "mitigation.json").read_text())
    assert row["method"] == "balanced_subnet" and row["mem_after"] < row["mem_before"] and row["n_changed"] > 0
    assert row["settings"]["loss_weighting"] == 0.7 and row["settings"]["epochs"] == 10 and row["n_retain"] == 64
    assert _digest(trained) == before
    assert row["mem_after"] == pytest.approx(_perc_memorized(*_checkpoint(out)))
    capsys.readouterr()
    assert main(["tinymem", "measure", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["perc_memorized"] == pytest.approx(row["mem_after"])
    # --overwrite replaces an htsr output, never an input
    assert main(["tinymem", "mitigate", str(trained), "--method", "durable", "--out-dir", str(out),
                 "--overwrite"]) == 0
    assert json.loads((out / "mitigation.json").read_text())["method"] == "durable"
    cmp = tmp_path / "from_base"  # compare from a trained checkpoint (no retraining of the base)
    assert main(["tinymem", "compare", "--base", str(trained), "--methods", "durable", "--out-dir", str(cmp)]) == 0
    assert (cmp / "table.csv").is_file() and _digest(trained) == before


def test_compare_numbers_match_an_independent_recomputation(trained, tmp_path, capsys):
    """The table's % memorized and accuracy, before and after, recomputed from saved models with a plain decoding
    loop: the base model the comparison saved, and each method's model re-made with ``mitigate`` (same seed and
    settings: the methods are deterministic on the CPU)."""
    out = tmp_path / "cmp"
    assert main(["tinymem", "compare", "--base", str(trained), "--methods", "finetune_clean,durable,balanced_subnet",
                 "--set", "balanced_subnet.epochs=10", "--ft-epochs", "2", "--retain-size", "64", "--out-dir",
                 str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    import pandas as pd

    t = pd.read_csv(out / "table.csv").set_index("method")
    assert list(t.index) == ["base", "finetune_clean", "durable", "balanced_subnet"]
    assert [r["method"] for r in printed["table"]] == list(t.index)
    base_model, data = _checkpoint(out / "base")
    mem0, acc0 = _perc_memorized(base_model, data), _mean_accuracy(base_model, data)
    assert mem0 > 50
    assert t["mem_before"].to_numpy() == pytest.approx(np.full(4, mem0))
    assert t["acc_before"].to_numpy() == pytest.approx(np.full(4, acc0))
    for method, extra in (("finetune_clean", ["--ft-epochs", "2"]), ("durable", []),
                          ("balanced_subnet", ["--set", "epochs=10", "--retain-size", "64"])):
        settings = json.loads(t.loc[method, "settings"])
        if method == "balanced_subnet":  # the comparison's named override, recorded with the row
            assert settings["loss_weighting"] == 0.7 and settings["ratio"] == 0.3
            extra += ["--set", "loss_weighting=0.7"]
        d = tmp_path / method
        assert main(["tinymem", "mitigate", str(out / "base"), "--method", method, *extra, "--out-dir", str(d)]) == 0
        model, _ = _checkpoint(d)
        assert t.loc[method, "mem_after"] == pytest.approx(_perc_memorized(model, data)), method
        assert t.loc[method, "acc_after"] == pytest.approx(_mean_accuracy(model, data)), method
        score = (t.loc[method, "mem_after"] - mem0 - (t.loc[method, "acc_after"] - acc0)) / 100
        assert t.loc[method, "score"] == pytest.approx(score)
    assert t.loc["balanced_subnet", "mem_after"] < mem0  # the method does what it is for
    assert (out / "plot.png").read_bytes()[:4] == b"\x89PNG" and (out / ".htsr-output").is_file()
    assert "| balanced_subnet |" in (out / "table.md").read_text() and not (out / "partial.csv").exists()


def test_compare_whose_every_method_fails_exits_1_and_names_the_failures(trained, tmp_path, capsys):
    out = tmp_path / "fail"
    capsys.readouterr()
    assert main(["tinymem", "compare", "--base", str(trained), "--methods", "activations,integrated_gradients",
                 "--set", "activations.prompt_len=500", "--set", "integrated_gradients.prompt_len=500",
                 "--out-dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert "every method failed" in err and "activations (" in err and "integrated_gradients (" in err
    assert "prompt length 500" in err
    import pandas as pd

    t = pd.read_csv(out / "table.csv")  # the rows (with their errors) are kept for inspection
    assert t["error"].notna().sum() == 2


# ------------------------------------------------------------------ bad input: one line, before any work
def _no_training(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("work started before the input was checked")

    import htsr.memorization.compare as compare

    monkeypatch.setattr(compare, "train_base", refuse)
    monkeypatch.setattr(compare, "apply_method", refuse)
    monkeypatch.setattr("htsr.memorization.cli._testbed", refuse)
    monkeypatch.setattr("htsr.memorization.metrics.measure", refuse)


BAD = [
    # (argv, exit code, expected message)
    (["mitigate", "{ck}", "--method", "spectral_norm", "--hp", "lam=abc", "--out-dir", "{tmp}/a"], 2,
     "lam must be a number, got 'abc'"),
    (["train", *DATA, "--data", "max_ctx=abc", "--out-dir", "{tmp}/b"], 2, "max_ctx must be an integer, got 'abc'"),
    (["train", *DATA, "--set", "data.prompt_len=60", "--out-dir", "{tmp}/c"], 2, "not shorter than the sequence"),
    (["train", *DATA, "--set", "data.nope=1", "--out-dir", "{tmp}/d"], 2, "unknown option(s) for the TinyMem data"),
    (["train", *DATA, "--set", "model.x=1", "--out-dir", "{tmp}/e"], 2, "expected PREFIX.FIELD"),
    (["mitigate", "{ck}", "--method", "slimming", "--hp", "epochs=0", "--out-dir", "{tmp}/f"], 2,
     "epochs must be an integer >= 1, got 0"),
    (["mitigate", "{ck}", "--method", "spectral_norm", "--set", "lamda=5", "--out-dir", "{tmp}/g"], 2,
     "unknown option(s) for spectral_norm 'lamda'; valid: lam"),
    (["mitigate", "{ck}", "--method", "finetune_clean", "--ratio", "0.1", "--out-dir", "{tmp}/h"], 2,
     "--ratio applies to unlearning methods only"),
    (["mitigate", "{ck}", "--method", "durable", "--ratio", "0.1", "--out-dir", "{ck}"], 2, "is the input"),
    (["mitigate", "{ck}", "--method", "durable", "--out-dir", "{ck}/inside"], 2, "inside the input"),
    (["compare", *DATA, "--methods", "durable", "--set", "subnet.epochs=2", "--out-dir", "{tmp}/i"], 2,
     "'subnet', which is not among the methods run"),
    (["compare", *DATA, "--methods", "durable", "--set", "durable.ratio=1.5", "--out-dir", "{tmp}/j"], 2,
     "ratio must be a finite number in (0, 1)"),
    (["compare", "--base", "{ck}", "--methods", "durable", "--set", "data.n_noise=3", "--out-dir", "{tmp}/k"], 2,
     "do not apply with --base"),
    (["compare", *DATA, "--methods", "all,durable", "--out-dir", "{tmp}/l"], 2, "cannot be combined"),
    (["measure", "{tmp}"], 2, "not a TinyMem checkpoint"),
    # argparse: the usage line and exit 2
    (["compare", *DATA, "--retain-size", "-3", "--out-dir", "{tmp}/m"], 2, "argument --retain-size"),
    (["compare", *DATA, "--methods", ",,", "--out-dir", "{tmp}/n"], 2, "expected comma-separated names"),
    (["compare", *DATA, "--methods", "durable,nope", "--out-dir", "{tmp}/o"], 2, "unknown nope"),
    (["train", *DATA, "--device", "meta", "--out-dir", "{tmp}/p"], 2, "unknown device 'meta'"),
    (["train", *DATA, "--device", "mps", "--out-dir", "{tmp}/q"], 2, "unknown device 'mps'"),
    (["train", *DATA, "--epochs", "0", "--out-dir", "{tmp}/r"], 2, "argument --epochs"),
    (["train", *DATA, "--seed", "-1", "--out-dir", "{tmp}/s"], 2, "argument --seed"),
    (["train", *DATA, "--layers", "65", "--out-dir", "{tmp}/t"], 2, "argument --layers"),
    (["mitigate", "{ck}", "--method", "nope", "--out-dir", "{tmp}/u"], 2, "argument --method"),
    (["mitigate", "{ck}", "--method", "subnet", "--ratio", "1.5", "--out-dir", "{tmp}/v"], 2, "argument --ratio"),
]


@pytest.mark.parametrize("argv,code,msg", BAD, ids=[" ".join(a[:1] + [m[:30]]) for a, _, m in BAD])
def test_bad_input_is_one_line_before_any_work(argv, code, msg, trained, tmp_path, monkeypatch, capsys):
    _no_training(monkeypatch)
    before = _digest(trained)
    argv = ["tinymem", *(a.format(ck=trained, tmp=tmp_path) for a in argv)]
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse rejects malformed options with its usage line
        rc = e.code
    err = capsys.readouterr().err
    assert rc == code, err
    assert msg in err
    assert "Traceback" not in err and "internal error" not in err
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith(("usage:", " "))]
    assert len(lines) == 1, err  # one line (after argparse's usage block)
    assert _digest(trained) == before
    assert not any(p.name != "base" and p.is_dir() for p in tmp_path.iterdir())  # no output directory written


@pytest.mark.parametrize("cmd", ["", "train", "measure", "mitigate", "compare"])
def test_help_renders(cmd):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit) as e:
        main(["tinymem", *([cmd] if cmd else []), "--help"])
    assert e.value.code == 0 and "usage:" in buf.getvalue()
