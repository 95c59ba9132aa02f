"""``htsr theory single-index``: the heavy-tails-without-gradient-noise study (arXiv 2406.04657).

Runs full-batch GD and Adam over a learning-rate grid on the two-layer single-index setup, prints the per-rate
table (``--json``: one JSON object), and with ``--out-dir`` writes runs/history/summary tables (CSV), results.json,
the kept eigenvalues (esd.npz) and PNG figures, atomically.

Exit codes (``htsr.cli.main``): 0 ran (single runs may have diverged, see their status), 1 every run diverged,
2 bad usage or input.
"""

from __future__ import annotations

import argparse
from typing import Any

from htsr.cli import common as C

QUICK = {"n": 400, "n_test": 100, "d": 200, "h": 300}
TABLE_COLUMNS = ("optimizer", "lr", "n_runs", "alpha_hill", "alpha_ks", "alignment", "kta", "ridge_train_loss",
                 "ridge_test_loss", "spike_ratio", "spike_step", "tail_step", "time_s")
#: command-line flag (dest) -> SingleIndexConfig field
FLAG_FIELDS = (("n", "n"), ("n_test", "n_test"), ("d", "d"), ("h", "h"), ("steps", "steps"),
               ("label_noise", "label_noise_std"), ("ridge_lambda", "ridge_lambda"), ("lr_gamma", "lr_gamma"),
               ("measure_every", "measure_every"))


def register(subparsers: Any) -> None:
    """Add ``theory`` with its ``single-index`` subcommand (sets ``func``: args -> exit code)."""
    from htsr.theory.single_index import OPTIMIZERS, SingleIndexConfig

    d = SingleIndexConfig()
    t = subparsers.add_parser("theory", help="theory experiments (two-layer single-index heavy-tail study)",
                              description="Controlled experiments from the HT-SR theory papers.")
    tsub = t.add_subparsers(dest="theory_command", required=True)
    p = tsub.add_parser(
        "single-index", help="heavy tails from a few full-batch GD/Adam steps (arXiv 2406.04657)",
        description="Train a two-layer tanh student (last layer frozen) on a softplus single-index teacher with a "
                    "few full-batch GD or Adam steps for each learning rate, and measure the hidden layer's ESD "
                    "(Hill alpha with median xmin, KS-scan alpha), its alignment with the teacher, the kernel-target "
                    f"alignment and ridge-refit losses. Defaults are the paper's (n={d.n}, d={d.d}, h={d.h}, "
                    f"{d.steps} steps, the 9-rate grid, GD and Adam).")
    p.add_argument("--optimizers", type=C.choice_list(OPTIMIZERS), default=OPTIMIZERS,
                   help="comma-separated: gd,adam (default both)")
    p.add_argument("--lrs", type=_rates, default=None,
                   help="comma-separated learning rates > 0 (default the paper's 1e-3,...,3000 grid)")
    p.add_argument("--repeats", type=C.positive_int, default=1, help="repeats with seeds seed..seed+R-1 (default 1)")
    C.add_seed(p)
    p.add_argument("--steps", type=C.positive_int, default=None, help=f"full-batch steps (default {d.steps})")
    p.add_argument("--n", type=C.bounded(int, 2), default=None, help=f"training (and probe) samples (default {d.n})")
    p.add_argument("--n-test", type=C.bounded(int, 2), default=None, help=f"test samples (default {d.n_test})")
    p.add_argument("--d", type=C.bounded(int, 4), default=None, help=f"input dimension (default {d.d})")
    p.add_argument("--h", type=C.bounded(int, 4), default=None, help=f"hidden width (default {d.h})")
    p.add_argument("--label-noise", type=C.bounded(float, 0), default=None,
                   help=f"teacher label noise std (default {d.label_noise_std})")
    p.add_argument("--ridge-lambda", type=C.positive_float, default=None,
                   help=f"ridge refit lambda (default {d.ridge_lambda})")
    p.add_argument("--lr-gamma", type=C.fraction, default=None,
                   help="StepLR gamma per step, in (0, 1] (default constant rate)")
    p.add_argument("--measure-every", type=C.positive_int, default=None, help="measure every k-th step (default 1)")
    p.add_argument("--train-last-layer", action="store_true", help="also train a (the paper freezes it)")
    p.add_argument("--reference-scaling", action="store_true",
                   help="reproduce the reference code's double 1/sqrt(d) scaling of the probe features (a bug)")
    p.add_argument("--quick", action="store_true",
                   help=f"small sizes for a smoke test ({', '.join(f'{k}={v}' for k, v in QUICK.items())}); "
                        "explicit size options override it")
    C.add_set(p, "the run config (any SingleIndexConfig field, e.g. --set momentum=0.9)")
    C.add_out_dir(p, "write runs.csv, history.csv, summary.csv, results.json, esd.npz and figures here",
                  required=False)
    p.add_argument("--no-plots", action="store_true", help="with --out-dir: skip the PNG figures")
    C.add_json(p)
    C.add_progress(p)
    C.add_threads(p)
    C.add_executor(p)
    p.set_defaults(func=cmd_single_index)


def _rates(s: str) -> tuple[float, ...]:
    out = C.float_list(s)
    bad = [v for v in out if not v > 0 or v == float("inf")]
    if bad:
        raise argparse.ArgumentTypeError(f"learning rates must be finite and > 0, got {', '.join(map(str, bad))}")
    return tuple(out)


def _format(summary) -> str:
    import pandas as pd

    cols = [c for c in TABLE_COLUMNS if c in summary.columns]
    with pd.option_context("display.max_rows", None, "display.max_columns", None, "display.width", 200,
                           "display.float_format", lambda v: f"{v:.4g}"):
        return summary[cols].to_string(index=False)


def base_config(args: argparse.Namespace):
    """The :class:`~htsr.theory.single_index.SingleIndexConfig` of the command line: ``--quick`` sizes, the
    ``--set`` pairs, then the flags given."""
    from htsr.theory.single_index import SingleIndexConfig

    changes: dict[str, Any] = dict(QUICK) if args.quick else {}
    changes.update(C.overrides(args))
    for opt, field in FLAG_FIELDS:
        v = getattr(args, opt)
        if v is not None:
            changes[field] = v
    changes["seed"] = args.seed
    if args.train_last_layer:
        changes["fix_last_layer"] = False
    if args.reference_scaling:
        changes["feature_scaling"] = "reference"
    return SingleIndexConfig.from_dict(changes)


def cmd_single_index(args: argparse.Namespace) -> int:
    """Run ``htsr theory single-index``."""
    import time
    from pathlib import Path

    import torch

    from htsr.errors import MeasurementError
    from htsr.io import check_replace_dir, replace_dir
    from htsr.theory.sweep import LR_GRID, sweep

    base = base_config(args)
    if args.out_dir:
        check_replace_dir(args.out_dir, overwrite=args.overwrite)
    t0 = time.perf_counter()
    with C.executor_from_args(args) as executor:
        res = sweep(base, args.optimizers, args.lrs or LR_GRID, args.repeats, progress=args.progress,
                    executor=executor)
    wall = time.perf_counter() - t0
    summary = res.summary()
    bad = res.table[res.table["status"] != "ok"]
    if args.json:
        C.print_json({"config": base.to_dict(), "summary": summary.to_dict("records"),
                      "runs": res.table.to_dict("records"), "time_s": wall})
    else:
        print(_format(summary))
        print(f"{len(res.table) - len(bad)}/{len(res.table)} runs ok in {wall:.1f} s "
              f"(n={base.n}, d={base.d}, h={base.h}, steps={base.steps}, torch threads={torch.get_num_threads()})")
    for _, r in bad.iterrows():
        C.say(f"  diverged: {r['optimizer']} lr={r['lr']:g} repeat {r['repeat']}: {r['reason']}")
    if args.out_dir:
        written: list[Path] = []

        def fill(tmp: Path) -> None:
            written.extend(res.save(tmp))
            if not args.no_plots and len(bad) < len(res.table):
                from htsr.theory.plots import plot_esds, plot_metrics_vs_lr, plot_steps

                written.append(plot_metrics_vs_lr(summary, tmp / "metrics_vs_lr.png"))
                written.append(plot_esds(res.evals, tmp / "esd.png"))
                written.append(plot_steps(res.history, tmp / "steps.png"))

        replace_dir(args.out_dir, fill, overwrite=args.overwrite)
        C.say(f"wrote {len(written)} file(s) to {args.out_dir}")
    if len(bad) == len(res.table):
        raise MeasurementError(f"every run diverged (e.g. {bad['reason'].iloc[0]})")
    return 0
