"""``write_report(source, out)``: detect what ``source`` is, build its sections, write one self-contained HTML file.

Sources (detected from the files, in this order):

* an :class:`~htsr.spectra.analysis.Analysis` object (its eigenvalues, when kept, give the ESDs);
* a saved analysis: ``.json`` with schema ``htsr.analysis/*`` or ``.parquet`` (:meth:`Analysis.load`);
* a pruning run: a directory with ``htsr_pruning_report.json``, or that file (schema ``htsr.pruning/*``);
* a TempBalance comparison directory (``results.csv`` with recipe/method/fraction columns, ``cells/*.json``), or
  the JSON of ``htsr tempbalance run -o`` (config, metrics, history, tb_history);
* a TinyMem comparison directory (``table.csv`` and ``run.json`` of ``htsr tinymem compare``);
* an MD-tree diagnosis (JSON of ``htsr mdtree diagnose -o``) or a fitted MD tree (``htsr mdtree fit -o``,
  schema ``htsr.mdtree/*``);
* anything else is a model: analysed with :func:`htsr.spectra.analysis.analyze` (eigenvalues kept for the ESDs).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from htsr.report.bundle import ReportError

KINDS = ("analysis", "comparison", "pruning", "tempbalance", "tempbalance-run", "tinymem", "mdtree-diagnosis",
         "mdtree")


@dataclass
class Report:
    """A built report: its kind, title, subtitle and sections (see :mod:`htsr.report.page`), and timings."""

    kind: str
    title: str
    subtitle: str
    sections: list[dict]
    timings: dict[str, float] = field(default_factory=dict)

    def html(self) -> str:
        """The self-contained HTML document."""
        from htsr.report.bundle import javascript_bundle
        from htsr.report.page import render_page

        return render_page(self.title, self.subtitle, self.kind, self.sections, javascript_bundle())


def _read_json(p: Path) -> Any:
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReportError(f"{p}: not a JSON file ({e})") from None


def detect(source: Any) -> str:
    """The kind of ``source`` (one of :data:`KINDS` but ``comparison``; ``model`` for anything to analyse)."""
    if not isinstance(source, str | os.PathLike):
        from htsr.spectra.analysis import Analysis

        return "analysis" if isinstance(source, Analysis) else "model"
    p = Path(source)
    if p.is_dir():
        if (p / "htsr_pruning_report.json").is_file():
            return "pruning"
        if (p / "table.csv").is_file() and (p / "run.json").is_file():
            return "tinymem"
        if (p / "results.csv").is_file():
            return "tempbalance"
        return "model"
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        return "analysis"
    if suffix == ".json" and p.is_file() and not p.name.endswith(".index.json") and p.name != "config.json":
        data = _read_json(p)
        if not isinstance(data, dict):
            raise ReportError(f"{p}: a JSON {type(data).__name__}, not a file htsr writes (expected an object)")
        schema = data.get("schema")
        if schema is None and isinstance(data.get("metadata"), dict):
            schema = data["metadata"].get("schema")
        if isinstance(schema, str):
            for prefix, kind in (("htsr.analysis/", "analysis"), ("htsr.pruning/", "pruning"),
                                 ("htsr.mdtree/", "mdtree")):
                if schema.startswith(prefix):
                    return kind
            raise ReportError(f"{p}: schema {schema!r} has no report; expected an analysis (htsr.analysis/1), a "
                              "pruning report (htsr.pruning/1) or an MD tree (htsr.mdtree/1)")
        keys = set(data)
        if {"features", "predictions", "advice"} <= keys:
            return "mdtree-diagnosis"
        if {"config", "metrics", "history", "tb_history"} <= keys:
            return "tempbalance-run"
        raise ReportError(f"{p}: not a file htsr can report on (keys {', '.join(sorted(keys)[:8])}); expected a saved "
                          "analysis, a pruning report, a TempBalance run, an MD-tree diagnosis or a fitted MD tree")
    return "model"


def _describe(source: Any) -> str:
    if isinstance(source, str | os.PathLike):
        return str(source)
    if hasattr(source, "rows") and hasattr(source, "metadata"):
        return str(source.metadata.get("source", "analysis"))
    return type(source).__name__


def _analysis(source: Any, kind: str, analyze_options: dict[str, Any]) -> tuple[Any, float]:
    from htsr.spectra.analysis import Analysis, analyze

    t0 = time.perf_counter()
    if isinstance(source, Analysis):
        an = source
    elif kind == "analysis":
        an = Analysis.load(source)
    else:
        an = analyze(source, **analyze_options)
    return an, time.perf_counter() - t0


def build_report(source: Any, *, base: Any = None, title: str | None = None, **analyze_options: Any) -> Report:
    """Build the report of ``source`` (see the module docstring); ``base``: a second model or saved analysis shown
    side by side (analyses only). ``analyze_options`` go to :func:`~htsr.spectra.analysis.analyze` (``preset``,
    ``layers``, ``randomize`` ...) when a model is analysed."""
    from htsr.report import methods
    from htsr.report.analysis import analysis_sections, comparison_sections

    kind = detect(source)
    what = _describe(source)
    if kind in ("analysis", "model"):
        an, t_an = _analysis(source, kind, analyze_options)
        timings = {"analysis_s": t_an}
        sub = f"source: {an.metadata.get('source', what)} | preset {an.metadata.get('preset', '?')}"
        if base is not None:
            bkind = detect(base)
            if bkind not in ("analysis", "model"):
                raise ReportError(f"--base {_describe(base)}: a {bkind} output; --base takes a model or a saved "
                                  "analysis")
            ban, t_b = _analysis(base, bkind, analyze_options)
            timings["base_analysis_s"] = t_b
            return Report("comparison", title or f"htsr: {what} vs {_describe(base)}",
                          sub + f" | BASE: {ban.metadata.get('source', _describe(base))}",
                          comparison_sections(an, ban, what, _describe(base)), timings)
        return Report("analysis", title or f"htsr analysis: {what}", sub, analysis_sections(an, what), timings)
    if base is not None:
        raise ReportError(f"--base applies to analyses only; {what} is a {kind} output")
    if analyze_options:
        raise ReportError(f"analysis options ({', '.join(sorted(analyze_options))}) apply to models only; {what} is "
                          f"a {kind} output")
    sections, sub = methods.BUILDERS[kind](Path(source))
    return Report(kind, title or f"htsr {kind} report: {what}", sub, sections)


def check_writable(out: str | os.PathLike) -> None:
    """Raise :class:`~htsr.io.OutputError` when ``out`` cannot be created: a directory, or its nearest existing
    ancestor is not a writable directory (checked before any work)."""
    from htsr.io import OutputError

    p = Path(os.path.abspath(out))
    if p.is_dir():
        raise OutputError(f"{out} is a directory; expected a file path")
    anc = p.parent
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir():
        raise OutputError(f"cannot write {out}: {anc} is not a directory")
    if not os.access(anc, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise OutputError(f"cannot write {out}: permission denied")


def write_report(source: Any, out: str | os.PathLike, *, base: Any = None, title: str | None = None,
                 **analyze_options: Any) -> Report:
    """Build the report of ``source`` and write it to ``out`` (an ``.html`` file) atomically: on any error no
    file (and no partial file) is left at ``out``. Returns the :class:`Report` (``timings`` in seconds)."""
    from htsr.io import OutputError, atomic_write, check_not_input, check_suffix
    from htsr.report.bundle import warm_cache_in_background

    check_suffix(out, (".html", ".htm"), "a report")
    check_not_input(out, [s for s in (source, base) if s is not None])
    check_writable(out)
    t0 = time.perf_counter()
    warm = warm_cache_in_background() if detect(source) == "model" else None
    report = build_report(source, base=base, title=title, **analyze_options)
    if warm is not None:
        warm.wait(timeout=120)
    t1 = time.perf_counter()
    text = report.html()
    try:
        atomic_write(out, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    except (PermissionError, NotADirectoryError, FileExistsError, IsADirectoryError, FileNotFoundError) as e:
        raise OutputError(f"cannot write {out}: {e.strerror or e} ({e.filename or out})") from None
    report.timings.update(render_s=time.perf_counter() - t1, total_s=time.perf_counter() - t0,
                          bytes=len(text.encode("utf-8")))
    return report
