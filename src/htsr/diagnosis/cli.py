"""``htsr mdtree``: reproduce the MD tree table, label a population, fit and apply an MD tree, and run the
whole method on a model family of one's own.

Sub-commands: ``reproduce`` (Table B of the paper on the shipped MD population), ``label`` (room for
improvement labels of a population CSV), ``fit`` (an MD tree on a labelled CSV, saved as JSON),
``predict`` (a saved tree on a CSV), ``population`` (train and measure a small population of the digits
CNN family; resumable) and ``diagnose`` (advice for two models of a new configuration, from a population).
Options and exit codes follow docs/cli.md; exit 1 also means a reproduced number outside its tolerance
(``reproduce --check``) or failed population configurations. Input files are never modified.
"""

from __future__ import annotations

import argparse
from typing import Any

from htsr.cli import common as C
from htsr.diagnosis.config import GRIDS, TASK_LABELS, TASK_NAMES

TABLES = (".csv", ".parquet")
#: The case numbers of ``htsr.diagnosis.reproduce.CASES`` (kept here so building the parser imports no sklearn).
CASE_NUMBERS = (1, 2, 3, 4, 5)


def _bounds(s: str) -> list[tuple[float, float]]:
    """argparse type for ``LO:HI,LO:HI,...``: finite pairs with LO < HI."""
    import math

    try:
        pairs = [tuple(float(v) for v in part.split(":")) for part in C.name_list(s)]
    except (ValueError, argparse.ArgumentTypeError):
        pairs = []
    if not pairs or any(len(p) != 2 or not all(map(math.isfinite, p)) or p[0] >= p[1] for p in pairs):
        raise argparse.ArgumentTypeError(f"expected LOW:HIGH pairs (LOW < HIGH) separated by commas, e.g. "
                                         f"0:1,-30:0,4:9; got {s!r}")
    return pairs  # type: ignore[return-value]


def _cases(s: str) -> list[int]:
    """argparse type: case numbers of Table B."""
    out = C.int_list(s)
    bad = [c for c in out if c not in CASE_NUMBERS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown case(s) {bad}; expected numbers in {list(CASE_NUMBERS)}")
    return out


def _seeds(s: str) -> list[int]:
    """argparse type: seeds of numpy's RandomState, 0 <= S < 2**32."""
    out = C.int_list(s)
    bad = [v for v in out if not 0 <= v < 2**32]
    if bad:
        raise argparse.ArgumentTypeError(f"seeds must be in [0, 2**32), got {bad}")
    return out


def register(subparsers: Any) -> None:
    """Add ``mdtree`` with its sub-commands (each sets ``func``: args -> exit code)."""
    p = subparsers.add_parser("mdtree", help="MD tree model diagnosis: reproduce the paper, label, fit, predict",
                              description="Diagnose why trained models fail (batch size too large/small, model "
                                          "or data too small) from training error, mode connectivity and Hessian "
                                          "trace with the fixed-structure MD tree (ICML 2024).")
    sub = p.add_subparsers(dest="mdtree_command", required=True)

    r = sub.add_parser("reproduce", help="reproduce the paper's Table B on the MD population (shipped)",
                       description="Cases 1-5 (Q1 random 96 configs, Q1 data <= 5K, Q1 params <= 0.011M, Q2-width "
                                   "random 167 configs, Q2-width data <= 5K): MD tree and baselines, mean over seeds, "
                                   "next to the published accuracies.")
    r.add_argument("--data-dir", default=None, metavar="DIR",
                   help="folder with dataframe_normal_public.csv and dataframe_noise_public.csv (default: the copies "
                        "shipped with htsr)")
    C.add_out(r, TABLES, "write the long table: one row per case and method")
    r.add_argument("--cases", type=_cases, default=None, metavar="N,N", help="subset of cases 1-5")
    r.add_argument("--seeds", type=_seeds, default=None, metavar="S,S",
                   help="seeds (default the paper's 42,90,38,18,72)")
    r.add_argument("--baseline-seeding", choices=["per-seed", "pinned"], default="per-seed",
                   help="decision-tree random_state: per seed (default; matches the published table) or pinned "
                        "to the first seed (what the public reference code does)")
    r.add_argument("--extras", action="store_true",
                   help="also the CKA variant of the Q1 MD tree and a free tree on loss-landscape features")
    r.add_argument("--markdown", action="store_true", help="print a Markdown table")
    r.add_argument("--check", action="store_true",
                   help="exit 1 unless MD tree is within 0.1 point and the baselines within 1 point of the paper")
    C.add_json(r)
    r.set_defaults(func=cmd_reproduce)

    lab = sub.add_parser("label", help="room-for-improvement labels of a population CSV",
                         description="Add rfi_* columns and the bs_failure / width_vs_batch / data_vs_batch labels "
                                     "from a grid of configurations (columns bs, and width and/or data) and a score.")
    lab.add_argument("csv", help="population CSV, one row per configuration (mean over seeds)")
    lab.add_argument("--score", default="test_acc", help="column to maximise (default test_acc)")
    C.add_out(lab, TABLES, "the labelled table (never the input)", required=True)
    C.add_json(lab)
    lab.set_defaults(func=cmd_label)

    f = sub.add_parser("fit", help="fit an MD tree's thresholds on a labelled population CSV",
                       description="Fit the thresholds of a fixed-structure MD tree (rows labelled 'optimal' are "
                                   "dropped) and save it as JSON.")
    f.add_argument("csv", help="population CSV with the feature columns and the label column")
    f.add_argument("--task", choices=TASK_NAMES, default="temperature",
                   help="temperature (Q1, default), temperature-cka, width (Q2 width vs batch), data (Q2 data vs "
                        "batch)")
    f.add_argument("--label", default=None, help="label column (default: bs_failure / width_vs_batch / data_vs_batch)")
    f.add_argument("--features", type=C.name_list, default=None, metavar="COLS",
                   help="feature columns in the tree's order (default: the paper's names)")
    f.add_argument("--bounds", type=_bounds, default=None, metavar="LO:HI,...",
                   help="search interval per threshold, in fitting order (default the paper's, e.g. temperature "
                        "0:1,-30:0,4:9: train error %%, connectivity peak %%, ln trace)")
    f.add_argument("--label-from-grid", action="store_true",
                   help="compute the labels from the grid (bs/width/data) and --score instead of reading them")
    f.add_argument("--score", default="test_acc", help="score column for --label-from-grid (default test_acc)")
    f.add_argument("--min-width", type=C.positive_int, default=None, metavar="N",
                   help="keep rows with width >= N (the paper: 32 for data)")
    C.add_out(f, (".json",), "where to save the fitted tree", required=True)
    C.add_set(f, "the threshold search (xatol, maxiter)")
    C.add_json(f)
    f.set_defaults(func=cmd_fit)

    q = sub.add_parser("predict", help="apply a saved MD tree to a population CSV",
                       description="Predict the failure source of each row; prints the accuracy when the label "
                                   "column is present.")
    q.add_argument("model", help="MODEL.json written by `htsr mdtree fit`")
    q.add_argument("csv", help="population CSV with the tree's feature columns")
    q.add_argument("--label", default=None, help="label column to score against (default: the task's, if present)")
    C.add_out(q, TABLES, "the input table plus 'prediction' and 'leaf' columns (never the input)")
    C.add_json(q)
    q.set_defaults(func=cmd_predict)

    pop = sub.add_parser("population", help="train and measure a small population of your own (resumable)",
                         description="Train the CNN family (digits, or Fashion-MNIST with --grid fashion) over a "
                                     "grid of widths x batch sizes x data "
                                     "fractions x seeds with the shared training loop, measure each configuration "
                                     "(train error, Bezier connectivity peak between seeds, ln Hessian trace, CKA) "
                                     "and store one row per configuration in --out-dir. Rerunning resumes: finished "
                                     "configurations are not retrained; a folder of another configuration is "
                                     "refused.")
    C.add_out_dir(pop, "population folder (created; resumed when it holds the same configuration)")
    pop.add_argument("--grid", choices=GRIDS.names(), default=None,
                     help="small (3 widths x 3 batch sizes x 2 fractions x 2 seeds; the default for a new folder), "
                          "tiny (smoke test), fashion (96 configurations on Fashion-MNIST, 2 CPU cores), "
                          "fashion-noisy (the same, 10%% label noise), "
                          "fashion-full (144 x 5 seeds, all 60,000 images, device=cuda) or fashion-tiny; without "
                          "--grid and --set an existing folder resumes its own")
    C.add_set(pop, "the grid and recipe (e.g. widths=1,2,4 batch_sizes=16,64 data_fractions=0.5,1 epochs=10)")
    pop.add_argument("--max-configs", type=C.nonneg_int, default=None, metavar="N",
                     help="train at most N new configurations, then stop (rerun to continue)")
    pop.add_argument("--no-models", action="store_true", help="do not keep the trained models' weights")
    C.add_threads(pop)
    C.add_progress(pop)
    C.add_executor(pop)
    C.add_json(pop)
    pop.set_defaults(func=cmd_population)

    dg = sub.add_parser("diagnose", help="say what to change for a new configuration of the population's family",
                        description="Measure two models trained the same way (different seeds) like the "
                                    "population, apply the MD trees fitted on the population, and print advice "
                                    "such as 'batch size too large: lower it'.")
    dg.add_argument("weights", nargs="+", metavar="WEIGHTS",
                    help="two (or more) checkpoint folders or .safetensors files of the family, one per seed")
    dg.add_argument("--population", required=True, metavar="DIR", help="folder written by `htsr mdtree population`")
    dg.add_argument("--data", type=C.fraction, default=1.0,
                    help="fraction of the training data the models were trained on, in (0, 1] (default 1.0)")
    C.add_set(dg, "the diagnoser (tasks, bounds=auto|paper, score, xatol, maxiter)")
    C.add_seed(dg, help="seed of the measurement (Hessian probes, curve training, mixup)")
    C.add_out(dg, (".json",), "also write features, predictions and advice")
    C.add_threads(dg)
    C.add_json(dg)
    dg.set_defaults(func=cmd_diagnose)


def _counts(series) -> dict[str, int]:
    return {str(k): int(v) for k, v in sorted(series.value_counts().items())}


def cmd_reproduce(args: argparse.Namespace) -> int:
    """Run ``htsr mdtree reproduce``."""
    import time

    from htsr.diagnosis.reproduce import format_table, reproduce_table
    from htsr.diagnosis.transfer import PAPER_SEEDS
    from htsr.io import check_not_input, write_table

    if args.out:
        check_not_input(args.out, [args.data_dir])
    seeds = args.seeds or list(PAPER_SEEDS)
    t0 = time.perf_counter()
    table = reproduce_table(args.data_dir, args.cases, seeds, args.baseline_seeding, args.extras)
    wall = time.perf_counter() - t0
    checked = table[table["within_tolerance"].notna()]
    bad = checked[~checked["within_tolerance"].astype(bool)]
    paper_seeds = list(seeds) == list(PAPER_SEEDS)
    summary = (f"{len(checked) - len(bad)}/{len(checked)} published numbers reproduced within tolerance "
               f"(MD tree 0.1, baselines 1.0 point); seeds {seeds}; baseline seeding {args.baseline_seeding}; "
               f"{wall:.1f} s")
    if args.json:
        C.print_json({"rows": table.to_dict("records"), "within_tolerance": len(checked) - len(bad),
                      "checked": len(checked), "seeds": list(seeds), "wall_s": wall})
    else:
        print(format_table(table, markdown=args.markdown), end="")
        print(summary)
    for _, row in bad.iterrows():
        C.say(f"  case {row['case']} {row['method']}: {row['reproduced']:.3f} vs published {row['published']:.2f} "
              f"(diff {row['diff']:+.3f})")
    if args.out:
        C.say(f"wrote {write_table(args.out, table)}")
    if args.check and (len(bad) or not paper_seeds):
        if not paper_seeds:
            C.say("htsr: --check compares with the paper only at its seeds 42,90,38,18,72")
        return 1
    return 0


def cmd_label(args: argparse.Namespace) -> int:
    """Run ``htsr mdtree label``."""
    from htsr.diagnosis.labels import label_population
    from htsr.diagnosis.population import load_population, validate_population
    from htsr.io import check_not_input, write_table

    check_not_input(args.out, [args.csv])
    frame = load_population(args.csv, ["bs", args.score])
    validate_population(frame, [c for c in ("width", "data") if c in frame.columns], name=args.csv)
    out = label_population(frame, score=args.score)
    path = write_table(args.out, out)
    counts = {c: _counts(out[c]) for c in ("bs_failure", "width_vs_batch", "data_vs_batch") if c in out}
    if args.json:
        C.print_json({"labels": counts, "rows": len(out), "out": str(path)})
    else:
        for c, n in counts.items():
            print(f"{c}: " + ", ".join(f"{k} {v}" for k, v in n.items()))
    C.say(f"wrote {path}")
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    """Run ``htsr mdtree fit``."""
    from htsr.diagnosis.config import TreeConfig
    from htsr.diagnosis.errors import DiagnosisError
    from htsr.diagnosis.labels import drop_optimal, label_population
    from htsr.diagnosis.mdtree import TASKS
    from htsr.diagnosis.population import load_population
    from htsr.io import check_not_input, write_json

    check_not_input(args.out, [args.csv])
    search = TreeConfig.from_dict(C.overrides(args))
    est = TASKS[args.task](features=args.features, bounds=args.bounds, **search.to_dict())
    label = args.label or TASK_LABELS[args.task]
    feats = list(est.spec.features if args.features is None else args.features)
    if args.label_from_grid:
        frame = load_population(args.csv, ["bs", args.score, *feats])
        frame = label_population(frame, score=args.score)
    else:
        frame = load_population(args.csv, feats, [label])
    if args.min_width is not None:
        if "width" not in frame.columns:
            raise DiagnosisError(f"{args.csv}: --min-width needs a 'width' column")
        frame = frame[frame["width"] >= args.min_width]
    train = drop_optimal(frame, label)
    est.fit(train, train[label])
    path = write_json(args.out, est.to_dict())
    if args.json:
        C.print_json({**est.to_dict(), "n_train": len(train), "n_optimal_dropped": len(frame) - len(train)})
    else:
        print(est.export_text(X=train), end="")
        print(f"fitted on {len(train)} configurations ({len(frame) - len(train)} 'optimal' dropped): "
              f"training accuracy {100 * est.train_accuracy_:.2f}%")
    C.say(f"wrote {path}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Run ``htsr mdtree predict``."""
    from htsr.diagnosis.errors import DiagnosisError
    from htsr.diagnosis.labels import drop_optimal
    from htsr.diagnosis.mdtree import read_tree, task_of
    from htsr.diagnosis.population import load_population
    from htsr.io import check_not_input, write_table

    if args.out:
        check_not_input(args.out, [args.model, args.csv])
    est = read_tree(args.model)
    frame = load_population(args.csv, est.feature_names_)
    label = args.label or TASK_LABELS[task_of(est)]
    if args.label and label not in frame.columns:
        raise DiagnosisError(f"{args.csv}: no label column {label!r}")
    out = frame.copy()
    out["prediction"] = est.predict(frame)
    out["leaf"] = est.apply(frame)
    result: dict[str, Any] = {"predicted": _counts(out["prediction"]), "rows": len(out)}
    if label in frame.columns:
        scored = drop_optimal(frame, label)
        if len(scored):
            result.update(label=label, n_scored=len(scored), accuracy=est.score(scored, scored[label]))
    if args.out:
        C.say(f"wrote {write_table(args.out, out)}")
    if args.json:
        C.print_json(result)
        return 0
    print("predicted: " + ", ".join(f"{k} {v}" for k, v in result["predicted"].items()))
    if "accuracy" in result:
        print(f"accuracy on {result['n_scored']} labelled configurations ({label}): {100 * result['accuracy']:.2f}%")
    return 0


def cmd_population(args: argparse.Namespace) -> int:
    """Run ``htsr mdtree population``."""
    import time

    from htsr.diagnosis.own_population import build_population

    sets = C.overrides(args)
    config = GRIDS.get(args.grid or "small").replace(**sets) if (args.grid or sets) else None
    t0 = time.perf_counter()
    with C.executor_from_args(args) as executor:
        frame = build_population(config, args.out_dir, max_new=args.max_configs, save_models=not args.no_models,
                                 progress=args.progress, overwrite=args.overwrite, executor=executor)
    a = frame.attrs
    cols = [c for c in ("width", "bs", "data", "test_acc", "train_error", "mode_connectivity_peak", "hessian_t",
                        "CKA") if c in frame]
    if args.json:
        C.print_json({"finished": len(frame), "configurations": a["config"].n_configs, "trained": a["n_trained"],
                      "resumed": a["n_resumed"], "failed": a["failed"], "rows": frame[cols].to_dict("records")})
    else:
        print(f"{len(frame)}/{a['config'].n_configs} configurations finished ({a['n_trained']} trained now, "
              f"{a['n_resumed']} resumed) in {time.perf_counter() - t0:.1f} s; population in {args.out_dir}")
        if len(frame):
            print(frame[cols].round(3).to_string(index=False))
    for f in a["failed"]:
        C.say(f"htsr: failed: {f}")
    if a["n_missing"] and not a["failed"]:
        C.say(f"{a['n_missing']} configuration(s) left: rerun the same command to continue")
    return 1 if a["failed"] else 0


def cmd_diagnose(args: argparse.Namespace) -> int:
    """Run ``htsr mdtree diagnose``."""
    from htsr.diagnosis.advice import diagnose
    from htsr.diagnosis.config import DiagnoserConfig
    from htsr.io import check_not_input, write_json

    if args.out:
        check_not_input(args.out, [*args.weights, args.population])
    fit_config = DiagnoserConfig.from_dict(C.overrides(args))
    result = diagnose(args.weights, args.population, fit_config=fit_config, data=args.data, seed=args.seed)
    if args.json:
        C.print_json(result.to_dict())
    else:
        print(str(result), end="")
    if args.out:
        C.say(f"wrote {write_json(args.out, result.to_dict())}")
    return 0

