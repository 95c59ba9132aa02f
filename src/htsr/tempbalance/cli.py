"""``htsr tempbalance``: run TempBalance recipes and their baseline comparisons on the CPU.

* ``htsr tempbalance run RECIPE --method tb --fraction 0.25 --seed 0``: one training, metrics as JSON.
* ``htsr tempbalance compare RECIPE --out DIR``: baseline vs TempBalance over seeds x fractions, resumable
  (finished cells are rows of ``DIR/results.csv``); prints the summary and writes ``summary_<recipe>.csv``,
  ``<recipe>_score_vs_fraction.png`` and ``<recipe>_trajectories.png``.
* ``htsr tempbalance report DIR``: the same summary and plots from a (possibly partial) results directory.

Exit codes: 0 ok, 1 some cells failed, 2 bad usage or input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from htsr.cli.common import error, key_value, set_threads


def register(subparsers: Any) -> None:
    """Add ``tempbalance`` with its ``run``, ``compare`` and ``report`` sub-commands."""
    from htsr.tempbalance.recipes import METHODS, RECIPES

    p = subparsers.add_parser("tempbalance", help="TempBalance recipes: per-layer learning rates from alpha",
                              description="Run TempBalance (per-layer learning rates from heavy-tail metrics) "
                                          "recipes and their comparisons against the same training without it.")
    sub = p.add_subparsers(dest="tb_command", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--set", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                       help="override a recipe option, e.g. --set epochs=5 --set s_max=1.25 (repeatable)")
        q.add_argument("--threads", type=int, default=1, help="torch/BLAS threads (default 1: shared machines)")

    r = sub.add_parser("run", help="train one (method, fraction, seed) cell and print its metrics")
    r.add_argument("recipe", choices=sorted(RECIPES))
    r.add_argument("--method", choices=METHODS, default="tb")
    r.add_argument("--fraction", type=float, default=1.0)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--json", metavar="FILE", default=None, help="also write metrics + trajectories as JSON")
    r.add_argument("--plot", metavar="PNG", default=None, help="per-layer alpha / lr trajectories (method tb)")
    common(r)
    r.set_defaults(func=cmd_run)

    c = sub.add_parser("compare", help="baseline vs TempBalance over seeds and data fractions (resumable)")
    c.add_argument("recipe", choices=sorted(RECIPES))
    c.add_argument("--out", required=True, help="results directory (re-run the same command to resume)")
    c.add_argument("--fractions", type=float, nargs="+", default=None, help="default: the recipe's")
    c.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    c.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    c.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    common(c)
    c.set_defaults(func=cmd_compare)

    s = sub.add_parser("report", help="summary table and plots of a results directory")
    s.add_argument("out", help="results directory written by 'compare'")
    s.set_defaults(func=cmd_report)


def cmd_run(args: argparse.Namespace) -> int:
    from htsr.errors import HtsrError
    from htsr.io import write_json
    from htsr.tempbalance.recipes import get_recipe

    try:
        set_threads(args.threads)
        recipe = get_recipe(args.recipe, **dict(args.set))
        metrics, details = recipe.run(args.method, args.fraction, args.seed)
    except (HtsrError, ValueError) as e:
        return error(str(e))
    print(json.dumps({"recipe": args.recipe, "method": args.method, "fraction": args.fraction, "seed": args.seed,
                      **metrics}, indent=2, default=float))
    if args.json:
        write_json(args.json, {"config": recipe.config(), "metrics": metrics, **details})
        print(f"wrote {args.json}", file=sys.stderr)
    if args.plot and details["tb_history"]:
        import pandas as pd

        from htsr.tempbalance.plots import plot_trajectories

        plot_trajectories(pd.DataFrame(details["tb_history"]), args.plot, title=args.recipe)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from htsr.errors import HtsrError
    from htsr.tempbalance.recipes import get_recipe, run_comparison

    try:
        set_threads(args.threads)
        recipe = get_recipe(args.recipe, **dict(args.set))
        table = run_comparison(recipe, args.out, fractions=tuple(args.fractions) if args.fractions else None,
                               seeds=tuple(args.seeds), methods=tuple(args.methods), progress=args.progress)
    except (HtsrError, ValueError, OSError) as e:
        return error(str(e))
    code = _report(Path(args.out))
    if "status" in table.columns and (table["status"] != "ok").any():
        print("htsr: some cells failed; see the 'error' column of results.csv (re-run to retry)", file=sys.stderr)
        return 1
    return code


def cmd_report(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if not (out / "results.csv").is_file():
        return error(f"{out} has no results.csv (run 'htsr tempbalance compare' first)")
    return _report(out)


def paired_differences(rows: Any, score: str, higher_is_better: bool) -> dict[float, dict[str, float]]:
    """Per fraction: TB - baseline over the seeds that have both runs (mean, std, n, TB wins)."""
    import numpy as np

    out: dict[float, dict[str, float]] = {}
    for fr, g in rows.groupby("fraction"):
        piv = g.pivot_table(index="seed", columns="method", values=score, aggfunc="first")
        if not {"baseline", "tb"} <= set(piv.columns):
            continue
        d = (piv["tb"] - piv["baseline"]).dropna().to_numpy(dtype=float)
        if not d.size:
            continue
        wins = int(np.sum(d > 0) if higher_is_better else np.sum(d < 0))
        out[float(fr)] = {"mean": float(d.mean()), "std": float(d.std(ddof=1)) if d.size > 1 else float("nan"),
                          "n": int(d.size), "wins": wins}
    return out


def summary_markdown(summary: Any, score: str, higher_is_better: bool,
                     paired: dict[float, dict[str, float]] | None = None) -> str:
    """A markdown table: one row per fraction, baseline and TB as mean +- std (n), and the paired difference
    TB - baseline over seeds (mean +- std, how many seeds TB won)."""
    paired = paired or {}
    lines = [f"| fraction | baseline {score} | TempBalance {score} | TB - baseline, paired by seed | TB better |",
             "|---|---|---|---|---|"]
    for fr in sorted(summary["fraction"].unique(), reverse=True):
        cells = []
        for m in ("baseline", "tb"):
            row = summary[(summary["fraction"] == fr) & (summary["method"] == m)]
            if row.empty:
                cells.append("(not run)")
                continue
            r = row.iloc[0]
            cells.append(f"{r['mean']:.4f} +- {r['std']:.4f} (n={int(r['n'])})")
        pd_ = paired.get(float(fr))
        diff = f"{pd_['mean']:+.4f} +- {pd_['std']:.4f}" if pd_ else ""
        wins = f"{pd_['wins']}/{pd_['n']}" if pd_ else ""
        lines.append(f"| {fr:g} | {cells[0]} | {cells[1]} | {diff} | {wins} |")
    return "\n".join(lines)


def _report(out: Path) -> int:
    import pandas as pd

    from htsr.experiments import ResultStore, summarize
    from htsr.io import write_table
    from htsr.tempbalance.plots import plot_score_vs_fraction, plot_trajectories
    from htsr.tempbalance.recipes import RECIPES

    store = ResultStore(out)
    table = store.table()
    if table.empty:
        return error(f"{out}/results.csv holds no rows")
    ok = table[table["status"] == "ok"] if "status" in table.columns else table
    for name in sorted(ok["recipe"].unique()):
        cls = RECIPES[name]
        rows = ok[ok["recipe"] == name]
        summ = summarize(rows, cls.score)
        write_table(out / f"summary_{name}.csv", summ)
        print(f"\n## {name}: {cls.score} ({'higher' if cls.higher_is_better else 'lower'} is better)\n")
        print(summary_markdown(summ, cls.score, cls.higher_is_better,
                               paired_differences(rows, cls.score, cls.higher_is_better)))
        if "tb_overhead" in rows.columns:
            tbr = rows[rows["method"] == "tb"]
            if len(tbr):
                print(f"\nTempBalance recomputation time / training time: mean {tbr['tb_overhead'].mean():.3%}, "
                      f"max {tbr['tb_overhead'].max():.3%} over {len(tbr)} runs")
        plot_score_vs_fraction(summ, out / f"{name}_score_vs_fraction.png", cls.score, title=name,
                               higher_is_better=cls.higher_is_better)
        tb_rows = rows[rows["method"] == "tb"].sort_values(["fraction", "seed"], ascending=[False, True])
        if len(tb_rows):
            det = store.details(tb_rows.iloc[0]["key"])
            if det.get("tb_history"):
                plot_trajectories(pd.DataFrame(det["tb_history"]), out / f"{name}_trajectories.png",
                                  title=f"{name} (fraction {tb_rows.iloc[0]['fraction']:g}, seed "
                                        f"{int(tb_rows.iloc[0]['seed'])})")
    print(f"\nwrote summaries and plots to {out}", file=sys.stderr)
    return 0
