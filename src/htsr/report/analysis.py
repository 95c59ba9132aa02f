"""The report of an :class:`~htsr.spectra.analysis.Analysis` (and of two, side by side): the sections that
:mod:`htsr.report.page` draws."""

from __future__ import annotations

import json
from collections import Counter
from typing import TYPE_CHECKING, Any

from htsr.report.bundle import ReportError
from htsr.report.digest import esd_digest, finite_or_none
from htsr.spectra.display import ALPHA_BAND

if TYPE_CHECKING:
    from htsr.spectra.analysis import Analysis

#: Table columns of an analysis report, in order (a column is shown when some row has it).
TABLE_COLUMNS = (
    ("name", "layer", "text"), ("kind", "kind", "text"), ("shape", "shape", "text"), ("status", "status", "text"),
    ("alpha", "alpha", None), ("xmin", "xmin", None), ("D", "D", None), ("n_tail", "n_tail", "int"),
    ("alpha_hat", "alpha_hat", None), ("stable_rank", "stable rank", None),
    ("log_spectral_norm", "log10 spectral norm", None), ("num_evals", "eigenvalues", "int"),
    ("rand_num_spikes", "randomized spikes", "int"), ("reason", "reason", "text"),
)
TOOLTIP = ("name", "alpha", "xmin", "D", "n_tail", "alpha_hat")
#: Validate every chart against the Vega-Lite schema when it is built (tests turn it on; off it saves ~0.2 s).
VALIDATE = False
#: y-axis cap of the alpha chart: larger exponents are drawn at the cap (the table has the value).
ALPHA_CAP = 20.0

HOW_TO_READ = [
    "Each weight matrix has an empirical spectral density (ESD): the histogram of the eigenvalues lambda of "
    "W^T W. Heavy-Tailed Self-Regularization fits a power law p(lambda) ~ lambda^-alpha to the largest "
    "eigenvalues (those above xmin); alpha is that exponent.",
    f"Smaller alpha means a heavier tail, which in this theory means more correlation learned by the layer. Values "
    f"between {ALPHA_BAND[0]:g} and {ALPHA_BAND[1]:g} (the shaded band) are the usual range of well-trained "
    f"layers; alpha above {ALPHA_BAND[1]:g} suggests an under-trained layer (little structure beyond noise); alpha "
    f"below {ALPHA_BAND[0]:g} can mean an over-fitted or over-regularised layer. These are rules of thumb from "
    "published studies, not guarantees: compare layers of one model, or models of one family.",
    "D is the Kolmogorov-Smirnov distance between the fitted power law and the tail (smaller is a better fit); "
    "n_tail is the number of eigenvalues in the fitted tail. A fit with few tail eigenvalues is uncertain.",
    "alpha_hat is alpha times log10 of the largest eigenvalue (a size-weighted exponent that has been used to "
    "compare models without data); stable rank is the sum of eigenvalues divided by the largest.",
    "A layer is 'failed' when no power law could be fitted (the reason says why) and 'skipped' when it was not "
    "analysed (too few eigenvalues, an excluded kind). Randomized spikes (with --randomize) count eigenvalues of "
    "the shuffled matrix above its Marchenko-Pastur edge: a spike there is a 'correlation trap', unusually large "
    "single weights rather than learned structure.",
    "Click a point of the alpha chart or a row of the table to see that layer's ESD: the density histogram in "
    "log-log axes (left) and the fraction of eigenvalues at least lambda (right), with the fitted power law (red) "
    "from xmin (green). A straight tail that follows the red line is a good fit.",
]


def finish(chart: Any, datasets: dict[str, list]) -> dict:
    """An altair chart as a Vega-Lite spec dict with its named ``datasets`` attached (not validated row by row:
    fast), without the ``$schema`` URL (a report holds no URL)."""
    spec = chart.to_dict(validate=VALIDATE)
    spec.pop("$schema", None)
    spec["datasets"] = datasets
    return spec


def _reasons(rows: list[dict], status: str, top: int = 3) -> str:
    c = Counter(str(r.get("reason") or "no reason given") for r in rows if r.get("status") == status)
    parts = [f"{why} ({n})" for why, n in c.most_common(top)]
    if len(c) > top:
        parts.append(f"{len(c) - top} other reason(s)")
    return "; ".join(parts)


def check_analysis(an: Analysis, what: str) -> None:
    """Raise when the analysis has nothing to report: no row, or no fitted layer (with the reasons)."""
    from htsr.errors import MeasurementError

    if not an.rows:
        raise ReportError(f"{what}: the analysis holds no layer (no weight matrix was found); nothing to report")
    if not any(r.get("status") == "success" for r in an.rows):
        why = "; ".join(f"{s}: {_reasons(an.rows, s)}" for s in ("failed", "skipped", "error")
                        if any(r.get("status") == s for r in an.rows))
        raise MeasurementError(f"{what}: no layer of {len(an.rows)} has a fitted power law ({why}); nothing to "
                               "report")


def summary_cards(an: Analysis, label: str = "") -> list[dict]:
    rows = an.rows
    s = an.summary()
    ok = [r for r in rows if r.get("status") == "success"]
    alphas = [a for a in (finite_or_none(r.get("alpha")) for r in ok) if a is not None]
    low = sum(a < ALPHA_BAND[0] for a in alphas)
    high = sum(a > ALPHA_BAND[1] for a in alphas)
    pre = f"{label} " if label else ""
    cards: list[dict] = [
        {"label": f"{pre}layers fitted", "value": f"{s['n_success']} / {s['n_rows']}"},
    ]
    for st, lvl in (("failed", "warn"), ("skipped", None), ("error", "bad")):
        n = s[f"n_{st}"]
        if n:
            cards.append({"label": f"{pre}{st}", "value": n, "level": lvl, "note": _reasons(rows, st)})
    cards.append({"label": f"{pre}mean alpha", "value": s.get("alpha"), "note": "over fitted layers"})
    if "alpha_hat" in s:
        cards.append({"label": f"{pre}mean alpha_hat", "value": s.get("alpha_hat")})
    cards.append({"label": f"{pre}outside {ALPHA_BAND[0]:g}-{ALPHA_BAND[1]:g}", "value": low + high,
                  "level": "warn" if low + high else None,
                  "note": f"{low} below {ALPHA_BAND[0]:g}, {high} above {ALPHA_BAND[1]:g}"})
    if any("rand_num_spikes" in r for r in rows):
        traps = [r for r in ok if (finite_or_none(r.get("rand_num_spikes")) or 0) > 0]
        cards.append({"label": f"{pre}correlation traps", "value": len(traps), "level": "warn" if traps else None,
                      "note": "layers whose randomized ESD has spikes above its MP edge"})
    return cards


def layer_records(an: Analysis) -> list[dict]:
    """One record per row: the table's columns plus the chart's index, band and capped alpha."""
    out = []
    for i, r in enumerate(an.rows):
        rec = {k: r.get(k) for k, _, _ in TABLE_COLUMNS if k in r}
        rec["name"] = str(r["name"])
        rec["idx"] = i
        a = finite_or_none(r.get("alpha")) if r.get("status") == "success" else None
        rec["alpha"] = a
        rec["alpha_shown"] = None if a is None else min(a, ALPHA_CAP)
        rec["band"] = None if a is None else ("in band" if ALPHA_BAND[0] <= a <= ALPHA_BAND[1] else "outside band")
        out.append(rec)
    return out


def _static(name: str, datasets: dict[str, list]) -> dict:
    """A fresh copy of a stored chart spec (:mod:`htsr.report._specs`, built by :mod:`htsr.report.charts` with
    altair and tested equal) with its named ``datasets`` attached."""
    from htsr.report._specs import SPECS

    out = json.loads(json.dumps(SPECS[name]))
    out["datasets"] = datasets
    return out


def _alpha_chart(records: list[dict], *, color: str = "band") -> dict:
    """alpha by layer (``color``: ``band`` in/outside 2-6, or ``model`` for a comparison)."""
    return _static(f"alpha_{color}", {"layers": records})


def _delta_chart(records: list[dict]) -> dict:
    return _static("delta", {"delta": records})


def esd_spec() -> dict:
    """The ESD viewer: density histogram and complementary CDF in log-log, with the fit and xmin (data ``esd``)."""
    return _static("esd", {"esd": []})


def _layer_info(r: dict) -> str:
    def g(k: str, spec: str = ".4g") -> str:
        v = finite_or_none(r.get(k))
        return "n/a" if v is None else format(v, spec)

    if r.get("status") == "success":
        return (f"alpha = {g('alpha')}, xmin = {g('xmin')}, D = {g('D')}, n_tail = {g('n_tail', '.0f')}, "
                f"alpha_hat = {g('alpha_hat')}, shape {r.get('shape', '?')}")
    return f"{r.get('status')}: {r.get('reason') or 'no reason given'}"


def esd_section(an: Analysis, sid: str = "esd", title: str = "ESD of one layer") -> dict:
    """The ESD viewer with the digest of every analysed layer that has eigenvalues."""
    layers: dict[str, dict] = {}
    meta: dict[str, dict] = {}
    for r in an.rows:
        name = str(r["name"])
        meta[name] = {"info": _layer_info(r)}
        if name in an.evals:
            layers[name] = esd_digest(an.evals[name], r, an.randomized_evals.get(name))
    ok = [str(r["name"]) for r in an.rows if r.get("status") == "success" and str(r["name"]) in layers]
    initial = ok[0] if ok else (next(iter(layers)) if layers else None)
    caption = ("Click a point of the alpha chart or a row of the table to show that layer."
               if layers else "This analysis was saved without eigenvalues: the chart stays empty. Re-run "
                              "`htsr report` on the model, or save the analysis with "
                              "Analysis.save(path, include_evals=True).")
    return {"type": "esd", "id": sid, "title": title, "caption": caption, "spec": esd_spec(), "layers": layers,
            "meta": meta, "initial": initial,
            "missing": "no eigenvalues stored for this layer (saved without them, or not analysed)"}


def _metadata_items(meta: dict) -> list[list[Any]]:
    items: list[list[Any]] = []
    for k, v in meta.items():
        if isinstance(v, dict):
            items += [[f"{k}.{kk}", vv] for kk, vv in v.items()]
        else:
            items.append([k, v])
    return items


def table_section(records: list[dict], sid: str = "table", link: str | None = "esd",
                  title: str = "Per-layer table") -> dict:
    present = {k for r in records for k in r}
    cols = [{"key": k, "label": lab, "fmt": f if f != "text" else None, "text": f == "text",
             "wrap": k in ("name", "reason")} for k, lab, f in TABLE_COLUMNS if k in present]
    return {"type": "table", "id": sid, "title": title, "columns": cols, "rows": records, "link": link,
            "filter_column": "status", "caption": "Click a column to sort it (again to reverse); type to filter."}


def analysis_sections(an: Analysis, what: str) -> list[dict]:
    """Sections of the report of one analysis."""
    check_analysis(an, what)
    records = layer_records(an)
    n_ok = sum(r.get("status") == "success" for r in an.rows)
    return [
        {"type": "cards", "id": "summary", "title": "Summary", "items": summary_cards(an)},
        {"type": "chart", "id": "alpha", "title": "alpha by layer", "link": "esd", "spec": _alpha_chart(records),
         "caption": f"{n_ok} fitted layer(s); hover a point for its fit, click it for its ESD. Shaded: "
                    f"{ALPHA_BAND[0]:g} <= alpha <= {ALPHA_BAND[1]:g}; alpha above {ALPHA_CAP:g} is drawn at "
                    f"{ALPHA_CAP:g}."},
        esd_section(an),
        table_section(records),
        {"type": "text", "id": "howto", "title": "How to read this", "paragraphs": HOW_TO_READ},
        {"type": "kv", "id": "metadata", "title": "Metadata and conventions", "items": _metadata_items(an.metadata)},
    ]


def comparison_sections(an: Analysis, base: Analysis, what: str, base_what: str) -> list[dict]:
    """Sections of the side-by-side report of ``an`` and ``base``: alpha per layer of each, and the delta."""
    check_analysis(an, what)
    check_analysis(base, base_what)
    rec, brec = layer_records(an), layer_records(base)
    bmap = {r["name"]: r for r in brec}
    both = [dict(r, model="MODEL") for r in rec] + [
        dict(b, model="BASE", idx=next((r["idx"] for r in rec if r["name"] == b["name"]), None)) for b in brec]
    both = [r for r in both if r["idx"] is not None]
    delta = []
    for r in rec:
        b = bmap.get(r["name"])
        a0 = b.get("alpha") if b else None
        d = r["alpha"] - a0 if r.get("alpha") is not None and a0 is not None else None
        delta.append({"name": r["name"], "idx": r["idx"], "status": r.get("status"),
                      "status_base": b.get("status") if b else "absent", "alpha": r.get("alpha"),
                      "alpha_base": a0, "delta": d})
    only_model = [r["name"] for r in rec if r["name"] not in bmap]
    only_base = [b["name"] for b in brec if b["name"] not in {r["name"] for r in rec}]
    ds = [d["delta"] for d in delta if d["delta"] is not None]
    cards = summary_cards(an, "MODEL") + summary_cards(base, "BASE") + [
        {"label": "layers compared", "value": len(ds), "note": f"{len(only_model)} only in MODEL, "
                                                               f"{len(only_base)} only in BASE (matched by name)"},
        {"label": "mean alpha - alpha of BASE", "value": sum(ds) / len(ds) if ds else None},
    ]
    dcols = [{"key": "name", "label": "layer", "text": True, "wrap": True},
             {"key": "status", "label": "status", "text": True},
             {"key": "status_base", "label": "BASE status", "text": True}, {"key": "alpha", "label": "alpha"},
             {"key": "alpha_base", "label": "BASE alpha"}, {"key": "delta", "label": "delta"}]
    return [
        {"type": "cards", "id": "summary", "title": "Summary", "items": cards},
        {"type": "chart", "id": "alpha", "title": "alpha by layer: MODEL and BASE", "link": "esd",
         "spec": _alpha_chart(both, color="model"),
         "caption": f"MODEL: {what}; BASE: {base_what}. Layers matched by name, in MODEL's order. Click a point "
                    "for MODEL's ESD of that layer."},
        {"type": "chart", "id": "delta", "title": "alpha - alpha of BASE", "link": "esd",
         "spec": _delta_chart(delta), "caption": "Positive: MODEL's layer has a lighter tail than BASE's."},
        esd_section(an, title="ESD of one layer (MODEL)"),
        {"type": "table", "id": "table", "title": "Per-layer comparison", "columns": dcols, "rows": delta,
         "link": "esd", "filter_column": "status",
         "caption": "Click a column to sort it; type to filter; click a row for its ESD."},
        table_section(brec, sid="table_base", link=None, title="BASE per-layer table"),
        {"type": "text", "id": "howto", "title": "How to read this", "paragraphs": HOW_TO_READ},
        {"type": "kv", "id": "metadata", "title": "MODEL metadata", "items": _metadata_items(an.metadata)},
        {"type": "kv", "id": "metadata_base", "title": "BASE metadata", "items": _metadata_items(base.metadata)},
    ]
