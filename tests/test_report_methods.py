"""htsr report on the methods' outputs, written by their own writers: the kind is detected, the numbers shown are
the files' numbers."""

from __future__ import annotations

import json

import pytest

from htsr.report import build_report, detect, write_report
from htsr.report.bundle import ReportError
from tests import report_fixtures as F


@pytest.fixture(autouse=True)
def _validate_specs(monkeypatch):
    from htsr.report import analysis

    monkeypatch.setattr(analysis, "VALIDATE", True)


def _sec(rep, sid):
    return next(s for s in rep.sections if s["id"] == sid)


def test_pruning_dir_and_file(tmp_path):
    d = F.pruning_dir(tmp_path / "pruned")
    assert detect(d) == "pruning" and detect(d / "htsr_pruning_report.json") == "pruning"
    rep = build_report(d)
    data = json.loads((d / "htsr_pruning_report.json").read_text())
    cards = {c["label"]: c for c in _sec(rep, "summary")["items"]}
    assert cards["target sparsity"]["value"] == 0.3 and cards["achieved sparsity"]["value"] == 0.3001
    assert cards["metric imputed"]["value"] == 1 and cards["perplexity"]["value"] == "not recorded"
    spars = _sec(rep, "sparsity")["spec"]["datasets"]["sparsity"]
    assert len(spars) == 2 * len(data["layers"])
    tab = _sec(rep, "table")["rows"]
    assert [r["target_sparsity"] for r in tab] == [r["target_sparsity"] for r in data["layers"]]
    assert len(_sec(rep, "metric")["spec"]["datasets"]["layers"]) == len(data["layers"])
    write_report(d / "htsr_pruning_report.json", tmp_path / "p.html")


def test_tempbalance_dir(tmp_path):
    d = F.tempbalance_dir(tmp_path / "tb")
    assert detect(d) == "tempbalance"
    rep = build_report(d)
    cards = {c["label"]: c["value"] for c in _sec(rep, "summary")["items"]}
    # four cells per arm; accuracies from the fixture's formula
    exp_tb = sum(0.92 + 0.05 * f + 0.001 * s for f in (0.5, 1.0) for s in (0, 1)) / 4
    assert cards["mean accuracy: tb"] == pytest.approx(exp_tb)
    assert cards["cells finished"] == "8 / 8"
    mult = _sec(rep, "multipliers")["spec"]["datasets"]["mult"]
    assert len(mult) == 9 and {m["unit"] for m in mult} == {"layer0", "layer1", "layer2"}
    curves = _sec(rep, "curves")["spec"]["datasets"]["curves"]
    assert {c["method"] for c in curves} == {"tb", "baseline"}
    assert {c["metric"] for c in curves} == {"train_loss", "test_acc"}
    assert len(_sec(rep, "table")["rows"]) == 8


def test_tempbalance_run_json(tmp_path):
    from htsr.io import write_json

    p = write_json(tmp_path / "cell.json", {"config": {"name": "digits"}, "metrics": {"test_acc": 0.9},
                                            "history": [{"epoch": 1, "train_loss": 0.5}],
                                            "tb_history": [{"step": 1, "unit": "fc", "multiplier": 1.1}],
                                            "tb_excluded": {}})
    assert detect(p) == "tempbalance-run"
    rep = build_report(p)
    assert _sec(rep, "summary")["items"] == [{"label": "test_acc", "value": 0.9}]
    assert {"multipliers", "curves", "config"} <= {s["id"] for s in rep.sections}


def test_tinymem_dir(tmp_path):
    d = F.tinymem_dir(tmp_path / "tm")
    assert detect(d) == "tinymem"
    rep = build_report(d)
    cards = {c["label"]: c for c in _sec(rep, "summary")["items"]}
    assert cards["methods"]["value"] == "3 / 4" and cards["failed methods"]["value"] == 1
    assert cards["lowest memorization"]["value"] == 2.0 and "balancedsubnet" in cards["lowest memorization"]["note"]
    pts = _sec(rep, "scatter")["spec"]["datasets"]["methods"]
    assert sorted(p["method"] for p in pts) == ["balancedsubnet", "dropout", "l1"]
    assert len(_sec(rep, "table")["rows"]) == 4


def test_mdtree_diagnosis_and_tree(tmp_path):
    p = F.mdtree_diagnosis(tmp_path / "diag.json")
    assert detect(p) == "mdtree-diagnosis"
    rep = build_report(p)
    from htsr.diagnosis.advice import ADVICE

    assert _sec(rep, "advice")["items"][0] == ADVICE[("temperature", "small")]
    assert {c["value"] for c in _sec(rep, "summary")["items"]} == {"small", "width"}
    t = F.mdtree_tree(tmp_path / "tree.json")
    assert detect(t) == "mdtree"
    rep = build_report(t)
    text = _sec(rep, "tree")["text"]
    for v in ("0.68", "-9.37", "6.38"):
        assert v in text
    assert [r["value"] for r in _sec(rep, "thresholds")["rows"]] == [0.68, -9.37, 6.38]


def test_method_bad_input(tmp_path):
    d = F.tinymem_dir(tmp_path / "tm")
    (d / "table.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ReportError, match="not a TinyMem comparison: no column"):
        build_report(d)
    tb = tmp_path / "tb"
    tb.mkdir()
    (tb / "results.csv").write_text("key,recipe\nx,digits\n")
    with pytest.raises(ReportError, match="not a TempBalance comparison"):
        build_report(tb)
    pr = F.pruning_dir(tmp_path / "pr")
    data = json.loads((pr / "htsr_pruning_report.json").read_text())
    data["layers"] = []
    (pr / "htsr_pruning_report.json").write_text(json.dumps(data))
    with pytest.raises(ReportError, match="lists no layer"):
        build_report(pr)
    with pytest.raises(ReportError, match="apply to models only"):
        build_report(F.mdtree_tree(tmp_path / "t.json"), preset="weightwatcher")
