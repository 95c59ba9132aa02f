"""Issue 15 on `htsr mdtree`: no lost population, no overwritten input, strict model files, damaged CSVs.

Every case ends in exit 2 with one line `htsr: error: ...` naming what was wrong, and leaves the inputs as they were.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from htsr.cli.main import main
from htsr.data.reference import mdtree_population
from htsr.diagnosis.config import GRIDS
from htsr.diagnosis.mdtree import MDTreeTemperature
from htsr.io import MARKER


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("htsr: error: "), err
    return lines[0]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- population folders

@pytest.fixture
def population_dir(tmp_path):
    """A population folder of the tiny grid holding measured rows (written as htsr writes them; training them would
    take seconds and is tested in test_mdtree_own_population.py)."""
    from htsr.diagnosis.own_population import build_population
    from htsr.experiments.store import cell_key

    out = tmp_path / "pop"
    build_population("tiny", out, max_new=0)  # the folder as htsr creates it: config.json and the marker
    tiny = GRIDS.get("tiny")
    rid = tiny.recipe_id()
    rows = "key,width,bs,data,recipe_id,status,test_acc\n" + "".join(
        f"{cell_key({'width': w, 'bs': b, 'data': 0.25, 'recipe_id': rid})},{w},{b},0.25,{rid},ok,{50 + w + b}\n"
        for w in tiny.widths for b in tiny.batch_sizes)
    (out / "results.csv").write_text(rows)
    (out / "population.csv").write_text(rows)
    return out


@pytest.mark.parametrize("args, expect", [
    (["--grid", "small"], "widths [1, 4] there, [1, 2, 4] here"),
    (["--grid", "tiny", "--set", "epochs=3"], "epochs 2 there, 3 here"),
    (["--set", "widths=1,2"], "another configuration"),  # --set without --grid starts from `small`
], ids=["other-grid", "other-recipe", "set-only"])
def test_population_of_another_configuration_is_refused(population_dir, capsys, args, expect):
    before = _snapshot(population_dir)
    rc = main(["mdtree", "population", "--out-dir", str(population_dir), *args, "--max-configs", "0"])
    line = _one_line_error(capsys)
    assert rc == 2 and expect in line and "another configuration" in line
    assert "rerun without --grid/--set to resume it" in line and "--overwrite" in line
    assert _snapshot(population_dir) == before  # config.json, results.csv, population.csv: all kept


def test_population_resumes_the_same_configuration_and_overwrite_discards(population_dir, capsys):
    before = _snapshot(population_dir)
    for args in ([], ["--grid", "tiny"], ["--grid", "tiny", "--set", "epochs=2"]):
        assert main(["mdtree", "population", "--out-dir", str(population_dir), *args, "--json"]) == 0
        res = json.loads(capsys.readouterr().out)
        assert res["finished"] == 4 and res["resumed"] == 4 and res["trained"] == 0
    assert json.loads((population_dir / "config.json").read_text()) == json.loads(before["config.json"])
    # --overwrite replaces a previous htsr output (it has the marker) with a new, empty population
    assert (population_dir / MARKER).is_file()
    assert main(["mdtree", "population", "--out-dir", str(population_dir), "--grid", "tiny", "--set", "epochs=3",
                 "--overwrite", "--max-configs", "0"]) == 0
    assert json.loads((population_dir / "config.json").read_text())["epochs"] == 3
    assert not (population_dir / "results.csv").exists()


def test_population_never_takes_over_a_foreign_folder(tmp_path, capsys):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    for extra in ([], ["--overwrite"]):
        rc = main(["mdtree", "population", "--out-dir", str(foreign), "--grid", "tiny", "--max-configs", "0", *extra])
        assert rc == 2 and "holds no population" in _one_line_error(capsys)
    assert _snapshot(foreign) == {"notes.txt": b"keep me"}
    bad = tmp_path / "badcfg"
    bad.mkdir()
    (bad / "config.json").write_text('{"widths": [1], "epoch": 3}')
    assert main(["mdtree", "population", "--out-dir", str(bad)]) == 2
    line = _one_line_error(capsys)
    assert str(bad / "config.json") in line and "'epoch'" in line
    assert main(["mdtree", "diagnose", "--population", str(bad), "a", "b"]) == 2
    assert str(bad / "config.json") in _one_line_error(capsys)


@pytest.mark.parametrize("results, expect", [
    ("key,width\nk0,", "missing column(s)"),
    ('key,"width\n', "is not a results table written by htsr"),
], ids=["missing-columns", "malformed"])
def test_population_with_damaged_results_is_one_line(population_dir, capsys, results, expect):
    (population_dir / "results.csv").write_text(results)
    rc = main(["mdtree", "diagnose", "--population", str(population_dir), "a", "b"])
    line = _one_line_error(capsys)
    assert rc == 2 and str(population_dir / "results.csv") in line and expect in line


# ----------------------------------------------------------------------------- inputs never overwritten

@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("mdtree")
    pop = mdtree_population("noise").head(300)
    raw = d / "pop.csv"
    pop.to_csv(raw, index=False)
    model = d / "m.json"
    model.write_text(json.dumps(MDTreeTemperature.from_thresholds([0.68, -9.37, 6.38]).to_dict()))
    return d, raw, model, pop


@pytest.mark.parametrize("cmd", ["label", "predict", "predict-dotted", "fit"])
def test_output_equal_to_an_input_is_refused(files, capsys, cmd):
    d, raw, model, _ = files
    before = {raw: raw.read_bytes(), model: model.read_bytes()}
    args = {"label": ["label", str(raw), "-o", str(raw)],
            "predict": ["predict", str(model), str(raw), "--out", str(raw)],
            "predict-dotted": ["predict", str(model), str(raw), "-o", str(d / "sub" / ".." / "pop.csv")],
            "fit": ["fit", str(d / "m.json"), "--out", str(model)]}[cmd]
    assert main(["mdtree", *args]) == 2
    line = _one_line_error(capsys)
    assert "is the input" in line
    assert {p: p.read_bytes() for p in before} == before


# ----------------------------------------------------------------------------- model files of predict

def _tree(**change):
    d = MDTreeTemperature.from_thresholds([0.68, -9.37, 6.38]).to_dict()
    for k, v in change.items():
        if v is None:
            d.pop(k)
        else:
            d[k] = v
    return d


@pytest.mark.parametrize("content, expect", [
    (_tree(extra_key=1), "unknown MD tree key(s) 'extra_key'"),
    (_tree(thresholds=None), "no 'thresholds'"),
    (_tree(thresholds={"error": 0.5}), "missing ['connectivity', 'sharpness']"),
    (_tree(thresholds={"error": 0.5, "connectivity": -9, "sharpness": 6, "depth": 1}), "unknown ['depth']"),
    (_tree(thresholds="0.5"), "'thresholds' must be an object"),
    (_tree(thresholds={"error": 0.5, "connectivity": -9, "sharpness": 60}), "outside its bounds [4.0, 9.0]"),
    (_tree(params={"max_depth": 4}), "unknown MDTreeTemperature parameter(s) 'max_depth'"),
    (_tree(params={"xatol": -1}), "xatol must be a finite number"),
    (_tree(params=[1]), "'params' must be an object"),
    (_tree(classes=["a", "b"]), "recorded classes"),
    (_tree(features=["x", "y", "z"]), "recorded features"),
    (_tree(train_accuracy=5), "train_accuracy must be a number in [0, 1]"),
    (_tree(estimator="MDTreeDepth"), "unknown MD tree estimator 'MDTreeDepth'"),
    (_tree(schema="other/1"), "not an MD tree description"),
    ([1, 2], "not an MD tree description"),
    ("{not json", "not a JSON model file"),
], ids=["unknown-key", "no-thresholds", "missing-threshold", "unknown-threshold", "thresholds-string",
        "out-of-bounds", "unknown-param", "bad-xatol", "params-list", "classes", "features", "accuracy",
        "estimator", "schema", "list", "not-json"])
def test_predict_with_a_bad_model_file(files, tmp_path, capsys, content, expect):
    _, raw, _, _ = files
    m = tmp_path / "model.json"
    m.write_text(content if isinstance(content, str) else json.dumps(content))
    assert main(["mdtree", "predict", str(m), str(raw)]) == 2
    line = _one_line_error(capsys)
    assert str(m) in line and expect in line


def test_a_good_model_file_predicts_with_its_own_thresholds(files, tmp_path, capsys):
    """The control for the table above: the same file, valid, predicts with its thresholds (not the defaults)."""
    _, raw, model, pop = files
    assert main(["mdtree", "predict", str(model), str(raw), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    e, m, h = (pop[c].to_numpy() for c in ("train_error", "mode_connectivity_peak", "hessian_t"))
    # the paper's rule written out with the published thresholds (0.68, -9.37, 6.38)
    rule = ["small" if a <= 0.68 else (("large" if c <= 6.38 else "small") if b <= -9.37 else "large")
            for a, b, c in zip(e, m, h, strict=True)]
    assert res["predicted"] == {k: rule.count(k) for k in sorted(set(rule))}


# ----------------------------------------------------------------------------- damaged population CSVs

def _damaged(pop, tmp_path, kind: str) -> Path:
    p = tmp_path / f"{kind}.csv"
    text = pop.to_csv(index=False)
    if kind == "truncated":
        cut = text.rstrip("\n").rfind("\n") + 40  # inside the last row
        p.write_text(text[:cut])
    elif kind == "header-only":
        p.write_text(text.splitlines()[0] + "\n")
    elif kind == "empty":
        p.write_text("")
    elif kind == "binary":
        p.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe" * 20)
    elif kind == "missing-column":
        pop.drop(columns=["hessian_t", "bs"]).to_csv(p, index=False)
    elif kind == "text-in-numbers":
        bad = pop.copy()
        for c in ("train_error", "bs"):
            bad[c] = bad[c].astype(object)
            bad.loc[bad.index[3], c] = "abc"
        bad.to_csv(p, index=False)
    elif kind == "ragged":
        lines = text.splitlines()
        lines[10] += ",1,2"
        p.write_text("\n".join(lines) + "\n")
    return p


@pytest.mark.parametrize("kind, expect", [
    ("truncated", "fields, the header"),
    ("header-only", "no rows"),
    ("empty", "empty file"),
    ("binary", "not UTF-8"),
    ("missing-column", "missing column(s)"),
    ("text-in-numbers", "NaN/infinite/non-numeric value(s) (rows [3])"),
    ("ragged", "line 11 has"),
])
@pytest.mark.parametrize("cmd", ["label", "predict", "fit"])
def test_damaged_population_csv_is_one_line_naming_the_file(files, tmp_path, capsys, kind, expect, cmd):
    _, _, model, pop = files
    p = _damaged(pop, tmp_path, kind)
    if kind == "truncated":
        expect = f"has {p.read_text().splitlines()[-1].count(',') + 1} fields, the header {len(pop.columns)}"
    args = {"label": ["label", str(p), "-o", str(tmp_path / "out.csv")],
            "predict": ["predict", str(model), str(p)],
            "fit": ["fit", str(p), "-o", str(tmp_path / "out.json")]}[cmd]
    assert main(["mdtree", *args]) == 2
    line = _one_line_error(capsys)
    assert str(p) in line and expect in line
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "out.json").exists()
