"""``htsr tinymem train|measure|mitigate|compare`` end to end on a tiny test-bed, and bad input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from htsr.cli.main import main

DATA = ["--preset", "tiny", "--data", "n_main=200", "--data", "n_aux=100", "--data", "n_test=20",
        "--data", "n_noise=6", "--data", "dup=[40]", "--layers", "1", "--epochs", "3", "--threads", "1"]


def _digest(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("tm") / "base"
    assert main(["tinymem", "train", *DATA, "--out", str(out)]) == 0
    return out


def test_train_measure_mitigate(trained, tmp_path, capsys):
    assert (trained / "checkpoint.json").is_file() and (trained / "optimizer.safetensors").is_file()
    capsys.readouterr()
    assert main(["tinymem", "measure", str(trained), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["perc_memorized"] > 50 and set(m["accuracy"]) == {"increment_7", "increment_2", "increment_3"}
    before = _digest(trained)
    out = tmp_path / "unlearned"
    assert main(["tinymem", "mitigate", str(trained), "--method", "balanced_subnet", "--ratio", "0.3",
                 "--hp", "epochs=10", "--hp", "loss_weighting=0.7", "--retain-size", "64", "--out", str(out)]) == 0
    row = json.loads((out / "mitigation.json").read_text())
    assert row["method"] == "balanced_subnet" and row["mem_after"] < row["mem_before"] and row["n_changed"] > 0
    assert _digest(trained) == before
    capsys.readouterr()
    assert main(["tinymem", "measure", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["perc_memorized"] == pytest.approx(row["mem_after"])
    cmp = tmp_path / "from_base"  # compare from a trained checkpoint (no retraining of the base)
    assert main(["tinymem", "compare", "--base", str(trained), "--methods", "durable", "--out", str(cmp)]) == 0
    assert (cmp / "table.csv").is_file() and _digest(trained) == before


def test_bad_input_exits_2_and_leaves_the_checkpoint(trained, tmp_path, capsys):
    before = _digest(trained)
    cases = [
        (["tinymem", "mitigate", str(trained), "--method", "subnet", "--ratio", "1.5", "--out", str(tmp_path / "a")],
         "ratio must be in (0, 1)"),
        (["tinymem", "mitigate", str(trained), "--method", "durable", "--ratio", "0.1", "--out", str(trained)],
         "overlaps the input"),
        (["tinymem", "mitigate", str(trained), "--method", "nope", "--out", str(tmp_path / "b")], "unknown method"),
        (["tinymem", "train", *DATA, "--data", "prompt_len=60", "--out", str(tmp_path / "c")],
         "not shorter than the sequence"),
        (["tinymem", "measure", str(tmp_path)], "not a TinyMem checkpoint"),
        (["tinymem", "train", *DATA, "--data", "nope=1", "--out", str(tmp_path / "d")],
         "unknown TinyMem config key(s) ['nope']"),
        (["tinymem", "mitigate", str(trained), "--method", "spectral_norm", "--hp", "lamda=5", "--out",
          str(tmp_path / "e")], "takes no hyper-parameter(s) ['lamda']"),
        (["tinymem", "mitigate", str(trained), "--method", "finetune_clean", "--hp", "lr=5", "--out",
          str(tmp_path / "f")], "finetune_clean takes no hyper-parameters"),
        (["tinymem", "compare", *DATA, "--methods", "durable", "--hp", "subnet.epochs=2", "--out",
          str(tmp_path / "g")], "'subnet' is not among the methods run"),
    ]
    for argv, msg in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        assert msg in capsys.readouterr().err
    assert _digest(trained) == before
    assert not (tmp_path / "a").exists()


def test_compare_writes_table_and_plot(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["tinymem", "compare", *DATA, "--methods", "finetune_clean,durable,balanced_subnet",
                 "--hp", "balanced_subnet.epochs=2", "--retain-size", "64", "--out", str(out)]) == 0
    import pandas as pd

    t = pd.read_csv(out / "table.csv")
    assert list(t["method"]) == ["base", "finetune_clean", "durable", "balanced_subnet"]
    assert {"mem_before", "mem_after", "acc_before", "acc_after", "time_s"} <= set(t.columns)
    assert (out / "plot.png").read_bytes()[:4] == b"\x89PNG" and (out / "base" / "checkpoint.json").is_file()
    assert "| balanced_subnet |" in (out / "table.md").read_text()
