"""Bad input on the command line, table-driven: every case exits with the documented code (2 bad usage or input,
1 nothing could be measured, 130 interrupted) and one error line, before any work starts; no traceback, no lost
file, nothing printed raw to the terminal or as a spreadsheet formula."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from htsr.cli.main import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def model(tmp_path):
    g = torch.Generator().manual_seed(0)
    p = tmp_path / "m.safetensors"
    save_file({"a.weight": torch.randn(30, 40, generator=g), "b.weight": torch.randn(20, 30, generator=g)}, str(p))
    return p


def _run(argv, capsys) -> tuple[int, str, str]:
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse
        rc = e.code
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    return rc, out, err


def _error_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if "error:" in ln]


# ------------------------------------------------------------------ analyze: options validated before work
BAD_ANALYZE = [
    (["--device", "banana"], "banana"), (["--device", "tpu"], "tpu"), (["--device", "meta"], "meta"),
    (["--device", "mps"], "mps"), (["--set", "device=meta"], "unknown device 'meta'"),
    (["--set", "device=banana"], "unknown device 'banana'"),
    (["--layers", "re:("], "re:("), (["--exclude", "re:[a-"], "re:[a-"), (["--set", "layers=re:("], "regular expr"),
    (["--seed", "-1"], "-1"), (["--set", "seed=-1"], "seed must be >= 0"),
    (["--xmin-rule", "fraction", "--xmin-pos", "0.5"], "0.5"), (["--set", "xmin_pos=0.5"], "xmin_pos must be > 1"),
    (["--set", "max_evals=abc"], "max_evals"), (["--set", "nonsense=1"], "nonsense"),
    (["--set", "precision=float16"], "precision"), (["--min-evals", "abc"], "abc"), (["--workers", "-1"], "-1"),
    (["--threads", "0"], "0"), (["--preset", "banana"], "unknown preset"), (["--kinds", "banana"], "banana"),
    (["-o", "out.txt"], ".txt"), (["-o", "out.xlsx"], ".xlsx"), (["--base", "nonexistent.safetensors"], "no such"),
]


@pytest.mark.parametrize("extra,match", BAD_ANALYZE, ids=[" ".join(c[0]) for c in BAD_ANALYZE])
def test_analyze_bad_options_exit_2(model, capsys, extra, match):
    rc, out, err = _run(["analyze", model, *extra], capsys)
    assert rc == 2
    lines = _error_lines(err)
    assert len(lines) == 1 and match in lines[0], err
    assert "layers fitted" not in out  # refused before any work


def test_every_device_option_refuses_absent_devices(capsys):
    """Every sub-command with --device refuses devices this machine lacks, at parse time."""
    cmds = []

    def walk(parser, prefix):
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sp in a.choices.items():
                    if any("--device" in x.option_strings for x in sp._actions):
                        cmds.append([*prefix, name])
                    walk(sp, [*prefix, name])

    walk(build_parser(), [])
    assert ["analyze"] in cmds and len(cmds) >= 3
    bad = ["banana", "tpu", "meta", "mps"] + ([] if torch.cuda.is_available() else ["cuda", "cuda:0"])
    for cmd in cmds:
        for dev in bad:
            rc, _, err = _run([*cmd, "--device", dev], capsys)
            assert rc == 2 and dev in " ".join(_error_lines(err)), (cmd, dev, err)


def test_every_help_prints(capsys):
    """``--help`` of every sub-command (a ``%`` in a help string used to crash ``tinymem --help``)."""
    def walk(parser, prefix):
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sp in a.choices.items():
                    yield [*prefix, name]
                    yield from walk(sp, [*prefix, name])

    cmds = list(walk(build_parser(), []))
    assert ["tinymem"] in cmds
    for cmd in cmds:
        rc, out, _ = _run([*cmd, "--help"], capsys)
        assert rc == 0 and "usage:" in out, cmd


# ------------------------------------------------------------------ the other sub-commands' nonsense values
BAD_OTHER = [
    (["prune", "{hf}", "--sparsity", "0.5", "--seqlen", "0", "--out-dir", "{tmp}/o"], "--seqlen"),
    (["prune", "{hf}", "--sparsity", "0.5", "--owl-m", "-1", "--out-dir", "{tmp}/o"], "--owl-m"),
    (["prune", "{hf}", "--sparsity", "1.5", "--out-dir", "{tmp}/o"], "--sparsity"),
    (["prune", "{hf}", "--sparsity", "0.5", "--out-dir", "{hf}/inside"], "inside the input"),
    (["prune", "{hf}", "--sparsity", "0.5", "--out-dir", "{tmp}", "--overwrite"], "contains the input"),
    (["perplexity", "{hf}", "--text", "{tmp}/t.txt", "--seqlen", "0"], "--seqlen"),
    (["perplexity", "{hf}", "--text", "{tmp}/t.txt", "--seqlen", "100"], "exceeds the model's 16 positions"),
    (["tinymem", "train", "--set", "epochs=abc", "--out-dir", "{tmp}/tm"], "epochs"),
    (["tinymem", "train", "--data", "max_ctx=abc", "--out-dir", "{tmp}/tm"], "max_ctx"),
    (["tinymem", "train", "--seed", "-1", "--out-dir", "{tmp}/tm"], "--seed"),
    (["tinymem", "compare", "--methods", ",,", "--out-dir", "{tmp}/tm"], "--methods"),
    (["tinymem", "compare", "--retain-size", "-3", "--out-dir", "{tmp}/tm"], "--retain-size"),
    (["tinymem", "compare", "--hp", "epochs=0", "--out-dir", "{tmp}/tm"], "epochs"),
    (["landscape", "surface", "--plot", "{tmp}/p.txt"], ".txt"),
    (["landscape", "surface", "--save-weights", "{tmp}/w.txt"], ".txt"),
    (["tempbalance", "compare", "--fractions", "2.0"], "fractions"),
]


@pytest.mark.parametrize("argv,match", BAD_OTHER, ids=[" ".join(c[0][:4]) for c in BAD_OTHER])
def test_other_commands_refuse_nonsense_before_work(tmp_path, capsys, argv, match):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 1, "n_embd": 8, "n_head": 2,
                                                "vocab_size": 11, "n_positions": 16}))
    (tmp_path / "t.txt").write_text("hello world")
    before = sorted(p.name for p in tmp_path.iterdir())
    rc, _, err = _run([a.format(hf=hf, tmp=tmp_path) for a in argv], capsys)
    assert rc == 2, err
    lines = _error_lines(err)
    assert len(lines) == 1 and match in lines[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, nothing deleted


# ------------------------------------------------------------------ analyze: inputs
def test_bad_sources_exit_2_one_line(tmp_path, capsys):
    fifo = tmp_path / "x.safetensors"
    os.mkfifo(fifo)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00[1, 2, 3]       ")
    d = tmp_path / "hostile"
    d.mkdir()
    save_file({"a.weight": torch.ones(3, 3)}, str(d / "s.safetensors"))
    cases = [(fifo, "not a regular file"), (junk, "a JSON list"), (tmp_path / "none.safetensors", "no such"),
             (tmp_path / "x.txt", "no such")]
    for wm, match in [({"a.weight": "/etc/shadow"}, "relative path inside"),
                      ({"a.weight": "../../../etc/passwd"}, "outside the model"), ([1], "weight_map is a list"),
                      ({"a.weight": None}, "is a NoneType")]:
        sub = d / f"case{len(cases)}"
        sub.mkdir()
        (sub / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
        cases.append((sub, match))
    for src, match in cases:
        rc, _, err = _run(["analyze", src], capsys)
        assert rc == 2, (src, err)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and match in lines[0], (src, err)


def test_output_equal_to_an_input_is_refused(tmp_path, capsys):
    d = tmp_path / "sharded"
    d.mkdir()
    save_file({"a.weight": torch.randn(20, 30)}, str(d / "s.safetensors"))
    index = d / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a.weight": "s.safetensors"}}))
    before = index.read_bytes()
    rc, _, err = _run(["analyze", index, "-o", index], capsys)
    assert rc == 2 and index.read_bytes() == before
    rc, _, err = _run(["analyze", d / "s.safetensors", "-o", d / "s.safetensors"], capsys)
    assert rc == 2


def test_all_rows_errors_exit_1(tmp_path, capsys):
    p = tmp_path / "nan.safetensors"
    save_file({"a.weight": torch.full((10, 12), float("nan")), "b.weight": torch.full((8, 9), float("inf"))}, str(p))
    rc, _, err = _run(["analyze", p], capsys)
    assert rc == 1 and "no layer could be analysed" in err


def test_hostile_names_escaped_on_terminal_and_defused_in_csv(tmp_path, capsys):
    g = torch.Generator().manual_seed(1)
    names = ["\x1b]0;owned\x07\x1b[2Jclear.weight", "=HYPERLINK(\"http://x\").weight", "+cmd|' /C calc'!A0.weight",
             "\u009b31mred.weight"]
    p = tmp_path / "h.safetensors"
    save_file({n: torch.randn(20, 30, generator=g) for n in names} | {"@bad": torch.full((4, 5), float("nan"))},
              str(p))
    csv = tmp_path / "t.csv"
    rc, out, err = _run(["analyze", p, "-o", csv], capsys)
    assert rc == 0
    for stream in (out, err):
        assert "\x1b" not in stream and "\x07" not in stream and "\u009b" not in stream
    assert "\\x1b" in out
    text = csv.read_text()
    for line in text.splitlines()[1:]:
        assert not line.startswith(("=", "+", "-", "@")), line
    assert "'=HYPERLINK" in text and "'+cmd" in text
    plots = tmp_path / "plots"
    rc, _, _ = _run(["analyze", p, "--plot", plots], capsys)
    assert rc == 0 and all(f.parent == plots for f in plots.iterdir())


# ------------------------------------------------------------------ Ctrl-C
def test_ctrl_c_during_analysis_exits_130_one_line(tmp_path):
    g = torch.Generator().manual_seed(0)
    p = tmp_path / "big.safetensors"
    save_file({f"l{i}.weight": torch.randn(150, 200, generator=g) for i in range(200)}, str(p))
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "htsr", "analyze", str(p), "--gof", "-q", "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    time.sleep(4.0)  # imports done, analysing (--gof bootstraps every layer: minutes in all)
    assert proc.poll() is None, "the analysis ended before the interrupt"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert [ln for ln in err.splitlines() if ln.strip()] == ["htsr: interrupted"], err
