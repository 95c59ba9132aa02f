"""``htsr sharpbalance``: train, evaluate and compare ensembles (deep ensemble, SAM ensemble, SharpBalance) on
Fashion-MNIST and its corrupted copies.

* ``htsr sharpbalance train --method sharpbalance --preset cpu --seed 0 --out-dir DIR``: train (or resume) one
  ensemble; ``DIR`` holds the member checkpoints and ``ensemble.json``.
* ``htsr sharpbalance evaluate DIR [-o eval.json|eval.csv] [--plot acc.png]``: every measure of one ensemble
  (``DIR`` from ``train``, or two or more member checkpoint directories).
* ``htsr sharpbalance compare --preset cpu --seeds 0,1,2 --out-dir DIR [-o summary.csv] [--plot cmp.png]``:
  the three methods over seeds, resumable (re-run the same command to continue).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from htsr.cli import common as C
from htsr.io import prepare_run_dir

METHOD_NAMES = ("deep_ensemble", "sam_ensemble", "sharpbalance")
PRESET_NAMES = ("cpu", "paper")


def register(subparsers: Any) -> None:
    """Add ``sharpbalance`` with its ``train``, ``evaluate`` and ``compare`` sub-commands."""
    p = subparsers.add_parser(
        "sharpbalance", help="SharpBalance ensembles vs deep and SAM ensembles (Fashion-MNIST, corruptions)",
        description="Train, evaluate and compare ensembles that balance sharpness and diversity (SharpBalance, "
                    "NeurIPS 2024) against deep ensembles and SAM ensembles, in and out of distribution.")
    sub = p.add_subparsers(dest="sb_command", required=True, metavar="COMMAND")

    def shared(q: argparse.ArgumentParser, *, preset_default: str | None = "cpu") -> None:
        q.add_argument("--preset", choices=PRESET_NAMES, default=preset_default,
                       help="settings preset: cpu (this machine, minutes) or paper (ResNet-18, 200 epochs, a GPU)"
                            + (f" (default {preset_default})" if preset_default else ""))
        C.add_set(q, "the ensemble configuration (e.g. --set k=0.3 --set leftover=complement)")
        q.add_argument("--data", metavar="DIR", default=None,
                       help="directory of the four Fashion-MNIST IDX files (default: $HTSR_FASHION_MNIST or "
                            "/usr/share/datasets/fashion-mnist)")
        q.add_argument("--cache-dir", metavar="DIR", default=None,
                       help="cache of the corrupted test sets (default: $HTSR_CACHE_DIR or ~/.cache/htsr)")
        C.add_threads(q)
        C.add_device(q)
        C.add_progress(q)
        C.add_json(q)

    t = sub.add_parser("train", help="train (or resume) one ensemble",
                       description="Train one ensemble; an interrupted run resumes from its member checkpoints "
                                   "when the same command is run again.")
    t.add_argument("--method", choices=METHOD_NAMES, default="sharpbalance", help="default sharpbalance")
    t.add_argument("--parallel", type=C.positive_int, default=None, metavar="N",
                   help="train members in N processes (default: the config's, 1 = one after another)")
    C.add_seed(t)
    shared(t)
    C.add_out_dir(t, "ensemble directory (member checkpoints, ensemble.json); an existing one of the same "
                     "configuration is resumed")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="accuracy, NLL, ECE, diversity and sharpness of one ensemble",
                       description="Evaluate an ensemble in distribution and on every corruption x severity.")
    e.add_argument("members", nargs="+", metavar="DIR",
                   help="an ensemble directory written by 'train', or two or more member checkpoint directories")
    C.add_seed(e, None, "seed of the sharpness batches and the training subset (default: the ensemble's)")
    shared(e, preset_default=None)
    C.add_out(e, (".json", ".csv"), "write the evaluation: .json everything, .csv one row per test set")
    C.add_plot(e, "ensemble accuracy against corruption severity (PNG)")
    e.set_defaults(func=cmd_evaluate)

    c = sub.add_parser("compare", help="deep ensemble vs SAM ensemble vs SharpBalance over seeds (resumable)",
                       description="Train and evaluate each method for each seed (a resumable sweep) and "
                                   "summarise mean and std over seeds.")
    c.add_argument("--methods", type=C.choice_list(METHOD_NAMES), default=METHOD_NAMES, metavar="M[,M...]",
                   help=f"methods to compare (default {','.join(METHOD_NAMES)})")
    c.add_argument("--seeds", type=C.int_list, default=[0, 1, 2], metavar="S[,S...]", help="default 0,1,2")
    shared(c)
    C.add_out_dir(c, "results directory (results.csv, cells/, runs/); an existing one of the same "
                     "configuration is resumed")
    C.add_out(c, (".csv", ".json"), "write the summary (mean and std over seeds per method and metric)")
    C.add_plot(c, "accuracy vs diversity and sharpness per method (PNG)")
    C.add_executor(c)
    c.set_defaults(func=cmd_compare)


# ----------------------------------------------------------------------------------- helpers
def _config(args: argparse.Namespace, base: dict[str, Any] | None = None, **fixed: Any):
    from htsr.ensembles.config import EnsembleConfig, preset_config

    over = dict(C.overrides(args))
    if args.data is not None:
        over["data_dir"] = args.data
    if args.cache_dir is not None:
        over["cache_dir"] = args.cache_dir
    if args.threads is not None:
        over.setdefault("threads", args.threads)
    if args.device not in (None, "auto"):
        over["device"] = args.device
    elif args.device == "auto":
        import torch

        over["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    over.update({k: v for k, v in fixed.items() if v is not None})
    if base is not None and args.preset is None:
        d = dict(base)
        d.update(over)
        return EnsembleConfig.from_dict(d)
    return preset_config(args.preset or "cpu", over)


def _say_table(rows: list[tuple[str, Any]]) -> None:
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{w}}  {v:.4f}" if isinstance(v, float) else f"{k:<{w}}  {v}")


# ----------------------------------------------------------------------------------- commands
def cmd_train(args: argparse.Namespace) -> int:
    from htsr.ensembles.ensemble import execution_free, train_ensemble
    from htsr.io import write_json

    cfg = _config(args, method=args.method, parallel=args.parallel)
    out = Path(args.out_dir)
    key = {"config": execution_free(cfg), "method": cfg.method, "seed": args.seed}
    resumed = prepare_run_dir(out, key, "ensemble.json", overwrite=args.overwrite)
    if resumed:
        C.say(f"resuming {out}")
    info = train_ensemble(cfg, args.seed, out)
    info["members"] = [os.path.relpath(p, out) for p in info["members"]]
    doc = {"format": "htsr.ensemble/1", "resume_key": key, "status": "done", "method": cfg.method,
           "seed": args.seed, "config": cfg.to_dict(), **info}
    write_json(out / "ensemble.json", doc)
    if args.json:
        C.print_json({k: v for k, v in doc.items() if k != "histories"})
    else:
        C.say(f"wrote {out} ({cfg.method}, {cfg.n_members} members, {info['timings']['train_s']:.1f} s)")
    return 0


def _members_from(paths: list[str]) -> tuple[list[Path], dict[str, Any] | None]:
    from htsr.ensembles.model import EnsembleError

    if len(paths) == 1 and (Path(paths[0]) / "ensemble.json").is_file():
        d = Path(paths[0])
        try:
            doc = json.loads((d / "ensemble.json").read_text())
        except (OSError, ValueError) as e:
            raise EnsembleError(f"{d / 'ensemble.json'} is not valid JSON ({e})") from None
        if doc.get("status") != "done" or "members" not in doc:
            raise EnsembleError(f"{d} holds an unfinished training; run 'htsr sharpbalance train' again to finish")
        return [d / m for m in doc["members"]], doc
    if len(paths) == 1:
        raise EnsembleError(f"{paths[0]} is neither an ensemble directory (no ensemble.json) nor one of two or "
                            "more member checkpoints: an ensemble needs at least 2 members")
    return [Path(p) for p in paths], None


def cmd_evaluate(args: argparse.Namespace) -> int:
    import pandas as pd

    from htsr.ensembles.ensemble import evaluate_ensemble, load_ensemble
    from htsr.io import check_not_input, write_json, write_table

    paths, doc = _members_from(args.members)
    for o in (args.out, args.plot):
        if o:
            check_not_input(o, paths)
    base = doc["config"] if doc else None
    seed = args.seed if args.seed is not None else (doc["seed"] if doc else 0)
    cfg = _config(args, base)
    models, metas = load_ensemble(paths, cfg.device)
    if doc is None:  # the spec in the checkpoints decides the model; the config only evaluates
        cfg = cfg.replace(n_members=len(models))
    ev = evaluate_ensemble(models, cfg, seed, progress=args.progress)
    ev["members"] = [str(p) for p in paths]
    ev["seed"] = seed
    if args.out:
        if str(args.out).lower().endswith(".json"):
            write_json(args.out, ev)
        else:
            rows = [{"test_set": "clean", "severity": 0, **{k: ev["clean"][k] for k in (
                "ensemble_accuracy", "ensemble_nll", "ensemble_ece", "mean_member_accuracy", "disagreement")}}]
            for fam, sev in ev["ood"]["by_family"].items():
                for s, r in sev.items():
                    rows.append({"test_set": fam, "severity": int(s), **r})
            write_table(args.out, pd.DataFrame(rows))
        C.say(f"wrote {args.out}")
    if args.plot:
        from htsr.ensembles.plots import plot_evaluation

        plot_evaluation(ev, args.plot, title=f"{len(models)}-member ensemble: {', '.join(str(p) for p in paths)}"[:120])
        C.say(f"wrote {args.plot}")
    if args.json:
        C.print_json(ev["summary"])
    else:
        _say_table(list(ev["summary"].items()))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from htsr.ensembles.ensemble import compare, execution_free, summarize_results
    from htsr.errors import MeasurementError
    from htsr.experiments.store import ResultStore
    from htsr.io import write_json, write_table

    cfg = _config(args)
    out = Path(args.out_dir)
    methods = list(args.methods)
    seeds = sorted(set(args.seeds))
    if any(s < 0 for s in seeds):
        from htsr.errors import ConfigError

        raise ConfigError(f"seeds must be >= 0, got {seeds}")
    key = {"config": execution_free(cfg)}
    resumed = prepare_run_dir(out, key, "compare.json", overwrite=args.overwrite)
    if resumed:
        C.say(f"resuming {out} ({len(ResultStore(out))} cell(s) recorded)")
    with C.executor_from_args(args) as executor:
        table = compare(cfg, methods, seeds, out, progress=args.progress, executor=executor)
    ok = table[table["status"] == "ok"] if "status" in table.columns else table
    ok = ok[ok["method"].isin(methods) & ok["seed"].isin(seeds)]
    if ok.empty:
        raise MeasurementError("every cell of the comparison failed; see results.csv and cells/*.json in "
                               f"{out}")
    summary = summarize_results(ok, methods)
    write_table(out / "summary.csv", summary)
    write_json(out / "compare.json", {"resume_key": key, "status": "done", "config": cfg.to_dict(),
                                      "methods": methods, "seeds": seeds})
    if args.out:
        C.write_out(args.out, summary)
    if args.plot:
        from htsr.ensembles.plots import plot_comparison

        plot_comparison(ok, args.plot, title=f"Fashion-MNIST, {cfg.n_members} members, seeds "
                                              f"{','.join(map(str, seeds))}, preset {args.preset}")
        C.say(f"wrote {args.plot}")
    failed = int((table["status"] != "ok").sum()) if "status" in table.columns else 0
    if args.json:
        C.print_json({"summary": summary.to_dict(orient="records"), "failed_cells": failed})
    else:
        wide = summary.pivot(index="metric", columns="method", values="mean")
        print(wide.reindex(columns=[m for m in methods if m in wide.columns]).to_string(float_format="%.4f"))
        if failed:
            C.say(f"{failed} cell(s) failed; see {out / 'results.csv'}")
    return 0
