"""``htsr report``: one self-contained HTML page per analysis or method output (docs/report.md).

* ``core``: :func:`write_report` / :func:`build_report` (what the source is, which sections), :func:`detect`.
* ``analysis``: the sections of an analysis (summary cards, alpha chart, ESD viewer, table) and of two side by side.
* ``methods``: the sections of pruning, TempBalance, TinyMem and MD-tree outputs.
* ``digest``: the decimated ESD of one layer; ``page``: the HTML template and its script; ``bundle``: the inlined
  chart library (Vega-Lite through altair, the JavaScript from vl-convert, cached).

Importing this package is cheap: submodules load on first use.
"""

from __future__ import annotations

from htsr._lazy import lazy_exports

_WHERE = {
    "write_report": "core", "build_report": "core", "detect": "core", "Report": "core", "KINDS": "core",
    "esd_digest": "digest", "ReportError": "bundle", "javascript_bundle": "bundle",
}

__all__ = sorted(_WHERE)

__getattr__ = lazy_exports(__name__, _WHERE)
