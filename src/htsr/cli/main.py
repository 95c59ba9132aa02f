"""``htsr`` command line: ``htsr analyze SOURCE`` prints a per-layer table and a summary.

Exit codes: 0 success (individual layers may still be failed/skipped, see their
status), 1 no layer could be analysed, 2 bad usage or an unreadable source.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from htsr import __version__

log = logging.getLogger("htsr.cli")

TABLE_COLUMNS = ("name", "kind", "N", "M", "num_evals", "status", "alpha", "xmin", "D", "n_tail", "alpha_hat",
                 "log_spectral_norm", "stable_rank", "time_s")


# Each method's sub-commands live in ``htsr/cli/<name>.py`` with a ``register(subparsers)`` function.
COMMAND_MODULES: tuple[str, ...] = (
    "tempbalance",
    "prune",
    "diagnose",
    "theory",
    "memorization",
    "landscape",
)


def _csv(s: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in s.split(",") if x.strip())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="htsr", description="Heavy-tailed self-regularisation diagnostics.")
    p.add_argument("--version", action="version", version=f"htsr {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    a = sub.add_parser("analyze", help="per-layer spectra, power-law fits and metrics of a model's weights",
                       description="Analyse every weight matrix of a model: power-law alpha of its "
                                   "eigenvalue tail and spectral metrics, one row per matrix.")
    src = a.add_mutually_exclusive_group(required=True)
    src.add_argument("source", nargs="?",
                     help="a .safetensors file, a sharded/HF model directory, an index JSON, a LoRA adapter "
                          "directory (--lora), or a .bin/.pt (--allow-pickle)")
    src.add_argument("--example", choices=["minilm"], help="embedded real model: all-MiniLM-L6-v2 (offline)")
    a.add_argument("--preset", default="htsr", help="htsr (default), weightwatcher, tempbalance, alphapruning")
    a.add_argument("--layers", type=_csv, default=(), metavar="GLOBS",
                   help="comma-separated globs (or re:REGEX) on full module paths to include")
    a.add_argument("--exclude", type=_csv, default=(), metavar="GLOBS", help="globs (or re:REGEX) to exclude")
    a.add_argument("--kinds", type=_csv, default=None, help="layer kinds, e.g. linear,conv2d")
    a.add_argument("--embeddings", action="store_true", default=None, help="also analyse embedding matrices")
    a.add_argument("--split-qkv", action="store_true", default=None, help="split fused QKV projections in three")
    a.add_argument("--xmin-rule", choices=["ks", "median", "fraction", "peak"], default=None)
    a.add_argument("--xmin-pos", type=float, default=None, help="median/fraction rule: xmin at index N/xmin_pos")
    a.add_argument("--fingers", choices=["clip_xmax"], default=None, help="remove spurious top eigenvalues")
    a.add_argument("--tpl", action="store_true", default=None, help="also fit a truncated power law")
    a.add_argument("--gof", action="store_true", default=None,
                   help="goodness of fit: bootstrap p-value, likelihood ratios vs lognormal/exponential")
    a.add_argument("--mp-fit", action="store_true", default=None, help="Marchenko-Pastur bulk fit and spikes")
    a.add_argument("--randomize", action="store_true", default=None, help="compare with the shuffled-weights ESD")
    a.add_argument("--seed", type=int, default=None, help="seed for every random step (default 0)")
    a.add_argument("--min-evals", type=int, default=None)
    a.add_argument("--device", default=None, help="cpu (default), cuda, cuda:N or auto")
    a.add_argument("--precision", choices=["auto", "float32", "float64"], default=None)
    a.add_argument("--workers", type=int, default=None, help="layers in parallel on CPU (0 = auto)")
    a.add_argument("--base", default=None, help="base model: analyse W - W_base, matched by name")
    a.add_argument("--lora", action="store_true", help="SOURCE is a PEFT LoRA adapter: analyse B @ A")
    a.add_argument("--allow-pickle", action="store_true",
                   help="allow .bin/.pt pickle checkpoints (loaded with torch.load(weights_only=True))")
    a.add_argument("--out", "-o", action="append", default=[], metavar="FILE",
                   help="write results: .json (versioned schema), .csv or .parquet; repeatable")
    a.add_argument("--plot", metavar="DIR", default=None, help="write per-layer ESD plots and an alpha chart (PNG)")
    a.add_argument("--all-columns", action="store_true", help="print every column, not the main ones")
    a.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar with per-layer timing (default: when stderr is a terminal)")
    a.add_argument("--quiet", "-q", action="store_true", help="print only the summary")
    a.set_defaults(func=cmd_analyze)

    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(f"htsr.cli.{name}").register(sub)
    return p


_OPTION_ARGS = ("preset", "kinds", "xmin_rule", "xmin_pos", "fingers", "tpl", "gof", "mp_fit", "randomize", "seed",
                "min_evals", "device", "precision", "workers")


def _format_table(df, all_columns: bool) -> str:
    import pandas as pd

    cols = list(df.columns) if all_columns else [c for c in TABLE_COLUMNS if c in df.columns]
    view = df[cols].copy()
    with pd.option_context("display.max_rows", None, "display.max_columns", None, "display.width", 200,
                           "display.float_format", lambda v: f"{v:.4g}"):
        return view.to_string(index=False)


def _format_summary(summary: dict) -> str:
    parts = [f"{summary['n_success']}/{summary['n_rows']} layers fitted"]
    for k in ("n_failed", "n_skipped", "n_error"):
        if summary.get(k):
            parts.append(f"{summary[k]} {k[2:]}")
    head = ", ".join(parts)
    vals = [f"{k}={v:.4g}" for k, v in summary.items() if not k.startswith("n_") and isinstance(v, float)
            and math.isfinite(v)]
    return "summary: " + head + ("\n  mean over fitted layers: " + " ".join(vals) if vals else "")


def cmd_analyze(args: argparse.Namespace) -> int:
    from htsr.errors import HtsrError
    from htsr.examples import example_path
    from htsr.spectra.analysis import analyze

    for out in args.out:
        if Path(out).suffix.lower() not in (".json", ".csv", ".parquet"):
            print(f"htsr: error: --out {out}: unsupported format; expected .json, .csv or .parquet", file=sys.stderr)
            return 2
    opts = {k: getattr(args, k) for k in _OPTION_ARGS if getattr(args, k) is not None and k != "preset"}
    if args.layers:
        opts["layers"] = args.layers
    if args.exclude:
        opts["exclude"] = args.exclude
    if args.embeddings:
        opts["include_embeddings"] = True
    if args.split_qkv:
        opts["split_qkv"] = True
    from htsr.progress import show_progress

    progress = show_progress(args.progress)
    try:
        source = example_path(args.example) if args.example else args.source
        result = analyze(source, args.preset, base=args.base, lora=args.lora, allow_pickle=args.allow_pickle,
                         progress=progress, **opts)
    except (HtsrError, ValueError, OSError) as e:
        print(f"htsr: error: {e}", file=sys.stderr)
        return 2
    df = result.to_pandas()
    summary = result.summary()
    if not args.quiet:
        if len(df):
            print(_format_table(df, args.all_columns))
        for r in result.rows:
            if r["status"] in ("failed", "error"):
                print(f"  {r['status']}: {r['name']}: {r['reason']}", file=sys.stderr)
    print(_format_summary(summary))
    try:
        for out in args.out:
            path = result.save(out)
            print(f"wrote {path}", file=sys.stderr)
        if args.plot:
            paths = result.plot(args.plot)
            print(f"wrote {len(paths)} plot(s) to {args.plot}", file=sys.stderr)
    except (OSError, ValueError) as e:
        print(f"htsr: error: cannot write output: {e}", file=sys.stderr)
        return 2
    if summary["n_rows"] == 0:
        print("htsr: error: no weight matrices found in the source", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="htsr: %(levelname)s: %(message)s")  # CLI only
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
