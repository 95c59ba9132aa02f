"""The analysis report's charts, written with altair: the source of :mod:`htsr.report._specs`.

The three charts read their rows from named datasets, so their Vega-Lite specs do not depend on the data; they
are stored as JSON in ``_specs.py`` (``python -m htsr.report.charts`` rewrites it) and a report loads them without
importing altair (~0.4 s saved per report). ``tests/test_report.py`` checks the stored specs equal these builders'
output, validated against the Vega-Lite schema.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from htsr.report.analysis import ALPHA_BAND, TOOLTIP


def _dict(chart: Any, validate: bool = True) -> dict:
    spec = chart.to_dict(validate=validate)
    spec.pop("$schema", None)
    return spec


def alpha_chart(color: str) -> dict:
    """alpha by layer (data ``layers``); ``color``: ``band`` (in/outside 2-6) or ``model`` (a comparison)."""
    import altair as alt

    data = alt.Data(name="layers")
    x = alt.X("idx:Q", title="layer (analysis order)", axis=alt.Axis(tickMinStep=1))
    tips = [alt.Tooltip("name:N", title="layer")]
    if color == "model":
        tips.append(alt.Tooltip("model:N"))
    tips += [alt.Tooltip(f"{k}:Q", format=".4g") for k in TOOLTIP[1:]]
    # the y domain spans 0, the band and every (capped) alpha: the band's layer shares the scale
    y = alt.Y("alpha_shown:Q", title="alpha (power-law exponent)", scale=alt.Scale(domainMin=0))
    if color == "model":
        col = alt.Color("model:N", title=None, legend=alt.Legend(orient="top"))
    else:
        col = alt.Color("band:N", title=None, legend=alt.Legend(orient="top"),
                        scale=alt.Scale(domain=["in band", "outside band"], range=["#1f77b4", "#ff7f0e"]))
    band = alt.Chart(alt.Data(values=[{"lo": ALPHA_BAND[0], "hi": ALPHA_BAND[1] + 1}])).mark_rect(
        color="#2ca02c", opacity=0.0).encode(y=alt.Y("lo:Q"), y2="hi:Q")  # invisible: keeps 0..7 in the domain
    shade = alt.Chart(alt.Data(values=[{"lo": ALPHA_BAND[0], "hi": ALPHA_BAND[1]}])).mark_rect(
        color="#2ca02c", opacity=0.12).encode(y=alt.Y("lo:Q"), y2="hi:Q")
    base = alt.Chart(data).transform_filter("isValid(datum.alpha_shown)")
    if color == "model":
        line = base.mark_line(strokeWidth=0.8, opacity=0.5).encode(x=x, y=y, color=col)
    else:
        line = base.mark_line(strokeWidth=0.8, opacity=0.5, color="#1f77b4").encode(x=x, y=y)
    pts = base.mark_point(filled=True, size=46, cursor="pointer", opacity=0.9).encode(x=x, y=y, color=col,
                                                                                      tooltip=tips)
    return _dict(alt.layer(band, shade, line, pts).properties(width=900, height=300))


def delta_chart() -> dict:
    """alpha - alpha of BASE per layer (data ``delta``)."""
    import altair as alt

    x = alt.X("idx:Q", title="layer (analysis order)", axis=alt.Axis(tickMinStep=1))
    chart = alt.Chart(alt.Data(name="delta")).mark_bar(cursor="pointer").encode(
        x=x, y=alt.Y("delta:Q", title="alpha - alpha of BASE"),
        color=alt.condition("datum.delta > 0", alt.value("#ff7f0e"), alt.value("#1f77b4")),
        tooltip=[alt.Tooltip("name:N", title="layer"), alt.Tooltip("alpha:Q", format=".4g"),
                 alt.Tooltip("alpha_base:Q", format=".4g"), alt.Tooltip("delta:Q", format="+.4g")],
    ).transform_filter("isValid(datum.delta)").properties(width=900, height=220)
    return _dict(chart)




def esd_chart() -> dict:
    """The ESD viewer: density histogram and complementary CDF in log-log, the fit and xmin (data ``esd``)."""
    import altair as alt

    data = alt.Data(name="esd")
    colors = alt.Scale(domain=["ESD", "randomized", "power-law fit", "xmin"],
                       range=["#1f77b4", "#ff7f0e", "#d62728", "#2ca02c"])
    col = alt.Color("s:N", title=None, scale=colors, legend=alt.Legend(orient="top"))
    xs = alt.X("x:Q", scale=alt.Scale(type="log"), title="eigenvalue lambda",
               axis=alt.Axis(format="~e", labelOverlap="greedy", grid=False))
    ylog = alt.Scale(type="log")
    yax = alt.Axis(format="~e", labelOverlap="greedy")
    tip = [alt.Tooltip("s:N", title="series"), alt.Tooltip("x:Q", format=".4g", title="lambda"),
           alt.Tooltip("y:Q", format=".4g")]

    def part(p: str, sel: tuple[str, ...]) -> alt.Chart:
        return alt.Chart(data).transform_filter(alt.datum.p == p).transform_filter(
            alt.FieldOneOfPredicate(field="s", oneOf=list(sel)))

    dens = alt.layer(
        part("density", ("ESD", "randomized")).mark_rect(opacity=0.45).encode(
            x=xs, x2="x2:Q", y=alt.Y("y:Q", scale=ylog, title="density p(lambda)", axis=yax), y2="y0:Q", color=col,
            tooltip=tip),
        part("density", ("power-law fit",)).mark_line(strokeWidth=2.5).encode(x=xs, y="y:Q", color=col, tooltip=tip),
        part("density", ("xmin",)).mark_rule(strokeDash=[4, 3], strokeWidth=1.6).encode(x=xs, color=col),
    ).properties(width=430, height=300, title="log-log ESD (density)")
    ccdf = alt.layer(
        part("ccdf", ("ESD", "randomized")).mark_line(interpolate="step-after").encode(
            x=xs, y=alt.Y("y:Q", scale=ylog, title="P(Lambda >= lambda)", axis=yax), color=col, tooltip=tip),
        part("ccdf", ("power-law fit",)).mark_line(strokeWidth=2.5, strokeDash=[6, 3]).encode(
            x=xs, y="y:Q", color=col, tooltip=tip),
        part("ccdf", ("xmin",)).mark_rule(strokeDash=[4, 3], strokeWidth=1.6).encode(x=xs, color=col),
    ).properties(width=430, height=300, title="complementary CDF")
    spec = _dict(alt.hconcat(dens, ccdf).resolve_scale(color="shared"))
    spec["padding"] = {"left": 44, "right": 5, "top": 5, "bottom": 5}  # room for the exponent labels
    return spec


def build_all() -> dict[str, dict]:
    """Every stored spec, by name."""
    return {"alpha_band": alpha_chart("band"), "alpha_model": alpha_chart("model"), "delta": delta_chart(),
            "esd": esd_chart()}


def vegalite_version() -> str:
    """altair's Vega-Lite version as ``major.minor``."""
    import altair

    return ".".join(altair.SCHEMA_VERSION.lstrip("v").split(".")[:2])


def render_module() -> str:
    """The text of ``_specs.py``."""
    body = json.dumps(build_all(), indent=1, sort_keys=True)
    return ('"""Vega-Lite specs of the analysis report\'s charts (altair, :mod:`htsr.report.charts`).\n\n'
            'Generated by ``python -m htsr.report.charts``; do not edit."""\n\n'
            "import json\n\n"
            f"VEGALITE_VERSION = {vegalite_version()!r}\n\n"
            f"SPECS = json.loads(r\"\"\"{body}\"\"\")\n")


if __name__ == "__main__":  # pragma: no cover
    path = Path(__file__).with_name("_specs.py")
    path.write_text(render_module())
    print(f"wrote {path}", file=sys.stderr)
