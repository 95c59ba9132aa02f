"""``htsr lora allocate|train``: the reference test vector, a PEFT config that get_peft_model uses unchanged,
a resumable training sweep whose adapters load back, and one-line errors (exit 2) for bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from htsr.cli.main import main

LLAMA7B_VECTOR = [3, 3, 4, 3, 4, 4, 3, 3, 3, 3, 3, 3, 3, 3, 3, 4, 4, 5, 7, 6, 7, 8, 6, 6, 7, 8, 8, 8, 7, 8, 8, 5]


@pytest.mark.parametrize("rounding", ["largest_remainder", "reference"])
def test_allocate_reference_vector(capsys, rounding):
    assert main(["lora", "allocate", "reference:llama-7b-hf", "--rounding", rounding, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [r["experts"] for r in doc["blocks"]] == LLAMA7B_VECTOR
    assert doc["molora_config"]["top_k"] == [2] * 32


def test_allocate_mola_table(capsys):
    assert main(["lora", "allocate", "reference:llama-7b-hf", "--allocation", "mola_increasing"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["block", "alpha", "experts", "top_k"]
    assert [int(x.split()[2]) for x in lines[1:33]] == [2] * 8 + [4] * 8 + [6] * 8 + [8] * 8
    assert lines[-1].split()[-1] == "160"


def _hamilton(w, total):  # independent largest-remainder rounding (floor 1 never binds here)
    q = total * np.asarray(w) / np.sum(w)
    n = np.floor(q).astype(int)
    for i in np.argsort(-(q - n), kind="stable")[: total - n.sum()]:
        n[i] += 1
    return n.tolist()


def test_allocate_ranks_peft_config(tmp_path, capsys, minilm_dir):
    peft = pytest.importorskip("peft")
    from transformers import AutoModel

    out = tmp_path / "ranks.json"
    assert main(["lora", "allocate", "minilm", "--ranks", "8", "--beta", "2.5", "-o", str(out)]) == 0
    doc = json.loads(out.read_text())
    alphas = [r["alpha"] for r in doc["blocks"]]
    ranks = [r["rank"] for r in doc["blocks"]]
    assert ranks == _hamilton(np.asarray(alphas) ** 2.5, 48) and sum(ranks) == 48
    fields = set(peft.LoraConfig.__dataclass_fields__)
    cfg = peft.LoraConfig(**{k: v for k, v in doc["peft_config"].items() if k in fields and k != "peft_type"})
    pm = peft.get_peft_model(AutoModel.from_pretrained(str(minilm_dir)), cfg)
    seen = 0
    for name, mod in pm.named_modules():
        if isinstance(getattr(mod, "r", None), dict) and "default" in mod.r:
            block = int(name.split("encoder.layer.")[1].split(".")[0])
            assert mod.r["default"] == ranks[block], name
            assert mod.scaling["default"] == pytest.approx(16.0 / 8)
            seen += 1
    assert seen == 36  # 6 blocks x (query, key, value, 3 x dense)


def test_train_resumes_and_adapters_load(tmp_path, capsys):
    from htsr.lora.model import MoLoraModel
    from htsr.models.text import load_minilm_classifier

    d = tmp_path / "run"
    argv = ["lora", "train", "--variants", "alphalora,lora_alpha", "--tasks", "kjv_testament", "--seeds", "0",
            "--set", "n_train=16", "--set", "n_test=8", "--set", "epochs=1", "--set", "max_length=8",
            "--set", "batch_size=8", "--out-dir", str(d), "--no-progress", "--json"]
    assert main(argv) == 0
    res = json.loads(capsys.readouterr().out)
    assert {r["variant"] for r in res["summary"]} == {"alphalora", "lora_alpha"}
    assert res["failed_runs"] == 0
    ad = d / "adapters" / "kjv_testament" / "alphalora" / "seed0"
    doc = json.loads((ad / "adapter_config.json").read_text())
    assert sum(doc["experts"]) == 24 and len(doc["experts"]) == 6
    assert (d / "adapters" / "kjv_testament" / "lora_alpha" / "seed0" / "adapter_config.json").is_file()
    model, _ = load_minilm_classifier(2)
    loaded = MoLoraModel.from_pretrained(model, ad)
    assert [la.n_experts for la in loaded.layers.values()][::6] == doc["experts"]
    before = (d / "results.csv").read_text()
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "resuming" in err and (d / "results.csv").read_text() == before


@pytest.mark.parametrize("argv, match", [
    (["lora", "allocate", "minilm", "--budget", "3"], "budget 3 is smaller than the 6 layers"),
    (["lora", "allocate", "minilm", "--targets", "q_proj"], "match none of the"),
    (["lora", "allocate", "/nonexistent/model"], "no such file or directory"),
    (["lora", "allocate", "reference:gpt-5"], "no shipped alphas"),
    (["lora", "train", "--variants", "fancy", "--out-dir", "OUT"], "unknown variant"),
    (["lora", "train", "--preset", "paper", "--out-dir", "OUT"], "paper preset needs --model"),
    (["lora", "train", "--set", "budget=3", "--out-dir", "OUT"], "budget 3 is smaller"),
    (["lora", "train", "--set", "beta=-1", "--out-dir", "OUT"], "beta must be"),
])
def test_bad_input_one_line_exit_2(tmp_path, capsys, argv, match):
    argv = [str(tmp_path / "o") if a == "OUT" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("htsr: error:")
    assert match in err
    assert not (tmp_path / "o").exists()  # nothing written


def test_argparse_rejects_beta_zero():
    with pytest.raises(SystemExit) as e:
        main(["lora", "allocate", "minilm", "--beta", "0"])
    assert e.value.code == 2


def test_run_is_deterministic_per_seed():
    from htsr.lora.config import preset_config
    from htsr.lora.train import run

    cfg = preset_config("cpu", task="fortunes_topic", variant="mola_increasing", n_train=16, n_test=8, epochs=1,
                        max_length=8, batch_size=8)
    a, b = run(cfg, 3), run(cfg, 3)
    assert a["history"] == b["history"] and a["metrics"]["accuracy"] == b["metrics"]["accuracy"]
    assert a["allocation"]["experts"] == [2, 2, 3, 5, 5, 7]
