"""``htsr tempbalance``: run TempBalance recipes and their baseline comparisons on the CPU (docs/cli.md convention).

* ``htsr tempbalance run RECIPE --method tb --fraction 0.25 --seed 0 [-o cell.json] [--plot traj.png] [--json]``:
  one training; its metrics as a table (``--json``: one JSON object on stdout).
* ``htsr tempbalance compare RECIPE --out-dir DIR``: baseline vs TempBalance over seeds x fractions, resumable
  (finished cells are rows of ``DIR/results.csv``; a directory holds one configuration, other ``--set`` values
  are refused); prints the summary and writes ``summary_<recipe>.csv``, ``<recipe>_score_vs_fraction.png`` and
  ``<recipe>_trajectories.png``.
* ``htsr tempbalance report DIR``: the same summary and plots from a (possibly partial) results directory.

Exit codes (``htsr.cli.main``): 0 ran (single cells may have failed: see results.csv), 1 every cell failed,
2 bad usage or input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from htsr.cli import common as C


def register(subparsers: Any) -> None:
    """Add ``tempbalance`` with its ``run``, ``compare`` and ``report`` sub-commands."""
    from htsr.tempbalance.recipes import METHODS, RECIPES

    p = subparsers.add_parser("tempbalance", help="TempBalance recipes: per-layer learning rates from alpha",
                              description="Run TempBalance (per-layer learning rates from heavy-tail metrics) "
                                          "recipes and their comparisons against the same training without it.")
    sub = p.add_subparsers(dest="tb_command", required=True)
    fields = "the recipe (its hyper-parameters and TempBalance settings, e.g. --set epochs=5 --set s_max=1.25)"

    r = sub.add_parser("run", help="train one (method, fraction, seed) cell and print its metrics")
    r.add_argument("recipe", choices=sorted(RECIPES))
    r.add_argument("--method", choices=METHODS, default="tb")
    r.add_argument("--fraction", type=C.fraction, default=1.0, help="fraction of the training pool, in (0, 1]")
    C.add_seed(r)
    C.add_set(r, fields)
    C.add_out(r, (".json",), "write the config, metrics and trajectories")
    C.add_plot(r, "per-layer metric / learning-rate trajectories (method tb)")
    C.add_json(r)
    C.add_threads(r)
    r.set_defaults(func=cmd_run)

    c = sub.add_parser("compare", help="baseline vs TempBalance over seeds and data fractions (resumable)")
    c.add_argument("recipe", choices=sorted(RECIPES))
    C.add_out_dir(c, "results directory (re-run the same command to resume; a directory holds one configuration)")
    c.add_argument("--fractions", type=_fraction_list, default=None, metavar="F,F,...",
                   help="comma-separated data fractions in (0, 1] (default: the recipe's)")
    c.add_argument("--seeds", type=_seeds, default=(0, 1, 2, 3, 4), metavar="S,S,...",
                   help="comma-separated seeds >= 0 (default 0,1,2,3,4)")
    c.add_argument("--methods", type=C.choice_list(METHODS), default=METHODS, metavar="M,M",
                   help=f"comma-separated, some of {', '.join(METHODS)} (default both)")
    C.add_set(c, fields)
    C.add_progress(c)
    C.add_threads(c)
    C.add_executor(c)
    c.set_defaults(func=cmd_compare)

    s = sub.add_parser("report", help="summary table and plots of a results directory")
    s.add_argument("results_dir", metavar="DIR", help="results directory written by 'compare'")
    C.add_json(s)
    s.set_defaults(func=cmd_report)


def _seeds(s: str) -> tuple[int, ...]:
    out = C.int_list(s)
    if any(v < 0 for v in out):
        raise argparse.ArgumentTypeError(f"seeds must be >= 0, got {s!r}")
    return tuple(out)


def _fraction_list(s: str) -> tuple[float, ...]:
    out = C.float_list(s)
    bad = [v for v in out if not 0 < v <= 1]
    if bad:
        raise argparse.ArgumentTypeError(f"fractions must be in (0, 1], got {', '.join(map(str, bad))}")
    return tuple(out)


def cmd_run(args: argparse.Namespace) -> int:
    from htsr.io import write_json
    from htsr.tempbalance.recipes import get_recipe

    recipe = get_recipe(args.recipe, **C.overrides(args))
    metrics, details = recipe.run(args.method, args.fraction, args.seed)
    result = {"recipe": args.recipe, "method": args.method, "fraction": args.fraction, "seed": args.seed, **metrics}
    if args.json:
        C.print_json(result)
    else:
        width = max(len(k) for k in result)
        for k, v in result.items():
            print(f"{k:<{width}}  {v:.6g}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    if args.out:
        write_json(args.out, {"config": recipe.config(), "metrics": metrics, **details})
        C.say(f"wrote {args.out}")
    if args.plot:
        if not details["tb_history"]:
            C.say("no plot: the baseline has no TempBalance trajectories (use --method tb)")
        else:
            import pandas as pd

            from htsr.tempbalance.plots import plot_trajectories

            plot_trajectories(pd.DataFrame(details["tb_history"]), args.plot, title=args.recipe)
            C.say(f"wrote {args.plot}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from htsr.errors import MeasurementError
    from htsr.tempbalance.recipes import get_recipe, run_comparison

    recipe = get_recipe(args.recipe, **C.overrides(args))
    with C.executor_from_args(args) as executor:
        table = run_comparison(recipe, args.out_dir, fractions=args.fractions, seeds=tuple(args.seeds),
                               methods=tuple(args.methods), progress=args.progress, overwrite=args.overwrite,
                               executor=executor)
    failed = table[table["status"] != "ok"] if "status" in table.columns else table.iloc[:0]
    if len(table) and len(failed) == len(table):
        raise MeasurementError(f"every cell failed, e.g. {failed['error'].iloc[0]} (see {args.out_dir}/results.csv)")
    _report(Path(args.out_dir), as_json=False)
    if len(failed):
        C.say(f"htsr: {len(failed)} cell(s) failed; see the 'error' column of {args.out_dir}/results.csv "
              "(re-run to retry)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from htsr.errors import ConfigError

    out = Path(args.results_dir)
    if not (out / "results.csv").is_file():
        raise ConfigError(f"{out} has no results.csv (run 'htsr tempbalance compare' first)")
    _report(out, as_json=args.json)
    return 0


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


REQUIRED_COLUMNS = ("recipe", "method", "fraction", "seed", "status")


def _report(out: Path, as_json: bool = False) -> None:
    """Summaries (one per recipe and configuration), markdown tables and plots of a results directory."""
    import pandas as pd

    from htsr.errors import ConfigError
    from htsr.experiments import ResultStore, summarize
    from htsr.io import safe_text, write_table
    from htsr.tempbalance.plots import plot_score_vs_fraction, plot_trajectories
    from htsr.tempbalance.recipes import RECIPES

    store = ResultStore(out)
    table = store.table()
    if table.empty:
        raise ConfigError(f"{out}/results.csv holds no rows (run 'htsr tempbalance compare' first)")
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise ConfigError(f"{out}/results.csv is not a TempBalance comparison: no column(s) {', '.join(missing)}")
    unknown = sorted({str(x) for x in table["recipe"].unique()} - set(RECIPES))
    if unknown:
        raise ConfigError(f"{out}/results.csv holds unknown recipe(s) {', '.join(map(safe_text, unknown))}; "
                          f"expected {', '.join(RECIPES)}")
    ok = table[table["status"] == "ok"]
    if ok.empty:
        raise ConfigError(f"{out}/results.csv holds no finished cell (every row failed; see its 'error' column)")
    if "config_id" not in ok.columns:
        ok = ok.assign(config_id="")
    ok = ok.assign(config_id=ok["config_id"].fillna("").astype(str))
    result: dict[str, Any] = {}
    for (name, cid), rows in ok.groupby(["recipe", "config_id"], sort=True):
        cls = RECIPES[name]
        if cls.score not in rows.columns or not rows[cls.score].notna().any():
            raise ConfigError(f"{out}/results.csv has no {cls.score!r} values for recipe {name}")
        several = ok[ok["recipe"] == name]["config_id"].nunique() > 1
        tag = f"{name}_{cid}" if several else name
        summ = summarize(rows, cls.score)
        write_table(out / f"summary_{tag}.csv", summ)
        paired = paired_differences(rows, cls.score, cls.higher_is_better)
        entry: dict[str, Any] = {"config_id": cid, "score": cls.score, "higher_is_better": cls.higher_is_better,
                                 "summary": summ.to_dict("records"),
                                 "paired": [{"fraction": f, **v} for f, v in sorted(paired.items())]}
        if not as_json:
            label = f" (configuration {cid})" if several else ""
            print(f"\n## {name}{label}: {cls.score} ({'higher' if cls.higher_is_better else 'lower'} is better)\n")
            print(summary_markdown(summ, cls.score, cls.higher_is_better, paired))
        if "tb_overhead" in rows.columns:
            tbr = rows[rows["method"] == "tb"]
            if len(tbr):
                entry["tb_overhead"] = {"mean": float(tbr["tb_overhead"].mean()),
                                        "max": float(tbr["tb_overhead"].max()), "n": len(tbr)}
                if not as_json:
                    print(f"\nTempBalance recomputation time / training time: mean {tbr['tb_overhead'].mean():.3%}, "
                          f"max {tbr['tb_overhead'].max():.3%} over {len(tbr)} runs")
        plot_score_vs_fraction(summ, out / f"{tag}_score_vs_fraction.png", cls.score, title=name,
                               higher_is_better=cls.higher_is_better)
        tb_rows = rows[rows["method"] == "tb"].sort_values(["fraction", "seed"], ascending=[False, True])
        if len(tb_rows) and "key" in tb_rows.columns:
            try:
                det = store.details(tb_rows.iloc[0]["key"])
            except (ConfigError, json.JSONDecodeError, UnicodeDecodeError):
                det = {}
            hist = det.get("tb_history") if isinstance(det, dict) else None
            if hist:
                plot_trajectories(pd.DataFrame(hist), out / f"{tag}_trajectories.png",
                                  title=f"{name} (fraction {tb_rows.iloc[0]['fraction']:g}, seed "
                                        f"{int(tb_rows.iloc[0]['seed'])})")
        result[tag] = entry
    if as_json:
        C.print_json(result)
    print(f"\nwrote summaries and plots to {out}", file=sys.stderr)
