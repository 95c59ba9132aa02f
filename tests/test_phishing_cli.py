"""``htsr phish run|sweep|defend`` end to end on the tiny preset, and bad input (exit 2, one line)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from htsr.cli.main import main

TINY = ["--preset", "tiny", "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def pre(tmp_path_factory) -> Path:
    """A run directory whose pretrained/ cache the other commands reuse through --model."""
    out = tmp_path_factory.mktemp("ph") / "run"
    assert main(["phish", "run", *TINY, "--out-dir", str(out)]) == 0
    return out


def test_run_writes_the_result_and_the_attack_table(pre, tmp_path, capsys):
    doc = json.loads((pre / "run.json").read_text())
    assert doc["status"] == "done" and doc["num_secrets"] == 4
    assert len(doc["secrets"]) == 4 and all(len(s["digits"]) == 6 for s in doc["secrets"])
    att = pd.read_csv(pre / "attacks.csv")
    assert list(att["step"]) == [15, 16]  # the last attack_iters=2 of 2+6+2+2+2+2 = 16 steps
    capsys.readouterr()
    out = tmp_path / "r"
    assert main(["phish", "run", *TINY, "--model", str(pre / "pretrained"), "--out-dir", str(out), "--json",
                 "-o", str(tmp_path / "r.csv")]) == 0
    head = json.loads(capsys.readouterr().out)
    assert head["ser_exact"] == doc["ser_exact"]  # the same pretrained weights and seed: the same run
    assert len(pd.read_csv(tmp_path / "r.csv")) == 2


def test_sweep_resumes_and_writes_summary_and_plot(pre, tmp_path, capsys):
    out = tmp_path / "sw"
    args = ["phish", "sweep", *TINY, "--model", str(pre / "pretrained"), "--poisons", "0,6", "--gap", "0,2",
            "--seeds", "0,1", "--out-dir", str(out), "-o", str(tmp_path / "s.csv"), "--plot", str(tmp_path / "s.png")]
    assert main(args) == 0
    res = pd.read_csv(out / "results.csv")
    # one factor at a time: poisons {0, 6} x gap {2} and poisons {6} x gap {0}: 3 points x 2 seeds
    assert len(res) == 6 and (res["status"] == "ok").all()
    s = pd.read_csv(tmp_path / "s.csv")
    assert set(zip(s["factor"], s["value"], strict=True)) >= {("num_poisons", 0), ("num_poisons", 6), ("gap", 0)}
    assert (s["secrets"] == 8).all() and (tmp_path / "s.png").stat().st_size > 0
    capsys.readouterr()
    assert main(args) == 0  # resumed: nothing re-run
    assert "resuming" in capsys.readouterr().err


def test_defend_reports_before_and_after(pre, tmp_path):
    out = tmp_path / "d"
    assert main(["phish", "defend", *TINY, "--model", str(pre / "pretrained"), "--forget", "all",
                 "--methods", "durable,balanced_subnet", "--out-dir", str(out), "-o", str(tmp_path / "d.csv")]) == 0
    t = pd.read_csv(tmp_path / "d.csv")
    assert list(t["method"]) == ["none (phished)", "durable", "balanced_subnet"]
    assert (t["ppl"] > 1).all()


def _one_line_error(capsys, args, needle):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err


def test_bad_input_is_one_line_and_exit_2(pre, tmp_path, capsys):
    m = ["--model", str(pre / "pretrained")]
    _one_line_error(capsys, ["phish", "run", *TINY, *m, "--set", "num_secrets=0", "--out-dir", str(tmp_path / "a")],
                    "num_secrets must be >= 1")
    _one_line_error(capsys, ["phish", "run", *TINY, *m, "--set", "secret_len=80", "--out-dir", str(tmp_path / "b")],
                    "does not fit")
    _one_line_error(capsys, ["phish", "run", *TINY, *m, "--set", "suffix=favourite_colour", "--out-dir",
                             str(tmp_path / "c")], "suffix")
    _one_line_error(capsys, ["phish", "run", "--preset", "paper", "--out-dir", str(tmp_path / "d")], "needs --model")
    _one_line_error(capsys, ["phish", "sweep", *TINY, *m, "--poisons", "-1", "--out-dir", str(tmp_path / "e")],
                    "num_poisons")


def test_a_non_causal_model_directory_is_exit_2(tmp_path, capsys):
    from transformers import BertConfig, BertModel

    d = tmp_path / "bert"
    BertModel(BertConfig(vocab_size=256, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(d)
    capsys.readouterr()
    _one_line_error(capsys, ["phish", "run", *TINY, "--model", str(d), "--out-dir", str(tmp_path / "o")],
                    "causal")


def test_summaries_pool_secrets_over_seeds_with_wilson_bounds():
    from htsr.phishing.config import preset
    from htsr.phishing.metrics import wilson_interval
    from htsr.phishing.sweep import design, summarize, summarize_points

    base = preset("tiny")[0]
    cells = design(base, {"num_poisons": [0, 6], "duplication": [1, 2]}, [0, 1], full=True)
    assert len(cells) == 8
    # hand-made results: 4 secrets per run; at (6 poisons, dup 2) seeds extract 1 and 3 secrets, elsewhere 0
    rows = []
    for c in cells:
        p = c.params
        k = {0: 1, 1: 3}[p["seed"]] if (p["num_poisons"], p["duplication"]) == (6, 2) else 0
        rows.append({**p, "status": "ok", "num_secrets": 4, "ser_exact": k / 4, "ser_random": 0.0, "ser_any": k / 4})
    table = pd.DataFrame(rows)
    s = summarize(table, base)
    hit = s[(s["factor"] == "num_poisons") & (s["value"] == 6)].iloc[0]
    assert hit["ser_any"] == 0.5 and hit["secrets"] == 8
    assert (hit["ser_any_lo"], hit["ser_any_hi"]) == pytest.approx(wilson_interval(4, 8))
    pts = summarize_points(table)
    assert len(pts) == 4 and pts["ser_exact"].tolist() == [0.0, 0.0, 0.0, 0.5]


def test_the_plot_of_an_all_zero_summary(tmp_path):
    # regression: Wilson bounds at SER 0 once gave a -1e-17 error bar that matplotlib refused
    from htsr.phishing.metrics import wilson_interval
    from htsr.phishing.plots import plot_summary

    assert wilson_interval(0, 24)[0] == 0.0 and wilson_interval(24, 24)[1] == 1.0
    lo, hi = wilson_interval(0, 24)
    rows = [{"factor": "num_poisons", "value": v, **{f"ser_{k}": 0.0 for k in ("exact", "random", "any")},
             **{f"ser_{k}_lo": lo - 1e-17 for k in ("exact", "random", "any")},
             **{f"ser_{k}_hi": hi for k in ("exact", "random", "any")}} for v in (0, 10)]
    plot_summary(pd.DataFrame(rows), tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 0
