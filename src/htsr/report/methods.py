"""Sections of the method outputs' reports, read from the files each command writes:

* ``htsr prune --out-dir DIR``: ``DIR/htsr_pruning_report.json`` (schema ``htsr.pruning/1``);
* ``htsr tempbalance compare --out-dir DIR``: ``DIR/results.csv`` and ``DIR/cells/<key>.json``; ``htsr tempbalance
  run -o cell.json``: config, metrics, history, tb_history;
* ``htsr tinymem compare --out-dir DIR``: ``DIR/table.csv`` and ``DIR/run.json``;
* ``htsr mdtree diagnose -o d.json``: features, predictions, advice, notes, trees; ``htsr mdtree fit -o tree.json``:
  a fitted tree (schema ``htsr.mdtree/1``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from htsr.report.bundle import ReportError
from htsr.report.digest import finite_or_none

PRUNING_FILE = "htsr_pruning_report.json"
PRUNING_SCHEMA = "htsr.pruning/1"
MDTREE_SCHEMA = "htsr.mdtree/1"
TEMPBALANCE_COLUMNS = ("recipe", "method", "fraction", "seed", "status")
TINYMEM_COLUMNS = ("method", "mem_after", "acc_after")


def _spec(chart: Any, datasets: dict[str, list]) -> dict:
    from htsr.report.analysis import finish

    return finish(chart, datasets)


def _read_json(p: Path, what: str) -> Any:
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReportError(f"{p}: cannot read {what} ({e})") from None


def _records(df: Any) -> list[dict]:
    from htsr.io import jsonable

    return jsonable(df.to_dict("records"))


def _table(sid: str, title: str, df: Any, caption: str | None = None, filter_column: str | None = None,
           first: tuple[str, ...] = ()) -> dict:
    from pandas.api.types import is_numeric_dtype

    cols = [c for c in first if c in df.columns] + [c for c in df.columns if c not in first]
    return {"type": "table", "id": sid, "title": title, "caption": caption or "Click a column to sort it; type to "
            "filter.", "rows": _records(df[cols]), "filter_column": filter_column if filter_column in cols else None,
            "columns": [{"key": str(c), "label": str(c), "text": not is_numeric_dtype(df[c]),
                         "wrap": not is_numeric_dtype(df[c])} for c in cols],
            "link": None}


def _kv(sid: str, title: str, d: dict) -> dict:
    items: list[list[Any]] = []
    for k, v in d.items():
        if isinstance(v, dict) and v and all(not isinstance(x, dict) for x in v.values()):
            items += [[f"{k}.{kk}", vv] for kk, vv in v.items()]
        else:
            items.append([str(k), v])
    return {"type": "kv", "id": sid, "title": title, "items": items}


# ----------------------------------------------------------------------------- pruning
def pruning(path: Path) -> tuple[list[dict], str]:
    """A pruning run: per-layer target and achieved sparsity against the allocation metric (alpha), settings."""
    import altair as alt
    import pandas as pd

    f = path / PRUNING_FILE if path.is_dir() else path
    data = _read_json(f, "a pruning report")
    schema = data.get("schema") if isinstance(data, dict) else None
    if schema != PRUNING_SCHEMA:
        raise ReportError(f"{f}: pruning report schema {schema!r} is not supported (expected {PRUNING_SCHEMA})")
    layers = data.get("layers")
    if not isinstance(layers, list) or not layers:
        raise ReportError(f"{f}: the pruning report lists no layer; nothing to report")
    df = pd.DataFrame(layers)
    missing = [c for c in ("name", "target_sparsity", "achieved_sparsity") if c not in df.columns]
    if missing:
        raise ReportError(f"{f}: pruning layers lack column(s) {', '.join(missing)}")
    df.insert(0, "idx", range(len(df)))
    if "shape" in df.columns:
        df["shape"] = df["shape"].map(lambda s: "x".join(map(str, s)) if isinstance(s, list) else s)
    settings = data.get("settings") or {}
    metric_name = str(settings.get("metric") or "metric")
    ppl = {k: v for src in (data, settings) for k, v in src.items() if "perplexity" in str(k).lower()}
    cards = [
        {"label": "layers pruned", "value": len(df)},
        {"label": "target sparsity", "value": data.get("target_sparsity"), "fmt": "pct"},
        {"label": "achieved sparsity", "value": data.get("achieved_sparsity"), "fmt": "pct",
         "note": "zero weights / weights of the pruned layers"},
        {"label": "pruner", "value": settings.get("pruner")},
        {"label": "allocation", "value": settings.get("allocation"),
         "note": f"metric {metric_name}" if settings.get("allocation") == "alpha" else None},
    ]
    imputed = data.get("imputed_metric_layers") or []
    if imputed:
        cards.append({"label": "metric imputed", "value": len(imputed), "level": "warn",
                      "note": "layers without a finite metric got the mean: " + ", ".join(map(str, imputed[:3]))})
    for k, v in ppl.items():
        cards.append({"label": k, "value": v})
    if not ppl:
        cards.append({"label": "perplexity", "value": "not recorded",
                      "note": "the pruning report holds none: measure it with `htsr perplexity OUT_DIR --text FILE`"})
    if finite_or_none(data.get("elapsed_s")) is not None:
        cards.append({"label": "time", "value": f"{float(data['elapsed_s']):.1f} s"})
    long = df.melt(id_vars=["idx", "name"], value_vars=["target_sparsity", "achieved_sparsity"], var_name="series",
                   value_name="sparsity")
    x = alt.X("idx:Q", title="layer (pruning order)", axis=alt.Axis(tickMinStep=1))
    tips = [alt.Tooltip("name:N", title="layer"), alt.Tooltip("series:N"), alt.Tooltip("sparsity:Q", format=".4f")]
    spars = alt.Chart(alt.Data(name="sparsity")).mark_line(point=True).encode(
        x=x, y=alt.Y("sparsity:Q", title="sparsity"), color=alt.Color("series:N", title=None,
                                                                      legend=alt.Legend(orient="top")),
        strokeDash=alt.StrokeDash("series:N", title=None, legend=None), tooltip=tips).properties(width=900, height=280)
    sections = [{"type": "cards", "id": "summary", "title": "Summary", "items": cards},
                {"type": "chart", "id": "sparsity", "title": "Sparsity per layer", "link": None,
                 "spec": _spec(spars, {"sparsity": _records(long)}),
                 "caption": "Target (the allocation) and achieved (zeros counted after pruning) per layer."}]
    if "metric" in df.columns and df["metric"].notna().any():
        sc = alt.Chart(alt.Data(name="layers")).mark_point(filled=True, size=50).encode(
            x=alt.X("metric:Q", title=metric_name, scale=alt.Scale(zero=False)),
            y=alt.Y("target_sparsity:Q", title="target sparsity", scale=alt.Scale(zero=False)),
            color=alt.Color("block:O", title="block") if "block" in df.columns else alt.value("#1f77b4"),
            tooltip=[alt.Tooltip("name:N", title="layer"), alt.Tooltip("metric:Q", format=".4g", title=metric_name),
                     alt.Tooltip("target_sparsity:Q", format=".4f"), alt.Tooltip("achieved_sparsity:Q",
                                                                                  format=".4f")],
        ).properties(width=520, height=320)
        sections.append({"type": "chart", "id": "metric", "title": f"Sparsity vs {metric_name}", "link": None,
                         "spec": _spec(sc, {"layers": _records(df)}),
                         "caption": "AlphaPruning gives layers with a larger alpha (less structure) more sparsity."})
    sections += [_table("table", "Per-layer table", df.drop(columns=["idx"]), first=("name",)),
                 _kv("settings", "Settings", settings)]
    return sections, f"{f} | {settings.get('model_dir', '')}"


# ----------------------------------------------------------------------------- TempBalance
def _history_long(hist: list[dict], method: str) -> list[dict]:
    out = []
    for h in hist or []:
        ep = h.get("epoch")
        for k, v in h.items():
            if k in ("epoch", "step", "time_s") or k.startswith("tb_") or finite_or_none(v) is None:
                continue
            out.append({"epoch": ep, "method": method, "metric": k, "value": float(v)})
    return out


def _curves_chart(rows: list[dict]) -> dict:
    import altair as alt

    ch = alt.Chart(alt.Data(name="curves")).mark_line(point=True).encode(
        x=alt.X("epoch:Q", title="epoch"), y=alt.Y("value:Q", title=None, scale=alt.Scale(zero=False)),
        color=alt.Color("method:N", title="arm", legend=alt.Legend(orient="top")),
        tooltip=["method:N", "metric:N", "epoch:Q", alt.Tooltip("value:Q", format=".4g")],
    ).properties(width=260, height=200).facet(facet=alt.Facet("metric:N", title=None), columns=3).resolve_scale(
        y="independent")
    return _spec(ch, {"curves": rows})


def _multiplier_chart(tb_history: list[dict]) -> dict:
    import altair as alt

    rows = [{k: r.get(k) for k in ("step", "unit", "multiplier", "value", "lr", "metric")} for r in tb_history]
    ch = alt.Chart(alt.Data(name="mult")).mark_line(interpolate="step-after", strokeWidth=1.2).encode(
        x=alt.X("step:Q", title="training step"), y=alt.Y("multiplier:Q", title="learning-rate multiplier"),
        color=alt.Color("unit:N", title="layer", legend=alt.Legend(orient="right", symbolLimit=40)),
        tooltip=[alt.Tooltip("unit:N", title="layer"), "step:Q", alt.Tooltip("multiplier:Q", format=".4g"),
                 alt.Tooltip("value:Q", format=".4g", title="metric"), alt.Tooltip("lr:Q", format=".3g")],
    ).properties(width=820, height=300)
    return _spec(ch, {"mult": rows})


def tempbalance(path: Path) -> tuple[list[dict], str]:
    """A TempBalance comparison directory: score vs data fraction per arm, the multipliers of one TB run over
    steps, the training curves of both arms (same fraction and seed), the cells."""
    import altair as alt

    from htsr.errors import ConfigError
    from htsr.experiments import ResultStore

    try:
        store = ResultStore(path)
    except ConfigError as e:
        raise ReportError(str(e)) from None
    table = store.table()
    if table.empty:
        raise ReportError(f"{path}/results.csv holds no rows; nothing to report")
    missing = [c for c in TEMPBALANCE_COLUMNS if c not in table.columns]
    if missing:
        raise ReportError(f"{path}/results.csv is not a TempBalance comparison: no column(s) {', '.join(missing)}")
    from htsr.tempbalance.recipes import RECIPES

    ok = table[table["status"] == "ok"]
    if ok.empty:
        raise ReportError(f"{path}/results.csv holds no finished cell (every row failed); nothing to report")
    recipe = str(ok["recipe"].iloc[0])
    cls = RECIPES.get(recipe)
    score = cls.score if cls is not None else None
    if score is None or score not in ok.columns:
        raise ReportError(f"{path}/results.csv: unknown recipe {recipe!r} or no score column")
    better = "higher" if cls.higher_is_better else "lower"
    cards = [{"label": "recipe", "value": recipe}, {"label": "cells finished", "value": f"{len(ok)} / {len(table)}"},
             {"label": "score", "value": score, "note": f"{better} is better"}]
    for m in ("baseline", "tb"):
        v = ok[ok["method"] == m][score]
        if len(v):
            cards.append({"label": f"mean {score}: {m}", "value": float(v.mean()), "note": f"over {len(v)} cell(s)"})
    if len(table) > len(ok):
        cards.append({"label": "failed cells", "value": len(table) - len(ok), "level": "bad"})
    pts = alt.Chart(alt.Data(name="cells"))
    enc = dict(x=alt.X("fraction:Q", title="training-data fraction", scale=alt.Scale(type="log")),
               color=alt.Color("method:N", title="arm", legend=alt.Legend(orient="top")))
    ch = alt.layer(
        pts.mark_line(point=True).encode(y=alt.Y(f"mean({score}):Q", title=f"{score} (mean over seeds)",
                                                 scale=alt.Scale(zero=False)),
                                         tooltip=["method:N", "fraction:Q", alt.Tooltip(f"mean({score}):Q",
                                                                                        format=".4g"),
                                                  alt.Tooltip(f"count({score}):Q", title="seeds")], **enc),
        pts.mark_errorbar(extent="stdev").encode(y=alt.Y(f"{score}:Q"), **enc),
    ).properties(width=620, height=300)
    cols = [c for c in ("method", "fraction", "seed", score, "status") if c in ok.columns]
    sections = [{"type": "cards", "id": "summary", "title": "Summary", "items": cards},
                {"type": "chart", "id": "score", "title": f"{score} vs data fraction", "link": None,
                 "spec": _spec(ch, {"cells": _records(ok[cols])}),
                 "caption": "Mean over seeds with +- one standard deviation (needs two or more seeds)."}]
    tb_rows = ok[ok["method"] == "tb"].sort_values(["fraction", "seed"], ascending=[False, True])
    if len(tb_rows) and "key" in tb_rows.columns:
        r0 = tb_rows.iloc[0]
        try:
            det = store.details(r0["key"])
        except (ConfigError, json.JSONDecodeError, UnicodeDecodeError, OSError):
            det = {}
        label = f"fraction {r0['fraction']:g}, seed {int(r0['seed'])}"
        if det.get("tb_history"):
            sections.append({"type": "chart", "id": "multipliers", "title": f"Learning-rate multipliers ({label})",
                             "link": None, "spec": _multiplier_chart(det["tb_history"]),
                             "caption": "TempBalance's per-layer multiplier of the base learning rate at each "
                                        "update (hover a line for the layer and its alpha)."})
        curves = _history_long(det.get("history") or [], "tb")
        base = ok[(ok["method"] == "baseline") & (ok["fraction"] == r0["fraction"]) & (ok["seed"] == r0["seed"])]
        if len(base) and "key" in base.columns:
            try:
                curves += _history_long(store.details(base.iloc[0]["key"]).get("history") or [], "baseline")
            except (ConfigError, json.JSONDecodeError, UnicodeDecodeError, OSError):
                pass
        if curves:
            sections.append({"type": "chart", "id": "curves", "title": f"Training curves ({label})", "link": None,
                             "spec": _curves_chart(curves), "caption": "Per-epoch history of each arm."})
    sections.append(_table("table", "Cells", table.drop(columns=[c for c in ("key",) if c in table.columns]),
                           filter_column="method", first=("recipe", "method", "fraction", "seed", score)))
    return sections, str(path)


def tempbalance_run(path: Path) -> tuple[list[dict], str]:
    """One ``htsr tempbalance run -o`` file: metrics, multipliers over steps, training curve, config."""
    data = _read_json(path, "a TempBalance run")
    metrics = data.get("metrics") or {}
    cards = [{"label": k, "value": v} for k, v in metrics.items() if isinstance(v, int | float | str)][:12]
    sections: list[dict] = [{"type": "cards", "id": "summary", "title": "Metrics", "items": cards}]
    if data.get("tb_history"):
        sections.append({"type": "chart", "id": "multipliers", "title": "Learning-rate multipliers", "link": None,
                         "spec": _multiplier_chart(data["tb_history"]),
                         "caption": "TempBalance's per-layer multiplier of the base learning rate at each update."})
    method = "tb" if data.get("tb_history") else "baseline"
    curves = _history_long(data.get("history") or [], method)
    if curves:
        sections.append({"type": "chart", "id": "curves", "title": "Training curve", "link": None,
                         "spec": _curves_chart(curves), "caption": "Per-epoch history of this run."})
    if data.get("tb_excluded"):
        sections.append(_kv("excluded", "Layers not tuned", data["tb_excluded"]))
    sections.append(_kv("config", "Config", data.get("config") or {}))
    return sections, str(path)


# ----------------------------------------------------------------------------- TinyMem
def tinymem(path: Path) -> tuple[list[dict], str]:
    """A TinyMem comparison: memorization vs accuracy after each mitigation, the table, the run settings."""
    import altair as alt
    import pandas as pd

    try:
        table = pd.read_csv(path / "table.csv")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ReportError(f"{path}/table.csv is not a TinyMem table ({type(e).__name__})") from None
    missing = [c for c in TINYMEM_COLUMNS if c not in table.columns]
    if missing:
        raise ReportError(f"{path}/table.csv is not a TinyMem comparison: no column(s) {', '.join(missing)}")
    if table.empty:
        raise ReportError(f"{path}/table.csv holds no method; nothing to report")
    run = _read_json(path / "run.json", "a TinyMem run.json")
    done = table.dropna(subset=["mem_after", "acc_after"])
    cards = [{"label": "methods", "value": f"{len(done)} / {len(table)}", "note": "finished / run"}]
    for k, lab in (("mem_before", "memorized before (%)"), ("acc_before", "accuracy before (%)")):
        if k in table.columns and table[k].notna().any():
            cards.append({"label": lab, "value": float(table[k].dropna().iloc[0])})
    if len(done):
        best = done.sort_values(["mem_after", "acc_after"], ascending=[True, False]).iloc[0]
        cards.append({"label": "lowest memorization", "value": float(best["mem_after"]),
                      "note": f"{best['method']}, accuracy {best['acc_after']:.2f}"})
    if len(done) < len(table):
        cards.append({"label": "failed methods", "value": len(table) - len(done), "level": "bad"})
    if finite_or_none(run.get("total_time_s")) is not None:
        cards.append({"label": "time", "value": f"{float(run['total_time_s']):.1f} s"})
    show = table.drop(columns=[c for c in ("settings",) if c in table.columns])
    tips = [alt.Tooltip(f"{c}:Q", format=".2f") if c not in ("method", "family") else f"{c}:N"
            for c in ("method", "family", "mem_before", "mem_after", "acc_before", "acc_after") if c in show.columns]
    sc = alt.Chart(alt.Data(name="methods")).mark_point(filled=True, size=70).encode(
        x=alt.X("mem_after:Q", title="% memorized after", scale=alt.Scale(padding=24)),
        y=alt.Y("acc_after:Q", title="accuracy after (%)", scale=alt.Scale(zero=False, padding=24)),
        color=alt.Color("family:N", title="family") if "family" in show.columns else alt.value("#1f77b4"),
        tooltip=tips)
    labels = alt.Chart(alt.Data(name="methods")).mark_text(align="left", dx=6, fontSize=10).encode(
        x="mem_after:Q", y="acc_after:Q", text="method:N")
    ch = alt.layer(sc, labels).properties(width=640, height=380)
    sections = [{"type": "cards", "id": "summary", "title": "Summary", "items": cards},
                {"type": "chart", "id": "scatter", "title": "Memorization vs accuracy after mitigation", "link": None,
                 "spec": _spec(ch, {"methods": _records(done.drop(columns=[c for c in ("settings",)
                                                                           if c in done.columns]))}),
                 "caption": "Lower left is less memorization; higher is better accuracy. Hover a point."},
                _table("table", "Methods", show, filter_column="family", first=("method", "family")),
                _kv("run", "Run settings", {k: v for k, v in run.items() if k != "settings"})]
    return sections, str(path)


# ----------------------------------------------------------------------------- MD tree
def mdtree_diagnosis(path: Path) -> tuple[list[dict], str]:
    """An MD-tree diagnosis: the predicted failure source per task, the advice, the measured features."""
    import pandas as pd

    d = _read_json(path, "an MD-tree diagnosis")
    preds = d.get("predictions") or {}
    if not isinstance(preds, dict) or not isinstance(d.get("advice"), list):
        raise ReportError(f"{path}: malformed diagnosis (predictions must be an object, advice a list)")
    cards = [{"label": f"{task} tree says", "value": label} for task, label in preds.items()]
    sections: list[dict] = [
        {"type": "cards", "id": "summary", "title": "Diagnosis", "items": cards},
        {"type": "list", "id": "advice", "title": "Advice", "cls": "advice",
         "items": [str(a) for a in d["advice"]] or ["(no advice: no task was diagnosed)"]},
        _kv("features", "Measured features", d.get("features") or {}),
    ]
    trees = d.get("trees") or {}
    if trees:
        df = pd.DataFrame([{"task": k, **(v if isinstance(v, dict) else {"value": v})} for k, v in trees.items()])
        sections.append(_table("trees", "Trees", df, caption="The tree fitted per task on the population: training "
                               "rows and training accuracy (constant: every configuration had one label). The "
                               "thresholds are in the tree JSON of `htsr mdtree fit` (report it too).",
                               first=("task",)))
    if d.get("notes"):
        sections.append({"type": "list", "id": "notes", "title": "Notes", "items": [str(n) for n in d["notes"]]})
    return sections, str(path)


def mdtree(path: Path) -> tuple[list[dict], str]:
    """A fitted MD tree: its structure with thresholds (the decision path), thresholds, parameters."""
    import pandas as pd

    from htsr.diagnosis.errors import DiagnosisError
    from htsr.diagnosis.mdtree import load_tree

    d = _read_json(path, "an MD tree")
    if d.get("schema") != MDTREE_SCHEMA:
        raise ReportError(f"{path}: MD tree schema {d.get('schema')!r} is not supported (expected {MDTREE_SCHEMA})")
    try:
        est = load_tree(d)
    except DiagnosisError as e:
        raise ReportError(f"{path}: {e}") from None
    th = pd.DataFrame([{"threshold": k, "value": v} for k, v in (d.get("thresholds") or {}).items()])
    cards = [{"label": "estimator", "value": d.get("estimator")},
             {"label": "classes", "value": ", ".join(map(str, d.get("classes") or []))},
             {"label": "training accuracy", "value": d.get("train_accuracy"), "fmt": "pct"}]
    sections = [{"type": "cards", "id": "summary", "title": "MD tree", "items": cards},
                {"type": "pre", "id": "tree", "title": "Decision path with thresholds", "text": est.export_text()},
                _table("thresholds", "Thresholds", th),
                _kv("params", "Parameters", {**(d.get("params") or {}), "features": d.get("features")})]
    return sections, str(path)


BUILDERS: dict[str, Callable[[Path], tuple[list[dict], str]]] = {
    "pruning": pruning, "tempbalance": tempbalance, "tempbalance-run": tempbalance_run, "tinymem": tinymem,
    "mdtree-diagnosis": mdtree_diagnosis, "mdtree": mdtree,
}
