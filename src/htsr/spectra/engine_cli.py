"""``htsr describe`` (the layer table without eigensolves) and ``htsr smooth`` (SVD smoothing / low-rank
truncation of chosen layers); registered by :mod:`htsr.spectra.cli`."""

from __future__ import annotations

import argparse

from htsr.cli import common as C

SMOOTH_TABLE = ("name", "N", "M", "rank", "k", "status", "energy_kept", "rel_error", "reason")
DESCRIBE_TABLE = ("name", "kind", "shape", "dtype", "N", "M", "rf", "num_evals", "params", "status", "reason")


def _add_source(a: argparse.ArgumentParser) -> None:
    src = a.add_mutually_exclusive_group(required=True)
    src.add_argument("source", nargs="?",
                     help="a .safetensors file, a sharded/HF model directory, an index JSON, a .gguf file, a LoRA "
                          "adapter directory (--lora), or a .bin/.pt (--allow-pickle)")
    src.add_argument("--example", choices=["minilm"], help="embedded real model: all-MiniLM-L6-v2 (offline)")
    a.add_argument("--allow-pickle", action="store_true",
                   help="allow .bin/.pt pickle checkpoints (loaded with torch.load(weights_only=True))")


def _add_selection(a: argparse.ArgumentParser) -> None:
    a.add_argument("--preset", default="htsr", help="htsr (default), weightwatcher, tempbalance, alphapruning")
    a.add_argument("--layers", type=C.patterns, default=(), metavar="GLOBS",
                   help="comma-separated globs (or re:REGEX) on full module paths to include")
    a.add_argument("--exclude", type=C.patterns, default=(), metavar="GLOBS", help="globs (or re:REGEX) to exclude")
    a.add_argument("--kinds", type=C.name_list, default=None, help="layer kinds, e.g. linear,conv2d")
    a.add_argument("--embeddings", action="store_true", default=None, help="also select embedding matrices")
    a.add_argument("--split-qkv", action="store_true", default=None, help="split fused QKV projections in three")
    a.add_argument("--min-evals", type=C.nonneg_int, default=None)
    C.add_set(a, "the analysis config (any AnalysisConfig field, e.g. --set max_evals=20000)")


def _options(args: argparse.Namespace) -> dict:
    return C.analysis_options(args, ("kinds", "min_evals"))


def _source(args: argparse.Namespace):
    from htsr.examples import example_path

    return example_path(args.example) if args.example else args.source


def register_engine(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("describe", help="layer table (names, kinds, shapes, parameters, skips) without eigensolves",
                       description="List the weight matrices `htsr analyze` would analyse and those it would skip "
                                   "(and why), from shapes only: no tensor data is read and no eigenvalue computed. "
                                   "Exit 0, 1 when the source has no weight matrix, 2 for bad usage or an "
                                   "unreadable source.")
    _add_source(d)
    _add_selection(d)
    d.add_argument("--base", default=None, help="base model: describe W - W_base, matched by name")
    d.add_argument("--lora", action="store_true", help="SOURCE is a PEFT LoRA adapter: describe B @ A")
    C.add_out(d, (".json", ".csv", ".parquet"), "write the table")
    C.add_json(d)
    d.add_argument("--analyzed-only", action="store_true", help="print only the rows analyze would analyse")
    d.set_defaults(func=cmd_describe)

    s = sub.add_parser("smooth", help="SVD smoothing / low-rank truncation of chosen layers, written as safetensors",
                       description="Replace each selected weight matrix by its rank-k truncated SVD (k by a fixed "
                                   "rank, the Marchenko-Pastur bulk edge, the power-law xmin or the detX tail) and "
                                   "write the checkpoint as one .safetensors file (-o) or a Hugging Face directory "
                                   "(--out-dir; the source directory's other files are copied). Exit 0, 2 for bad "
                                   "usage, an unreadable source or when no layer could be smoothed.")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("source", nargs="?", help="a .safetensors file or a Hugging Face directory of safetensors")
    src.add_argument("--example", choices=["minilm"], help="embedded real model: all-MiniLM-L6-v2 (offline)")
    s.add_argument("--rule", choices=["rank", "mp", "xmin", "detx"], default="rank",
                   help="components kept: rank (--rank K), mp (above the MP bulk edge), xmin (the power-law tail), "
                        "detx (the detX / ERG tail); default rank")
    s.add_argument("--rank", type=C.positive_int, default=None, metavar="K", help="components kept by --rule rank")
    _add_selection(s)
    out = s.add_mutually_exclusive_group(required=True)
    out.add_argument("-o", "--out", type=C.out_file((".safetensors",)), default=None, metavar="FILE",
                     help="write one .safetensors file")
    out.add_argument("--out-dir", type=C.out_dir, default=None, metavar="DIR",
                     help="write a Hugging Face directory (other files of the source directory copied)")
    s.add_argument("--overwrite", action="store_true",
                   help="replace DIR if it is a previous htsr output (it holds a .htsr-output marker)")
    C.add_json(s)
    s.set_defaults(func=cmd_smooth)


def _print_table(rows: list[dict], cols: tuple[str, ...]) -> None:
    import pandas as pd

    from htsr.io import safe_text

    df = pd.DataFrame(rows, columns=list(cols))
    for c in df.columns:
        if df[c].dtype == object:
            df[c] = df[c].map(lambda v: safe_text(v) if isinstance(v, str) else v)
    with pd.option_context("display.max_rows", None, "display.max_columns", None, "display.width", 220,
                           "display.max_colwidth", 70):
        print(df.to_string(index=False))


def cmd_describe(args: argparse.Namespace) -> int:
    from htsr.errors import MeasurementError
    from htsr.io import check_not_input
    from htsr.spectra.describe import describe
    from htsr.spectra.sources import input_paths

    if args.out:
        check_not_input(args.out, input_paths(args.source, args.base))
    res = describe(_source(args), args.preset, base=args.base, lora=args.lora, allow_pickle=args.allow_pickle,
                   **_options(args))
    summary = res.summary()
    if args.json:
        C.print_json({"summary": summary, "rows": res.rows})
    else:
        rows = [r for r in res.rows if r["status"] == "analyze"] if args.analyzed_only else res.rows
        if rows:
            _print_table(rows, DESCRIBE_TABLE)
        print(f"summary: {summary['n_analyze']}/{summary['n_rows']} rows analysed "
              f"({summary['params_analyze']:,} of {summary['params_total']:,} weights), {summary['n_skip']} skipped")
        for reason, n in summary["skip_reasons"].items():
            print(f"  skipped {n}: {reason}")
    if args.out:
        C.say(f"wrote {res.save(args.out)}")
    if not res.rows:
        raise MeasurementError("no weight matrices found in the source")
    return 0


def cmd_smooth(args: argparse.Namespace) -> int:
    from htsr.errors import ConfigError
    from htsr.spectra.smooth import smooth

    if args.rule == "rank" and args.rank is None:
        raise ConfigError("--rule rank needs --rank K")
    if args.rule != "rank" and args.rank is not None:
        raise ConfigError(f"--rank is only used by --rule rank, not --rule {args.rule}")
    res = smooth(_source(args), args.out or args.out_dir, rule=args.rule, rank=args.rank, preset=args.preset,
                 overwrite=args.overwrite, **_options(args))
    if args.json:
        C.print_json({"path": str(res.path), "rows": res.rows})
    else:
        _print_table(res.rows, SMOOTH_TABLE)
        print(f"smoothed {res.n_smoothed}/{len(res.rows)} selected matrices (rule {args.rule})")
    C.say(f"wrote {res.path}")
    return 0
