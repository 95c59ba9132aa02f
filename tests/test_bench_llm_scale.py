"""The 7B-scale benchmark's guards: disk space refused with a clear reason, the per-shape extrapolation."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_llm_scale.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_llm_scale", _PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_checkpoint_larger_than_free_space_is_refused(bench, tmp_path, monkeypatch):
    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(bench.DiskSpaceError, match=r"GiB free, the checkpoint needs .* use fewer --blocks"):
        bench.check_disk(tmp_path / "cache", free * 2)
    bench.check_disk(tmp_path / "cache", 1024)  # fits: no error
    # build_checkpoint refuses before writing anything
    monkeypatch.setattr(bench, "BYTES_PER_BLOCK", free)  # one block now "needs" the whole disk
    with pytest.raises(bench.DiskSpaceError):
        bench.build_checkpoint(tmp_path / "cache", 2)
    assert not (tmp_path / "cache").exists()


def test_main_exits_2_with_one_line_on_full_disk(bench, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench, "BYTES_PER_BLOCK", shutil.disk_usage(tmp_path).free)
    assert bench.main(["--blocks", "2", "--cache", str(tmp_path / "c"), "--ww-per-shape", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "GiB free" in err[0]


def test_llama7b_shapes_and_extrapolation(bench):
    counts = bench.shape_counts(32)
    assert counts == {"4096x4096": 128, "11008x4096": 64, "4096x11008": 32}
    # LLaMA-7B block matrices: 4 x 4096^2 + 3 x 11008 x 4096 = 202,375,168 weights (norms left out), bf16
    assert bench.BYTES_PER_BLOCK == 2 * 202_375_168
    assert bench.extrapolate({"4096x4096": 1.0, "11008x4096": 2.0, "4096x11008": 3.0}) == 128 + 128 + 96


@pytest.mark.slow
def test_smoke_run_end_to_end_on_small_shapes(bench, tmp_path):
    """The whole pipeline on a 1-block checkpoint with shapes 128/344: build, two htsr runs, WeightWatcher."""
    import json

    pytest.importorskip("weightwatcher")
    out = tmp_path / "r.json"
    rc = bench.main(["--blocks", "1", "--hidden", "128", "--inter", "344", "--cache", str(tmp_path / "ck"),
                     "--json", str(out)])
    assert rc == 0
    r = json.loads(out.read_text())
    assert r["htsr default"]["rows"] == 7 and set(r["htsr default"]["per_matrix_s"]) == {
        "128x128", "344x128", "128x344"}
    assert r["htsr tail_only"]["spectrum"] == {"full": 7}  # too small for the tail: full solves, with reasons
    assert set(r["ww_per_matrix_s"]) == {"128x128", "344x128", "128x344"}
    assert r["ww_extrapolated_7b_s"] > 0 and r["htsr default"]["peak_rss_mib"] > 0
    # a second run reuses the cached checkpoint
    assert (tmp_path / "ck" / bench.MARKER).is_file()
