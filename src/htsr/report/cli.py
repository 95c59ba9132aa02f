"""``htsr report SOURCE -o report.html [--base BASE]``: one self-contained HTML page (docs/report.md).

SOURCE: anything ``htsr analyze`` takes (analysed here, eigenvalues kept for the ESDs), a saved analysis
(``.json``/``.parquet``), a pruning run directory, a TempBalance comparison directory or run JSON, a TinyMem
comparison directory, or an MD-tree diagnosis / fitted tree JSON; the kind is detected from the files.
Exit codes (docs/cli.md): 0 written; 1 the analysis fitted no layer; 2 bad input (unknown file, other schema
or version, empty analysis, unwritable output). No partial file is ever left at the output path.
"""

from __future__ import annotations

import argparse
from typing import Any

from htsr.cli import common as C


def register(subparsers: Any) -> None:
    """Add ``report``."""
    p = subparsers.add_parser(
        "report", help="one self-contained HTML report of an analysis or a method's output",
        description="Write one HTML file that opens offline (every script and style inlined): summary cards, an "
                    "interactive alpha-by-layer chart, each layer's ESD with its fit, a sortable per-layer table, "
                    "the metadata and how to read them; or the report of a pruning / TempBalance / TinyMem / "
                    "MD-tree output directory or file (detected from its files).")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("source", nargs="?",
                     help="a model (anything `htsr analyze` takes), a saved analysis .json/.parquet, or a method's "
                          "output directory or JSON")
    src.add_argument("--example", choices=["minilm"], help="embedded real model: all-MiniLM-L6-v2 (offline)")
    C.add_out(p, (".html",), "the report", required=True)
    p.add_argument("--base", default=None, metavar="BASE",
                   help="a second model or saved analysis shown side by side (alpha of each and the delta per "
                        "layer, matched by name); not `analyze --base`'s W - W_base")
    p.add_argument("--title", default=None, help="page title (default: from the source)")
    p.add_argument("--preset", default=None, help="analysis preset when SOURCE is a model (default htsr)")
    p.add_argument("--randomize", action="store_true", default=None,
                   help="also analyse shuffled weights (correlation traps) when SOURCE is a model")
    C.add_set(p, "the analysis config when SOURCE is a model (any AnalysisConfig field)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow .bin/.pt pickle checkpoints (loaded with torch.load(weights_only=True))")
    C.add_json(p)
    C.add_threads(p)
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    """Run ``htsr report``."""
    from htsr.examples import example_path
    from htsr.report.core import write_report

    source = example_path(args.example) if args.example else args.source
    opts: dict[str, Any] = dict(C.overrides(args))
    if args.preset is not None:
        opts["preset"] = args.preset
    if args.randomize:
        opts["randomize"] = True
    if args.allow_pickle:
        opts["allow_pickle"] = True
    report = write_report(source, args.out, base=args.base, title=args.title, **opts)
    if args.json:
        C.print_json({"out": str(args.out), "kind": report.kind, "timings": report.timings})
    C.say(f"wrote {args.out} ({report.kind} report, {report.timings['bytes'] / 1e6:.2f} MB, "
          f"{report.timings['total_s']:.2f} s)")
    return 0
