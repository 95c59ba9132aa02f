"""htsr report: sources detected, sections built, the file self-contained, bad input refused, no partial file."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from htsr.errors import HtsrError, MeasurementError, SourceError
from htsr.report import build_report, detect, write_report
from htsr.report.bundle import KNOWN_NON_REQUEST_URLS, ReportError
from htsr.report.digest import ccdf_ranks, esd_digest
from tests import report_fixtures as F

URL = re.compile(r"(?:https?:)?//[A-Za-z0-9][A-Za-z0-9.-]*\.[A-Za-z]{2,}[^\s\"'<>)]*|https?://[^\s\"'<>)]+")


@pytest.fixture(autouse=True)
def _validate_specs(monkeypatch):
    """Every chart of every test is validated against the Vega-Lite schema (altair)."""
    from htsr.report import analysis

    monkeypatch.setattr(analysis, "VALIDATE", True)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, torch_one_thread_module):
    """A small real analysis (two seeded heavy-tailed matrices and one too small to fit) saved with and without
    eigenvalues."""
    import torch

    from htsr.spectra.analysis import analyze
    from tests.conftest import heavy_tailed

    sd = {"a.weight": heavy_tailed(200, 100, seed=1), "b.weight": heavy_tailed(150, 120, seed=2),
          "c.weight": torch.ones(3, 2)}
    an = analyze(sd)
    d = tmp_path_factory.mktemp("saved")
    an.save(d / "with.json", include_evals=True)
    an.save(d / "without.json")
    an.save(d / "an.parquet")
    return an, d


def _data(html: str) -> dict:
    m = re.search(r'<script type="application/json" id="htsr-data">(.*?)</script>', html, re.S)
    return json.loads(m.group(1))


def _urls(html: str) -> set[str]:
    text = html
    for u in KNOWN_NON_REQUEST_URLS:
        text = text.replace(u, "")
    return set(URL.findall(text)) | set(re.findall(r"//cdn[^\s\"']*", text))


# ----------------------------------------------------------------------------- digest
def test_ccdf_ranks_keep_the_tail_exactly_and_the_smallest():
    assert list(ccdf_ranks(10, 150)) == list(range(10))
    idx = ccdf_ranks(4096, 150)
    assert len(idx) <= 150 and idx[0] == 0 and np.all(np.diff(idx) > 0)
    assert list(idx[-50:]) == list(range(4096 - 50, 4096))  # the 50 largest, every one


def test_esd_digest_against_closed_forms():
    lam = np.sort(np.random.default_rng(0).pareto(2.0, 3000) + 1.0)
    row = {"status": "success", "alpha": 3.0, "xmin": 2.0, "xmax": float(lam[-1]), "n_tail": 750}
    d = esd_digest(np.concatenate([[0.0, 1e-20], lam]), row)
    assert d["n"] == 3000 and d["n_zero"] == 2
    # the histogram is a density over the eigenvalues shown: it integrates to 1 (4-digit rounding)
    area = sum((r - left) * h for left, r, h in d["hist"])
    assert area == pytest.approx(1.0, rel=3e-3)
    assert len(d["hist"]) <= 60 and 2.0 in [round(h[0], 6) for h in d["hist"]]  # xmin is a bin edge
    # CCDF points are exact values of P(Lambda >= lambda): the largest has 1/n, the smallest 1
    assert d["ccdf"][-1] == [pytest.approx(lam[-1], rel=1e-3), pytest.approx(1 / 3000, rel=1e-3)]
    assert d["ccdf"][0][1] == 1.0 and len(d["ccdf"]) <= 150
    # the fitted lines are power laws: slope -alpha (density) and 1 - alpha (CCDF) in log-log, at xmin the density
    # is frac * (alpha - 1) / xmin and the CCDF is frac
    (x0, y0), (x1, y1) = d["fit"]
    assert math.log(y1 / y0) / math.log(x1 / x0) == pytest.approx(-3.0, rel=1e-3)
    assert y0 == pytest.approx(0.25 * 2.0 / 2.0, rel=1e-3)
    (c0x, c0), (c1x, c1) = d["fit_ccdf"]
    assert c0 == pytest.approx(0.25, rel=1e-3)
    assert math.log(c1 / c0) / math.log(c1x / c0x) == pytest.approx(-2.0, rel=1e-3)


def test_failed_fit_has_no_fit_line():
    d = esd_digest(np.linspace(1, 2, 50), {"status": "failed", "alpha": float("nan")})
    assert "fit" not in d and d["ccdf"] and d["hist"]


# ----------------------------------------------------------------------------- analysis reports
def test_saved_analysis_report_has_every_section_and_no_url(saved, tmp_path):
    an, d = saved
    out = tmp_path / "r.html"
    rep = write_report(d / "with.json", out)
    html = out.read_text()
    assert rep.kind == "analysis" and rep.timings["bytes"] == len(html.encode())
    assert not _urls(html), _urls(html)
    markup = re.sub(r"<script[^>]*>.*?</script>", "<script></script>", html, flags=re.S)  # the page outside scripts
    assert "<link" not in markup and not re.search(r"\b(src|href)\s*=", markup)
    assert markup.count("<script") == 3  # the chart library, the data, the page script: all inline
    data = _data(html)
    ids = [s["id"] for s in data["sections"]]
    assert ids == ["summary", "alpha", "esd", "table", "howto", "metadata"]
    sec = {s["id"]: s for s in data["sections"]}
    fitted = [r["name"] for r in an.rows if r["status"] == "success"]
    assert set(sec["esd"]["layers"]) == set(an.evals)
    assert [r["name"] for r in sec["table"]["rows"]] == [r["name"] for r in an.rows]
    cards = {c["label"]: c["value"] for c in sec["summary"]["items"]}
    assert cards["layers fitted"] == f"{len(fitted)} / {len(an.rows)}"
    assert cards["mean alpha"] == pytest.approx(np.mean([an[n]["alpha"] for n in fitted]))
    alphas = [an[n]["alpha"] for n in fitted]
    assert cards["outside 2-6"] == sum(a < 2 or a > 6 for a in alphas)
    assert "skipped" in cards  # the 3x2 matrix


def test_parquet_and_evals_free_json_report_without_esd_data(saved, tmp_path):
    _, d = saved
    for src in ("without.json", "an.parquet"):
        rep = build_report(d / src)
        esd = next(s for s in rep.sections if s["id"] == "esd")
        assert esd["layers"] == {} and "without eigenvalues" in esd["caption"]


def test_model_source_is_analysed_with_eigenvalues(tmp_path, torch_one_thread):
    from safetensors.torch import save_file

    from tests.conftest import heavy_tailed

    save_file({"x.weight": heavy_tailed(120, 60, seed=3).contiguous()}, tmp_path / "m.safetensors")
    assert detect(tmp_path / "m.safetensors") == "model"
    rep = build_report(tmp_path / "m.safetensors")
    esd = next(s for s in rep.sections if s["id"] == "esd")
    assert esd["initial"] == "x" and esd["layers"]["x"]["n"] == 60


def test_base_comparison_delta(saved, tmp_path):
    an, d = saved
    from htsr.spectra.analysis import Analysis

    other = Analysis.load(d / "with.json")
    other.rows[0]["alpha"] = other.rows[0]["alpha"] + 0.5
    other.save(tmp_path / "base.json")
    rep = build_report(d / "with.json", base=tmp_path / "base.json")
    assert rep.kind == "comparison"
    table = next(s for s in rep.sections if s["id"] == "table")
    first = table["rows"][0]
    assert first["name"] == an.rows[0]["name"]
    assert first["delta"] == pytest.approx(-0.5)
    ids = [s["id"] for s in rep.sections]
    assert {"alpha", "delta", "esd", "table_base", "metadata_base"} <= set(ids)


def test_7b_shaped_report_is_under_5_mb(tmp_path):
    an = F.shaped_analysis()
    an.save(tmp_path / "big.json", include_evals=True)
    rep = write_report(tmp_path / "big.json", tmp_path / "big.html")
    size = (tmp_path / "big.html").stat().st_size
    assert size < 5e6, size
    data = _data((tmp_path / "big.html").read_text())
    assert len(next(s for s in data["sections"] if s["id"] == "esd")["layers"]) == 224
    assert rep.timings["bytes"] == size


# ----------------------------------------------------------------------------- bad input, atomic write
def test_other_schema_or_version_is_a_clear_error(tmp_path):
    p = tmp_path / "a.json"
    p.write_text(json.dumps({"schema": "htsr.analysis/2", "metadata": {"schema": "htsr.analysis/2"}, "rows": []}))
    with pytest.raises(SourceError, match="htsr.analysis/2 is not supported.*expected htsr.analysis/1"):
        build_report(p)
    p.write_text(json.dumps({"schema": "something.else/1"}))
    with pytest.raises(ReportError, match="schema 'something.else/1' has no report"):
        build_report(p)
    p.write_text(json.dumps({"hello": 1}))
    with pytest.raises(ReportError, match="not a file htsr can report on"):
        build_report(p)
    p.write_text("[1, 2]")
    with pytest.raises(ReportError, match="expected an object"):
        build_report(p)
    p.write_text("{oops")
    with pytest.raises(ReportError, match="not a JSON file"):
        build_report(p)
    q = tmp_path / "pr.json"
    q.write_text(json.dumps({"schema": "htsr.pruning/7", "layers": []}))
    with pytest.raises(ReportError, match=r"pruning report schema 'htsr.pruning/7' is not supported"):
        build_report(q)


def test_empty_analysis_and_no_fitted_layer(tmp_path):
    from htsr.spectra.analysis import analyze

    empty = analyze({"bias": np.zeros(4, dtype=np.float32)})
    empty.save(tmp_path / "empty.json")
    with pytest.raises(ReportError, match="holds no layer"):
        write_report(tmp_path / "empty.json", tmp_path / "e.html")
    assert not (tmp_path / "e.html").exists()
    import torch

    nofit = analyze({"z.weight": torch.zeros(30, 20)})
    nofit.save(tmp_path / "nofit.json")
    with pytest.raises(MeasurementError, match="no layer of 1 has a fitted power law.*all-zero"):
        write_report(tmp_path / "nofit.json", tmp_path / "n.html")
    assert not (tmp_path / "n.html").exists()


def test_unwritable_path_and_failure_mid_write_leave_no_file(saved, tmp_path, monkeypatch):
    _, d = saved
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a directory")
    with pytest.raises(HtsrError, match="cannot write .*file.txt is not a directory"):
        write_report(d / "with.json", blocker / "r.html")
    (tmp_path / "dir.html").mkdir()
    with pytest.raises(HtsrError, match="dir.html is a directory"):
        write_report(d / "with.json", tmp_path / "dir.html")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.html", "file.txt"]
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        import os

        if os.access(ro, os.W_OK):
            pytest.skip("running as a user who can write a read-only directory (root)")
        with pytest.raises(HtsrError, match="cannot write"):
            write_report(d / "with.json", ro / "r.html")
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o700)


def test_failure_while_writing_leaves_no_partial_file(saved, tmp_path, monkeypatch):
    _, d = saved
    out = tmp_path / "r.html"
    out.write_text("old report")
    from htsr.report import core

    def boom(self):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(core.Report, "html", boom)
    with pytest.raises(RuntimeError):
        write_report(d / "with.json", out)
    assert out.read_text() == "old report" and sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]

    real_write = Path.write_text

    def half(self, text, *a, **k):  # the writer dies after half the page: the old file stays, no temp is left
        real_write(self, text[: len(text) // 2], *a, **k)
        raise OSError(28, "No space left on device")

    monkeypatch.undo()
    monkeypatch.setattr(Path, "write_text", half)
    with pytest.raises(OSError):
        write_report(d / "with.json", out)
    monkeypatch.undo()
    assert out.read_text() == "old report" and sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]


def test_output_suffix_and_output_is_input(saved):
    from htsr.errors import ConfigError
    from htsr.io import OutputError

    _, d = saved
    with pytest.raises(ConfigError, match="expected .html"):
        write_report(d / "with.json", d / "r.pdf")
    with pytest.raises(OutputError, match="inside the input directory"):
        write_report(d, d / "r.html")


def test_base_must_be_an_analysis(saved, tmp_path):
    _, d = saved
    tm = F.tinymem_dir(tmp_path / "tm")
    with pytest.raises(ReportError, match="--base takes a model or a saved analysis"):
        build_report(d / "with.json", base=tm)
    with pytest.raises(ReportError, match="--base applies to analyses only"):
        build_report(tm, base=d / "with.json")


def test_randomized_analysis_shows_traps_and_randomized_esd(torch_one_thread):
    from htsr.spectra.analysis import analyze
    from tests.conftest import heavy_tailed

    w = heavy_tailed(200, 100, seed=7)
    w[0, 0] = 400.0  # one huge entry: the shuffled matrix keeps a spike above its MP edge (a correlation trap)
    an = analyze({"trap.weight": w, "plain.weight": heavy_tailed(180, 90, seed=8)}, randomize=True)
    assert detect(an) == "analysis"
    secs = {s["id"]: s for s in build_report(an).sections}
    cards = {c["label"]: c["value"] for c in secs["summary"]["items"]}
    traps = sum(1 for r in an.rows if r["status"] == "success" and r.get("rand_num_spikes", 0) > 0)
    assert traps >= 1 and cards["correlation traps"] == traps
    assert "rand_hist" in secs["esd"]["layers"]["trap"] and "rand_ccdf" in secs["esd"]["layers"]["trap"]


def test_bundle_is_cached_and_a_missing_vl_convert_is_a_clear_error(tmp_path, monkeypatch):
    import sys

    from htsr.report import bundle

    monkeypatch.setenv("HTSR_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(bundle, "_memo", {})
    monkeypatch.setattr(bundle, "bundle_version", lambda: "test")
    monkeypatch.setattr(bundle, "vegalite_version", lambda: "latest")
    monkeypatch.setitem(sys.modules, "vl_convert", None)  # import fails
    with pytest.raises(ReportError, match=r"needs vl-convert-python .*pip install 'htsr\[report\]'"):
        bundle.javascript_bundle()
    cached = tmp_path / "report" / "vega-bundle-test-vllatest.js"
    cached.parent.mkdir(parents=True)
    cached.write_text("window.vegaEmbed = function () {};")  # a cached bundle needs no vl-convert
    assert bundle.javascript_bundle() == "window.vegaEmbed = function () {};"


def test_names_cannot_inject_markup(saved, tmp_path):
    from htsr.spectra.analysis import Analysis

    _, d = saved
    an = Analysis.load(d / "with.json")
    evil = "</script><script>alert(1)</script><!--&"
    old = an.rows[0]["name"]
    an.rows[0]["name"] = evil
    an.evals[evil] = an.evals.pop(old)
    out = tmp_path / "e.html"
    write_report(an, out)
    html = out.read_text()
    assert "alert(1)</script>" not in html and "<!--&" not in html
    data = _data(html)
    assert next(s for s in data["sections"] if s["id"] == "table")["rows"][0]["name"] == evil


def test_stored_chart_specs_are_the_altair_builders_output():
    """The analysis charts are stored as JSON (no altair import per report): they must equal what
    htsr.report.charts builds now, validated against the Vega-Lite schema (regenerate: python -m htsr.report.charts)."""
    from htsr.report import _specs, charts

    assert charts.build_all() == _specs.SPECS
    assert charts.vegalite_version() == _specs.VEGALITE_VERSION
