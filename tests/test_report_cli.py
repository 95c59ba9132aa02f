"""``htsr report`` on the command line: exit codes and one-line errors (docs/cli.md), --json, --base, no file left
behind on an error."""

from __future__ import annotations

import contextlib
import json

import pytest

from htsr.cli.main import main
from tests import report_fixtures as F


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    import torch

    from htsr.spectra.analysis import analyze
    from tests.conftest import heavy_tailed

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        an = analyze({"a.weight": heavy_tailed(150, 90, seed=4), "b.weight": heavy_tailed(140, 100, seed=5)})
    finally:
        torch.set_num_threads(n)
    d = tmp_path_factory.mktemp("cli")
    an.save(d / "an.json", include_evals=True)
    return d / "an.json"


def _err_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_report_json_and_base(saved, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", str(saved), "-o", str(out), "--json", "--base", str(saved)]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["kind"] == "comparison" and res["timings"]["bytes"] == out.stat().st_size


def test_method_dir(tmp_path, capsys):
    d = F.tinymem_dir(tmp_path / "tm")
    assert main(["report", str(d), "-o", str(tmp_path / "t.html")]) == 0
    assert "tinymem report" in capsys.readouterr().err


@pytest.mark.parametrize("case, code, message", [
    ("version", 2, "analysis schema htsr.analysis/2 is not supported"),
    ("schema", 2, "schema 'other/1' has no report"),
    ("empty", 2, "the analysis holds no layer"),
    ("nofit", 1, "no layer of 1 has a fitted power law"),
    ("unwritable", 2, "out is not a writable directory"),
    ("suffix", 2, "unsupported file type '.pdf'"),
    ("model-options", 2, "apply to models only"),
])
def test_bad_input_one_line_and_no_file(tmp_path, capsys, case, code, message):
    import numpy as np
    import torch

    from htsr.spectra.analysis import analyze

    src = tmp_path / "in.json"
    out = tmp_path / "out" / "r.html"
    if case == "version":
        src.write_text(json.dumps({"metadata": {"schema": "htsr.analysis/2"}, "rows": []}))
    elif case == "schema":
        src.write_text(json.dumps({"schema": "other/1"}))
    elif case == "empty":
        analyze({"bias": np.zeros(3, dtype=np.float32)}).save(src)
    elif case == "nofit":
        analyze({"z.weight": torch.zeros(20, 10)}).save(src)
    elif case in ("unwritable", "suffix", "model-options"):
        analyze({"z.weight": torch.zeros(20, 10)}).save(src)
        if case == "unwritable":
            (tmp_path / "out").write_text("a file where a directory should be")
        if case == "suffix":
            out = tmp_path / "r.pdf"
        if case == "model-options":
            src = F.mdtree_tree(tmp_path / "tree.json")
    args = ["report", str(src), "-o", str(out)] + (["--preset", "weightwatcher"] if case == "model-options" else [])
    with pytest.raises(SystemExit) if case == "suffix" else contextlib.nullcontext() as e:
        rc = main(args)
    if case == "suffix":
        rc = e.value.code
        assert message in capsys.readouterr().err
    else:
        line = _err_line(capsys)
        assert line.startswith("htsr: error: ") and message in line, line
    assert rc == code
    assert not out.exists() if case != "unwritable" else (tmp_path / "out").is_file()
    assert not list(tmp_path.glob("**/.r.html*"))  # no temporary file left
