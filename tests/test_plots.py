"""Plots of an Analysis: one log-log ESD PNG per analysed layer plus ``alpha_by_layer.png``."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.image import imread
from scipy.integrate import quad

import htsr
from htsr.spectra import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _weights() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randn(200, 100, generator=g),
        # column scales make a heavier tail than the Marchenko-Pastur bulk
        "b.weight": torch.randn(150, 120, generator=g) * torch.rand(120, generator=g) ** 2,
        "eye.weight": torch.eye(40),  # evals present, fit fails: all eigenvalues equal
        "z.weight": torch.zeros(50, 50),  # fit fails before any eigenvalue is kept
        "n.weight": torch.full((30, 20), math.nan),  # status "error": only in the summary
    }


@pytest.fixture(scope="module")
def analysis() -> htsr.Analysis:
    return htsr.analyze(_weights(), randomize=True)


def _assert_png(path: Path) -> None:
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_MAGIC
    img = imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    assert img.shape[0] >= 300 and img.shape[1] >= 600
    assert float(img[..., :3].std()) > 0.01  # not a blank canvas


def test_analysis_has_expected_rows(analysis: htsr.Analysis) -> None:
    status = {r["name"]: r["status"] for r in analysis.rows}
    assert status == {"a": "success", "b": "success", "eye": "failed", "z": "failed", "n": "error"}
    assert "eye" in analysis.evals and "z" not in analysis.evals
    assert set(analysis.randomized_evals) == {"a", "b", "eye"}


def test_plot_writes_one_png_per_analysed_layer_plus_summary(analysis: htsr.Analysis, tmp_path: Path) -> None:
    out = tmp_path / "new" / "plots"  # created on demand
    paths = analysis.plot(out)
    names = [p.name for p in paths]
    assert names == ["esd_000_a.png", "esd_001_b.png", "esd_002_eye.png", "alpha_by_layer.png"]
    assert all(p.parent == out for p in paths)
    for p in paths:
        _assert_png(p)
    # nothing else left behind (temp files of the atomic writes are gone)
    assert sorted(p.name for p in out.iterdir()) == sorted(names)


def test_filenames_are_deterministic_and_overwrite(analysis: htsr.Analysis, tmp_path: Path) -> None:
    first = plots.plot_analysis(analysis, tmp_path)
    second = plots.plot_analysis(analysis, tmp_path)
    assert first == second
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in first)


def test_layers_filter(analysis: htsr.Analysis, tmp_path: Path) -> None:
    paths = analysis.plot(tmp_path, layers=["b", "z", "n"])
    # row index is kept in the name; z and n (no eigenvalues) only show in the summary
    assert [p.name for p in paths] == ["esd_001_b.png", "alpha_by_layer.png"]
    for p in paths:
        _assert_png(p)
    assert plots.plot_analysis(analysis, tmp_path / "one", layers="a")[0].name == "esd_000_a.png"
    assert plots.plot_analysis(analysis, tmp_path / "none", layers=["nope"]) == []


def test_without_randomized_evals(tmp_path: Path) -> None:
    a = htsr.analyze({"a.weight": _weights()["a.weight"]})
    assert not a.randomized_evals
    paths = a.plot(tmp_path)
    assert [p.name for p in paths] == ["esd_000_a.png", "alpha_by_layer.png"]
    for p in paths:
        _assert_png(p)


def test_failed_fit_title_and_success_title(analysis: htsr.Analysis) -> None:
    t = plots._title(analysis["eye"])
    assert t.startswith("eye\n") and "fit failed: all eigenvalues are equal" in t
    t = plots._title(analysis["a"])
    assert "alpha = " in t and "D = " in t and f"n_tail = {analysis['a']['n_tail']}" in t


def test_safe_filename() -> None:
    assert plots.safe_filename(3, "encoder.layer.0.attention.self.query") == (
        "esd_003_encoder.layer.0.attention.self.query.png"
    )
    assert plots.safe_filename(12, "conv/1:kernel[0] x", width=4) == "esd_0012_conv_1_kernel_0_x.png"
    assert plots.safe_filename(0, "../..") == "esd_000_layer.png"
    long = plots.safe_filename(7, "m." * 200)
    assert len(long) <= len("esd_007_.png") + plots.MAX_NAME_CHARS
    # names that collide after sanitising stay unique through the row index
    assert plots.safe_filename(1, "a/b") != plots.safe_filename(2, "a:b")


def test_short_names() -> None:
    names = ["bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.11.output.dense"]
    assert plots._short_names(names) == ["0.attention.self.query", "11.output.dense"]
    assert plots._short_names(["only.one"]) == ["only.one"]
    assert plots._short_names(["x.a", "x"]) == ["a", "x"]
    s = plots._short_names(["p." + "q" * 50, "p.r"], max_chars=20)[0]
    assert len(s) == 20 and s.startswith("\u2026")
    long = ["encoder.layer.0.attention.output.dense", "pooler.dense"]
    assert plots._short_names(long, max_chars=32) == ["\u2026layer.0.attention.output.dense", "pooler.dense"]


def test_fitted_density_is_normalised_to_the_tail_fraction() -> None:
    alpha, xmin, frac = 3.2, 5.0, 0.25
    total, _ = quad(lambda x: float(plots.tail_pdf(np.array(x), alpha, xmin, frac)), xmin, math.inf)
    assert total == pytest.approx(frac, rel=1e-6)


def test_log_bins_put_xmin_on_an_edge() -> None:
    bins = plots.log_bins(1.0, 1000.0, 20, anchor=37.0)
    assert bins[0] <= 1.0 and bins[-1] >= 1000.0
    assert np.isclose(bins, 37.0).any()
    assert np.allclose(np.diff(np.log10(bins)), 3 / 20)
    single = plots.log_bins(2.0, 2.0, 10)
    assert single[0] < 2.0 < single[-1]


def test_summary_many_layers(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(250):
        status = "failed" if i % 31 == 0 else "success"
        alpha = float(rng.uniform(1.5, 8.0)) if status == "success" else math.nan
        rows.append({"name": f"model.layers.{i // 7}.mlp.proj_{i % 7}", "status": status, "alpha": alpha})
    rows[5]["alpha"] = 45.0  # clipped at the top of the axis
    rows[6]["status"] = "error"
    path = plots.plot_alpha_summary(rows, tmp_path / "s.png")
    img = imread(path)
    assert img.shape[1] > 2 * img.shape[0]  # widened for many layers


def test_no_pyplot_and_no_rcparams_change(tmp_path: Path) -> None:
    # reading rcParams["backend"] would itself import pyplot to resolve the auto backend: skip that key
    code = (
        "import sys, torch, matplotlib, htsr\n"
        "def rc(): return {k: matplotlib.rcParams[k] for k in matplotlib.rcParams if k != 'backend'}\n"
        "before = rc()\n"
        "a = htsr.analyze({'w.weight': torch.randn(60, 30, generator=torch.Generator().manual_seed(1))})\n"
        f"paths = a.plot({str(tmp_path)!r})\n"
        "assert len(paths) == 2, paths\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
        "assert rc() == before\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout == ""  # no prints
