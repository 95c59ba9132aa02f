"""The `htsr` command: README's main job, outputs, plots, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd

from htsr.cli.main import main


def test_analyze_example_minilm_prints_table_and_summary(capsys):
    assert main(["analyze", "--example", "minilm", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "encoder.layer.5.output.dense" in out
    assert "summary: 37/40 layers fitted, 3 skipped" in out
    assert "alpha=" in out


def test_outputs_and_plots(tmp_path, capsys):
    rc = main(["analyze", "--example", "minilm", "--layers", "encoder.layer.0.*", "--mp-fit", "--randomize",
               "--seed", "1", "-o", str(tmp_path / "r.json"), "-o", str(tmp_path / "r.csv"),
               "-o", str(tmp_path / "r.parquet"), "--plot", str(tmp_path / "plots"), "--quiet"])
    assert rc == 0
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["schema"] == "htsr.analysis/1" and len(data["rows"]) == 6
    assert data["metadata"]["config"]["seed"] == 1 and data["metadata"]["config"]["randomize"] is True
    assert len(pd.read_csv(tmp_path / "r.csv")) == len(pd.read_parquet(tmp_path / "r.parquet")) == 6
    pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert "alpha_by_layer.png" in pngs and len(pngs) == 7
    assert "wrote 7 plot(s)" in capsys.readouterr().err


def test_preset_and_options(capsys):
    rc = main(["analyze", "--example", "minilm", "--preset", "weightwatcher", "--layers", "re:pooler",
               "--all-columns"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "pooler.dense" in out and "12.35" in out  # WeightWatcher 0.7.7 reports alpha 12.354853


def test_no_matrices_exit_code(tmp_path, capsys):
    import torch
    from safetensors.torch import save_file

    save_file({"ln.weight": torch.ones(8)}, str(tmp_path / "model.safetensors"))
    assert main(["analyze", str(tmp_path)]) == 1
    assert "no weight matrices" in capsys.readouterr().err


def test_console_script_entry_point():
    r = subprocess.run([sys.executable, "-m", "htsr", "analyze", "--example", "minilm", "--layers",
                        "encoder.layer.0.attention.self.query", "--no-progress"], capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0, r.stderr
    assert "encoder.layer.0.attention.self.query" in r.stdout
