"""``htsr analyze SOURCE``: the per-layer table of spectra, power-law fits and metrics, and a summary."""

from __future__ import annotations

import argparse
import math
import sys

from htsr.cli import common as C

TABLE_COLUMNS = ("name", "kind", "N", "M", "num_evals", "status", "alpha", "xmin", "D", "n_tail", "alpha_hat",
                 "log_spectral_norm", "stable_rank", "time_s")
#: analyze's own flags that are AnalysisConfig fields (``--set`` reaches every other field)
_OPTION_ARGS = ("kinds", "xmin_rule", "xmin_pos", "fingers", "tpl", "gof", "mp_fit", "randomize", "seed",
                "min_evals", "device", "precision", "workers", "estimator", "detx")


def register(sub: argparse._SubParsersAction) -> None:
    a = sub.add_parser("analyze", help="per-layer spectra, power-law fits and metrics of a model's weights",
                       description="Analyse every weight matrix of a model: power-law alpha of its eigenvalue tail "
                                   "and spectral metrics, one row per matrix. Exit 0 when the analysis ran (rows "
                                   "may still be failed/skipped), 1 when the source has no weight matrix, 2 for "
                                   "bad usage or an unreadable source.")
    src = a.add_mutually_exclusive_group(required=True)
    src.add_argument("source", nargs="?",
                     help="a .safetensors file, a sharded/HF model directory, an index JSON, a LoRA adapter "
                          "directory (--lora), or a .bin/.pt (--allow-pickle)")
    src.add_argument("--example", choices=["minilm"], help="embedded real model: all-MiniLM-L6-v2 (offline)")
    a.add_argument("--preset", default="htsr", help="htsr (default), weightwatcher, tempbalance, alphapruning")
    a.add_argument("--layers", type=C.patterns, default=(), metavar="GLOBS",
                   help="comma-separated globs (or re:REGEX) on full module paths to include")
    a.add_argument("--exclude", type=C.patterns, default=(), metavar="GLOBS", help="globs (or re:REGEX) to exclude")
    a.add_argument("--kinds", type=C.name_list, default=None, help="layer kinds, e.g. linear,conv2d")
    a.add_argument("--embeddings", action="store_true", default=None, help="also analyse embedding matrices")
    a.add_argument("--split-qkv", action="store_true", default=None, help="split fused QKV projections in three")
    a.add_argument("--xmin-rule", choices=["ks", "median", "fraction", "peak"], default=None)
    a.add_argument("--xmin-pos", type=C.bounded(float, 1, lo_open=True), default=None,
                   help="median/fraction rule: xmin at sorted index N/xmin_pos (> 1; 2 is the median)")
    a.add_argument("--fingers", choices=["clip_xmax"], default=None, help="remove spurious top eigenvalues")
    a.add_argument("--tpl", action="store_true", default=None, help="also fit a truncated power law")
    a.add_argument("--gof", action="store_true", default=None,
                   help="goodness of fit: bootstrap p-value, likelihood ratios vs lognormal/exponential")
    a.add_argument("--mp-fit", action="store_true", default=None, help="Marchenko-Pastur bulk fit and spikes")
    a.add_argument("--randomize", action="store_true", default=None, help="compare with the shuffled-weights ESD")
    a.add_argument("--estimator", choices=["plain", "farms"], default=None,
                   help="farms: fit the pooled ESD of fixed-aspect-ratio windows (FARMS; --set farms_rows=, "
                        "farms_q=, farms_windows=, farms_stride=); default plain")
    a.add_argument("--detx", action="store_true", default=None,
                   help="detX / ERG condition columns (detx_num, detx_xmin, detx_delta, detx_log_ratio)")
    C.add_seed(a, default=None, help="seed for every random step (default 0)")
    a.add_argument("--min-evals", type=C.nonneg_int, default=None)
    a.add_argument("--device", type=C.device, default=None, help="cpu (default), cuda, cuda:N or auto")
    a.add_argument("--precision", choices=["auto", "float32", "float64"], default=None)
    a.add_argument("--workers", type=C.nonneg_int, default=None, help="layers in parallel on CPU (0 = auto)")
    C.add_set(a, "the analysis config (any AnalysisConfig field, e.g. --set max_evals=20000)")
    a.add_argument("--base", default=None, help="base model: analyse W - W_base, matched by name")
    a.add_argument("--lora", action="store_true", help="SOURCE is a PEFT LoRA adapter: analyse B @ A")
    a.add_argument("--allow-pickle", action="store_true",
                   help="allow .bin/.pt pickle checkpoints (loaded with torch.load(weights_only=True))")
    C.add_out(a, (".json", ".csv", ".parquet"), "write results: .json (versioned schema), .csv or .parquet",
              repeatable=True)
    C.add_plot(a, "write per-layer ESD plots and an alpha chart (PNG) into DIR", directory=True)
    C.add_json(a)
    a.add_argument("--all-columns", action="store_true", help="print every column, not the main ones")
    C.add_progress(a)
    C.add_threads(a)
    C.add_executor(a)
    a.add_argument("--quiet", "-q", action="store_true", help="print only the summary")
    a.set_defaults(func=cmd_analyze)
    _register_engine(sub)


def _register_engine(sub: argparse._SubParsersAction) -> None:
    """``htsr describe`` and ``htsr smooth`` (their code lives in :mod:`htsr.spectra.engine_cli`)."""
    from htsr.spectra.engine_cli import register_engine

    register_engine(sub)


def _format_table(df, all_columns: bool) -> str:
    import pandas as pd
    from pandas.api.types import is_object_dtype, is_string_dtype

    from htsr.io import safe_text

    cols = list(df.columns) if all_columns else [c for c in TABLE_COLUMNS if c in df.columns]
    view = df[cols].copy()
    for c in view.columns:
        if is_object_dtype(view[c]) or is_string_dtype(view[c]):  # pandas 3 infers a str dtype, not object
            view[c] = view[c].map(lambda v: safe_text(v) if isinstance(v, str) else v)
    with pd.option_context("display.max_rows", None, "display.max_columns", None, "display.width", 200,
                           "display.float_format", lambda v: f"{v:.4g}"):
        return view.to_string(index=False)


def format_summary(summary: dict) -> str:
    parts = [f"{summary['n_success']}/{summary['n_rows']} layers fitted"]
    for k in ("n_failed", "n_skipped", "n_error"):
        if summary.get(k):
            parts.append(f"{summary[k]} {k[2:]}")
    head = ", ".join(parts)
    vals = [f"{k}={v:.4g}" for k, v in summary.items() if not k.startswith("n_") and isinstance(v, float)
            and math.isfinite(v)]
    return "summary: " + head + ("\n  mean over fitted layers: " + " ".join(vals) if vals else "")


def cmd_analyze(args: argparse.Namespace) -> int:
    from htsr.errors import MeasurementError
    from htsr.examples import example_path
    from htsr.io import check_not_input
    from htsr.progress import show_progress
    from htsr.spectra.analysis import analyze
    from htsr.spectra.sources import input_paths

    inputs = input_paths(args.source, args.base)
    for out in [*args.out, *([args.plot] if args.plot else [])]:
        check_not_input(out, inputs)
    opts = C.analysis_options(args, _OPTION_ARGS)
    source = example_path(args.example) if args.example else args.source
    with C.executor_from_args(args) as executor:
        result = analyze(source, args.preset, base=args.base, lora=args.lora, allow_pickle=args.allow_pickle,
                         progress=show_progress(args.progress), executor=executor, **opts)
    df = result.to_pandas()
    summary = result.summary()
    if args.json:
        C.print_json({"summary": summary, "rows": result.rows})
    else:
        if not args.quiet:
            if len(df):
                print(_format_table(df, args.all_columns))
            for r in result.rows:
                if r["status"] in ("failed", "error"):
                    C.say(f"  {r['status']}: {r['name']}: {r['reason']}")
        print(format_summary(summary))
    for out in args.out:
        C.say(f"wrote {result.save(out)}")
    if args.plot:
        paths = result.plot(args.plot)
        C.say(f"wrote {len(paths)} plot(s) to {args.plot}")
    if summary["n_rows"] == 0:
        raise MeasurementError("no weight matrices found in the source")
    errors = [r for r in result.rows if r["status"] == "error"]
    if errors and not any(r["status"] in ("success", "failed") for r in result.rows):
        raise MeasurementError(f"no layer could be analysed: {len(errors)} row(s) are errors, the rest skipped "
                               f"(first: {errors[0]['name']}: {errors[0]['reason']})")
    sys.stdout.flush()
    return 0
