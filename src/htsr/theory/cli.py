"""``htsr theory single-index``: the heavy-tails-without-gradient-noise study (arXiv 2406.04657).

Runs full-batch GD and Adam over a learning-rate grid on the two-layer single-index setup, prints the per-rate
table, and writes runs/history/summary tables (CSV), results.json, the kept eigenvalues (esd.npz) and PNG figures.

Exit codes: 0 success, 1 every run diverged, 2 bad usage or input.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from htsr.cli.common import error, float_list, set_threads

QUICK = {"n": 400, "n_test": 100, "d": 200, "h": 300}
TABLE_COLUMNS = ("optimizer", "lr", "n_runs", "alpha_hill", "alpha_ks", "alignment", "kta", "ridge_train_loss",
                 "ridge_test_loss", "spike_ratio", "spike_step", "tail_step", "time_s")



def _names(s: str) -> tuple[str, ...]:
    return tuple(x.strip().lower() for x in s.split(",") if x.strip())


def register(subparsers: Any) -> None:
    """Add ``theory`` with its ``single-index`` subcommand (sets ``func``: args -> exit code)."""
    t = subparsers.add_parser("theory", help="theory experiments (two-layer single-index heavy-tail study)",
                              description="Controlled experiments from the HT-SR theory papers.")
    tsub = t.add_subparsers(dest="theory_command", required=True)
    p = tsub.add_parser(
        "single-index", help="heavy tails from a few full-batch GD/Adam steps (arXiv 2406.04657)",
        description="Train a two-layer tanh student (last layer frozen) on a softplus single-index teacher with a "
                    "few full-batch GD or Adam steps for each learning rate, and measure the hidden layer's ESD "
                    "(Hill alpha with median xmin, KS-scan alpha), its alignment with the teacher, the kernel-target "
                    "alignment and ridge-refit losses. Defaults are the paper's (n=2000, d=1000, h=1500, 10 steps, "
                    "the 9-rate grid, GD and Adam).")
    p.add_argument("--optimizers", type=_names, default=("gd", "adam"), help="comma-separated: gd,adam (default both)")
    p.add_argument("--lrs", type=float_list, default=None,
                   help="comma-separated learning rates (default the paper's 1e-3,...,3000 grid)")
    p.add_argument("--repeats", type=int, default=1, help="repeats with seeds seed..seed+R-1 (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="full-batch steps (default 10)")
    p.add_argument("--n", type=int, default=None, help="training (and probe) samples (default 2000)")
    p.add_argument("--n-test", type=int, default=None, help="test samples (default 200)")
    p.add_argument("--d", type=int, default=None, help="input dimension (default 1000)")
    p.add_argument("--h", type=int, default=None, help="hidden width (default 1500)")
    p.add_argument("--label-noise", type=float, default=None, help="teacher label noise std (default 0.3)")
    p.add_argument("--ridge-lambda", type=float, default=None, help="ridge refit lambda (default 0.01)")
    p.add_argument("--lr-gamma", type=float, default=None, help="StepLR gamma per step (default constant rate)")
    p.add_argument("--measure-every", type=int, default=None, help="measure every k-th step (default 1)")
    p.add_argument("--train-last-layer", action="store_true", help="also train a (the paper freezes it)")
    p.add_argument("--reference-scaling", action="store_true",
                   help="reproduce the reference code's double 1/sqrt(d) scaling of the probe features (a bug)")
    p.add_argument("--quick", action="store_true",
                   help=f"small sizes for a smoke test ({', '.join(f'{k}={v}' for k, v in QUICK.items())}); "
                        "explicit size options override it")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--out", "-o", default=None, metavar="DIR",
                   help="write runs.csv, history.csv, summary.csv, results.json, esd.npz and figures here")
    p.add_argument("--no-plots", action="store_true", help="with --out: skip the PNG figures")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar over runs (default: when stderr is a terminal)")
    p.set_defaults(func=cmd_single_index)


def _format(summary) -> str:
    import pandas as pd

    cols = [c for c in TABLE_COLUMNS if c in summary.columns]
    with pd.option_context("display.max_rows", None, "display.max_columns", None, "display.width", 200,
                           "display.float_format", lambda v: f"{v:.4g}"):
        return summary[cols].to_string(index=False)


def cmd_single_index(args: argparse.Namespace) -> int:
    """Run ``htsr theory single-index``."""
    import time

    import torch

    from htsr.errors import HtsrError
    from htsr.theory.single_index import SingleIndexConfig
    from htsr.theory.sweep import LR_GRID, sweep

    changes: dict[str, Any] = dict(QUICK) if args.quick else {}
    for opt, field in (("n", "n"), ("n_test", "n_test"), ("d", "d"), ("h", "h"), ("steps", "steps"),
                       ("label_noise", "label_noise_std"), ("ridge_lambda", "ridge_lambda"),
                       ("lr_gamma", "lr_gamma"), ("measure_every", "measure_every")):
        v = getattr(args, opt)
        if v is not None:
            changes[field] = v
    changes["seed"] = args.seed
    changes["fix_last_layer"] = not args.train_last_layer
    if args.reference_scaling:
        changes["feature_scaling"] = "reference"
    try:
        set_threads(args.threads)
    except ValueError as e:
        return error(str(e))
    try:
        base = SingleIndexConfig(**changes)
        t0 = time.perf_counter()
        res = sweep(base, args.optimizers, args.lrs or LR_GRID, args.repeats, progress=args.progress)
    except (HtsrError, ValueError) as e:
        return error(str(e))
    wall = time.perf_counter() - t0
    summary = res.summary()
    print(_format(summary))
    bad = res.table[res.table["status"] != "ok"]
    for _, r in bad.iterrows():
        print(f"  diverged: {r['optimizer']} lr={r['lr']:g} repeat {r['repeat']}: {r['reason']}", file=sys.stderr)
    print(f"{len(res.table) - len(bad)}/{len(res.table)} runs ok in {wall:.1f} s "
          f"(n={base.n}, d={base.d}, h={base.h}, steps={base.steps}, torch threads={torch.get_num_threads()})")
    if args.out:
        try:
            paths = res.save(args.out)
            if not args.no_plots and len(bad) < len(res.table):
                from pathlib import Path

                from htsr.theory.plots import plot_esds, plot_metrics_vs_lr, plot_steps

                out = Path(args.out)
                paths.append(plot_metrics_vs_lr(summary, out / "metrics_vs_lr.png"))
                paths.append(plot_esds(res.evals, out / "esd.png"))
                paths.append(plot_steps(res.history, out / "steps.png"))
        except (HtsrError, OSError, ValueError) as e:
            return error(f"cannot write output: {e}")
        print(f"wrote {len(paths)} file(s) to {args.out}", file=sys.stderr)
    if len(bad) == len(res.table):
        return error("every run diverged", 1)
    return 0
