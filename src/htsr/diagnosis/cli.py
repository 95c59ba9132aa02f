"""``htsr mdtree``: reproduce the MD tree table, label a population, fit and apply an MD tree, and run the
whole pipeline on a model family of one's own.

Sub-commands: ``reproduce`` (Table B of the paper on the shared population), ``label`` (room for
improvement labels of a population CSV), ``fit`` (an MD tree on a labelled CSV, saved as JSON),
``predict`` (a saved tree on a CSV), ``population`` (train and measure a small population of the digits
CNN family; resumable) and ``diagnose`` (advice for two models of a new configuration, from a population).
Exit codes: 0 success, 1 a reproduced number outside its tolerance (``reproduce --check``) or failed
population configurations, 2 bad usage or input. Input files are never modified.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from htsr.cli.common import error, float_list, int_list


def _csv_list(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


# ``htsr.diagnosis.mdtree.TASKS`` (kept here so building the parser does not import scikit-learn).
TASK_NAMES = ("data", "temperature", "temperature-cka", "width")
# ``htsr.diagnosis.pipeline.GRIDS`` (same reason).
GRID_NAMES = ("small", "tiny")


def _bounds(s: str) -> list[tuple[float, float]]:
    try:
        return [tuple(float(v) for v in part.split(":")) for part in _csv_list(s)]  # type: ignore[misc]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected LOW:HIGH pairs separated by commas, e.g. 0:1,-30:0,4:9; "
                                         f"got {s!r}") from e


def register(subparsers: Any) -> None:
    """Add ``mdtree`` with its sub-commands (each sets ``func``: args -> exit code)."""
    p = subparsers.add_parser("mdtree", help="MD tree model diagnosis: reproduce the paper, label, fit, predict",
                              description="Diagnose why trained models fail (batch size too large/small, model "
                                          "or data too small) from training error, mode connectivity and Hessian "
                                          "trace with the fixed-structure MD tree (ICML 2024).")
    sub = p.add_subparsers(dest="mdtree_command", required=True)

    r = sub.add_parser("reproduce", help="reproduce the paper's Table B on the shared MD population",
                       description="Cases 1-5 (Q1 random 96 configs, Q1 data <= 5K, Q1 params <= 0.011M, Q2-width "
                                   "random 167 configs, Q2-width data <= 5K): MD tree and baselines, mean over seeds, "
                                   "next to the published accuracies.")
    r.add_argument("--data-dir", default=None,
                   help="folder with dataframe_normal_public.csv and dataframe_noise_public.csv "
                        "(default: $HTSR_MDTREE_DATA or ../shared/data/mdtree)")
    r.add_argument("--out", default=None, metavar="FILE", help="write the long table (.csv or .parquet)")
    r.add_argument("--cases", type=int_list, default=None, metavar="N,N", help="subset of cases 1-5")
    r.add_argument("--seeds", type=int_list, default=None, metavar="S,S",
                   help="seeds (default the paper's 42,90,38,18,72)")
    r.add_argument("--baseline-seeding", choices=["per-seed", "pinned"], default="per-seed",
                   help="decision-tree random_state: per seed (default; matches the published table) or pinned "
                        "to the first seed (what the public reference code does)")
    r.add_argument("--extras", action="store_true",
                   help="also the CKA variant of the Q1 MD tree and a free tree on loss-landscape features")
    r.add_argument("--markdown", action="store_true", help="print a Markdown table")
    r.add_argument("--check", action="store_true",
                   help="exit 1 unless MD tree is within 0.1 point and the baselines within 1 point of the paper")
    r.set_defaults(func=cmd_reproduce)

    lab = sub.add_parser("label", help="room-for-improvement labels of a population CSV",
                         description="Add rfi_* columns and the bs_failure / width_vs_batch / data_vs_batch labels "
                                     "from a grid of configurations (columns bs, and width and/or data) and a score.")
    lab.add_argument("csv", help="population CSV, one row per configuration (mean over seeds)")
    lab.add_argument("--score", default="test_acc", help="column to maximise (default test_acc)")
    lab.add_argument("--out", required=True, metavar="FILE", help="labelled table (.csv or .parquet)")
    lab.set_defaults(func=cmd_label)

    f = sub.add_parser("fit", help="fit an MD tree's thresholds on a labelled population CSV",
                       description="Fit the thresholds of a fixed-structure MD tree (rows labelled 'optimal' are "
                                   "dropped) and save it as JSON.")
    f.add_argument("csv", help="population CSV with the feature columns and the label column")
    f.add_argument("--task", choices=TASK_NAMES, default="temperature",
                   help="temperature (Q1, default), temperature-cka, width (Q2 width vs batch), data (Q2 data vs "
                        "batch)")
    f.add_argument("--label", default=None, help="label column (default: bs_failure / width_vs_batch / data_vs_batch)")
    f.add_argument("--features", type=_csv_list, default=None, metavar="COLS",
                   help="feature columns in the tree's order (default: the paper's names)")
    f.add_argument("--bounds", type=_bounds, default=None, metavar="LO:HI,...",
                   help="search interval per threshold, in fitting order (default the paper's, e.g. temperature "
                        "0:1,-30:0,4:9: train error %%, connectivity peak %%, ln trace)")
    f.add_argument("--label-from-grid", action="store_true",
                   help="compute the labels from the grid (bs/width/data) and --score instead of reading them")
    f.add_argument("--score", default="test_acc", help="score column for --label-from-grid (default test_acc)")
    f.add_argument("--min-width", type=int, default=None, help="keep rows with width >= N (the paper: 32 for data)")
    f.add_argument("--out", required=True, metavar="MODEL.json", help="where to save the fitted tree")
    f.set_defaults(func=cmd_fit)

    q = sub.add_parser("predict", help="apply a saved MD tree to a population CSV",
                       description="Predict the failure source of each row; prints the accuracy when the label "
                                   "column is present.")
    q.add_argument("model", help="MODEL.json written by `htsr mdtree fit`")
    q.add_argument("csv", help="population CSV with the tree's feature columns")
    q.add_argument("--label", default=None, help="label column to score against (default: the task's, if present)")
    q.add_argument("--out", default=None, metavar="FILE",
                   help="the input table plus 'prediction' and 'leaf' columns (.csv or .parquet)")
    q.set_defaults(func=cmd_predict)

    pop = sub.add_parser("population", help="train and measure a small population of your own (resumable)",
                         description="Train the digits CNN family over a grid of widths x batch sizes x data "
                                     "fractions x seeds with the shared training loop, measure each configuration "
                                     "(train error, Bezier connectivity peak between seeds, ln Hessian trace, CKA) "
                                     "and store one row per configuration in --out. Rerunning resumes: finished "
                                     "configurations are not retrained.")
    pop.add_argument("--out", required=True, metavar="DIR", help="population folder (created; resumed if present)")
    pop.add_argument("--grid", choices=GRID_NAMES, default="small",
                     help="small (3 widths x 3 batch sizes x 2 fractions x 2 seeds, default) or tiny (smoke test)")
    pop.add_argument("--widths", type=int_list, default=None, metavar="W,W", help="override the grid's widths")
    pop.add_argument("--batch-sizes", type=int_list, default=None, metavar="B,B", help="override the batch sizes")
    pop.add_argument("--data", type=float_list, default=None, metavar="F,F",
                     help="override the training-data fractions (in (0, 1])")
    pop.add_argument("--epochs", type=int, default=None, help="override the training epochs")
    pop.add_argument("--max-configs", type=int, default=None, metavar="N",
                     help="train at most N new configurations, then stop (rerun to continue)")
    pop.add_argument("--no-models", action="store_true", help="do not keep the trained models' weights")
    pop.set_defaults(func=cmd_population)

    dg = sub.add_parser("diagnose", help="say what to change for a new configuration of the population's family",
                        description="Measure two models trained the same way (different seeds) like the "
                                    "population, apply the MD trees fitted on the population, and print advice "
                                    "such as 'batch size too large: lower it'.")
    dg.add_argument("weights", nargs="+", metavar="WEIGHTS",
                    help="two (or more) checkpoint folders or .safetensors files of the family, one per seed")
    dg.add_argument("--population", required=True, metavar="DIR", help="folder written by `htsr mdtree population`")
    dg.add_argument("--data", type=float, default=1.0,
                    help="fraction of the training data the models were trained on (default 1.0)")
    dg.add_argument("--bounds", choices=["auto", "paper"], default="auto",
                    help="threshold search bounds: the population's observed ranges (default) or the paper's units")
    dg.add_argument("--out", default=None, metavar="FILE.json", help="also write features, predictions and advice")
    dg.set_defaults(func=cmd_diagnose)


def _check_out(path: str | None) -> str | None:
    from pathlib import Path

    if path is not None and Path(path).suffix.lower() not in (".csv", ".parquet"):
        return f"--out {path}: unsupported format; expected .csv or .parquet"
    return None


def cmd_reproduce(args: argparse.Namespace) -> int:
    """Run ``htsr mdtree reproduce``."""
    import time

    from htsr.diagnosis.reproduce import reproduce_table
    from htsr.diagnosis.transfer import PAPER_SEEDS
    from htsr.errors import HtsrError
    from htsr.io import write_table

    if (msg := _check_out(args.out)) is not None:
        return error(msg)
    seeds = args.seeds or list(PAPER_SEEDS)
    t0 = time.perf_counter()
    try:
        table = reproduce_table(args.data_dir, args.cases, seeds, args.baseline_seeding, args.extras)
    except (HtsrError, ValueError, OSError) as e:
        return error(str(e))
    wall = time.perf_counter() - t0
    from htsr.diagnosis.reproduce import format_table

    print(format_table(table, markdown=args.markdown), end="")
    checked = table[table["within_tolerance"].notna()]
    bad = checked[~checked["within_tolerance"].astype(bool)]
    paper_seeds = list(seeds) == list(PAPER_SEEDS)
    print(f"{len(checked) - len(bad)}/{len(checked)} published numbers reproduced within tolerance "
          f"(MD tree 0.1, baselines 1.0 point); seeds {seeds}; baseline seeding {args.baseline_seeding}; "
          f"{wall:.1f} s")
    for _, row in bad.iterrows():
        print(f"  case {row['case']} {row['method']}: {row['reproduced']:.3f} vs published {row['published']:.2f} "
              f"(diff {row['diff']:+.3f})", file=sys.stderr)
    if args.out:
        try:
            print(f"wrote {write_table(args.out, table)}", file=sys.stderr)
        except (OSError, ValueError) as e:
            return error(f"cannot write {args.out}: {e}")
    if args.check and (len(bad) or not paper_seeds):
        if not paper_seeds:
            print("htsr: --check compares with the paper only at its seeds 42,90,38,18,72", file=sys.stderr)
        return 1
    return 0


def _read_csv(path: str):
    from htsr.diagnosis.population import load_population

    return load_population(path)


def cmd_label(args: argparse.Namespace) -> int:
    """Run ``htsr mdtree label``."""
    from htsr.diagnosis.labels import label_population
    from htsr.errors import HtsrError
    from htsr.io import write_table

    if (msg := _check_out(args.out)) is not None:
        return error(msg)
    try:
        out = label_population(_read_csv(args.csv), score=args.score)
        path = write_table(args.out, out)
    except (HtsrError, ValueError, OSError) as e:
        return error(str(e))
    for c in ("bs_failure", "width_vs_batch", "data_vs_batch"):
        if c in out:
            counts = out[c].value_counts().to_dict()
            print(f"{c}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    print(f"wrote {path}", file=sys.stderr)
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    """Run ``htsr mdtree fit``."""
    from htsr.diagnosis.labels import drop_optimal, label_population
    from htsr.diagnosis.mdtree import TASK_LABELS, TASKS
    from htsr.errors import HtsrError
    from htsr.io import write_json

    label = args.label or TASK_LABELS[args.task]
    try:
        frame = _read_csv(args.csv)
        if args.label_from_grid:
            frame = label_population(frame, score=args.score)
        if args.min_width is not None:
            if "width" not in frame.columns:
                return error("--min-width needs a 'width' column")
            frame = frame[frame["width"] >= args.min_width]
        train = drop_optimal(frame, label)
        est = TASKS[args.task](features=args.features, bounds=args.bounds).fit(train, train[label])
        path = write_json(args.out, est.to_dict())
    except (HtsrError, ValueError, OSError) as e:
        return error(str(e))
    print(est.export_text(X=train), end="")
    print(f"fitted on {len(train)} configurations ({len(frame) - len(train)} 'optimal' dropped): "
          f"training accuracy {100 * est.train_accuracy_:.2f}%")
    print(f"wrote {path}", file=sys.stderr)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Run ``htsr mdtree predict``."""
    from pathlib import Path

    from htsr.diagnosis.labels import drop_optimal
    from htsr.diagnosis.mdtree import TASK_LABELS, TASKS, load_tree
    from htsr.errors import HtsrError
    from htsr.io import write_table

    if (msg := _check_out(args.out)) is not None:
        return error(msg)
    try:
        try:
            spec = json.loads(Path(args.model).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return error(f"{args.model}: not a JSON model file ({e})")
        est = load_tree(spec)
        frame = _read_csv(args.csv)
        pred = est.predict(frame)
        leaf = est.apply(frame)
        task = next(t for t, c in TASKS.items() if isinstance(est, c) and type(est) is c)
        label = args.label or TASK_LABELS[task]
        out = frame.copy()
        out["prediction"] = pred
        out["leaf"] = leaf
        if args.out:
            print(f"wrote {write_table(args.out, out)}", file=sys.stderr)
    except (HtsrError, ValueError, OSError) as e:
        return error(str(e))
    counts = out["prediction"].value_counts().to_dict()
    print("predicted: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    if label in frame.columns:
        scored = drop_optimal(frame, label)
        if len(scored):
            try:
                acc = est.score(scored, scored[label])
            except HtsrError as e:
                return error(str(e))
            print(f"accuracy on {len(scored)} labelled configurations ({label}): {100 * acc:.2f}%")
    elif args.label:
        return error(f"label column {args.label!r} not in {args.csv}")
    return 0


def cmd_population(args: argparse.Namespace) -> int:
    """Run ``htsr mdtree population``."""
    import time
    from dataclasses import replace

    from htsr.diagnosis.pipeline import GRIDS, build_population
    from htsr.errors import HtsrError

    changes = {k: tuple(v) if isinstance(v, list) else v for k, v in
               (("widths", args.widths), ("batch_sizes", args.batch_sizes), ("data_fractions", args.data),
                ("epochs", args.epochs)) if v is not None}
    t0 = time.perf_counter()
    try:
        config = replace(GRIDS[args.grid], **changes)
        frame = build_population(config, args.out, max_new=args.max_configs, save_models=not args.no_models)
    except (HtsrError, ValueError, OSError) as e:
        return error(str(e))
    a = frame.attrs
    print(f"{len(frame)}/{config.n_configs} configurations finished ({a['n_trained']} trained now, "
          f"{a['n_resumed']} resumed) in {time.perf_counter() - t0:.1f} s; population in {args.out}")
    if len(frame):
        cols = [c for c in ("width", "bs", "data", "test_acc", "train_error", "mode_connectivity_peak", "hessian_t",
                            "CKA") if c in frame]
        print(frame[cols].round(3).to_string(index=False))
    for f in a["failed"]:
        print(f"htsr: failed: {f}", file=sys.stderr)
    if a["n_missing"] and not a["failed"]:
        print(f"{a['n_missing']} configuration(s) left: rerun the same command to continue", file=sys.stderr)
    return 1 if a["failed"] else 0


def cmd_diagnose(args: argparse.Namespace) -> int:
    """Run ``htsr mdtree diagnose``."""
    from htsr.diagnosis.pipeline import diagnose, fit_diagnoser, load_population_dir
    from htsr.errors import HtsrError
    from htsr.io import write_json

    if not 0 < args.data <= 1:
        return error(f"--data must be in (0, 1], got {args.data}")
    try:
        frame, config = load_population_dir(args.population)
        diag = fit_diagnoser(frame, bounds=args.bounds)
        result = diagnose(args.weights, diagnoser=diag, config=config, data=args.data)
    except (HtsrError, ValueError, OSError) as e:
        return error(str(e))
    for task, tree in diag.trees.items():
        print(f"{task} tree fitted on {diag.n_train[task]} configurations: training accuracy "
              f"{100 * tree.train_accuracy_:.1f}%")
    print(str(result), end="")
    if args.out:
        try:
            print(f"wrote {write_json(args.out, result.to_dict())}", file=sys.stderr)
        except (OSError, ValueError) as e:
            return error(f"cannot write {args.out}: {e}")
    return 0
