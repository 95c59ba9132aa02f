"""Overhead of TempBalance's metric recomputation at the recipes' default intervals.

For each recipe, trains the same cell (fraction, seed) twice in this process, alternating the order over
repeats: the baseline and TempBalance. Reports

* ``tb_time / tb_train_time``: time spent inside TempBalance (every ``htsr.analyze`` call on the tuned layers,
  mapping, regrouping, including the initial analysis) over the whole TempBalance training, both measured in
  the same run, so machine load affects both alike (target: <= 5% at the default interval);
* ``tb_wall / baseline_wall``: the side-by-side wall-time ratio of the two trainings (noisy on a shared box).

    python benchmarks/bench_tempbalance.py [--recipes digits burgers minilm] [--fraction 1.0] [--repeats 1]
                                           [--set digits.epochs=5] [--threads 1] [--json OUT]
"""

from __future__ import annotations

import argparse
import time

import _common as C
from htsr.cli.common import key_value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", nargs="+", default=["digits", "burgers"], choices=["digits", "burgers", "minilm"])
    ap.add_argument("--fraction", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], metavar="RECIPE.KEY=VALUE",
                    help="override a recipe option, e.g. digits.epochs=5")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import torch
    from threadpoolctl import threadpool_limits

    from htsr.tempbalance.recipes import get_recipe

    torch.set_num_threads(args.threads)
    threadpool_limits(limits=args.threads, user_api="blas")
    overrides: dict[str, dict] = {}
    for s in args.set:
        key, val = key_value(s)  # JSON values when they parse (numbers, lists), else strings: arch=vgg works
        if "." not in key:
            ap.error(f"--set expects RECIPE.KEY=VALUE, got {s!r}")
        rec, opt = key.split(".", 1)
        overrides.setdefault(rec, {})[opt] = val
    info = C.announce_machine()
    rows, raw = [], []
    for name in args.recipes:
        recipe = get_recipe(name, **overrides.get(name, {}))
        ratios, walls = [], []
        for rep in range(args.repeats):
            order = ("baseline", "tb") if rep % 2 == 0 else ("tb", "baseline")
            res = {}
            for method in order:
                t0 = time.perf_counter()
                metrics, _ = recipe.run(method, args.fraction, args.seed)
                res[method] = (time.perf_counter() - t0, metrics)
            tb_m = res["tb"][1]
            ratios.append(tb_m["tb_time_s"] / tb_m["train_time_s"])
            walls.append(res["tb"][0] / res["baseline"][0])
            raw.append({"recipe": name, "repeat": rep, "baseline_wall_s": res["baseline"][0],
                        "tb_wall_s": res["tb"][0], **{f"tb_{k}": v for k, v in tb_m.items()},
                        "baseline_score": res["baseline"][1][recipe.score]})
        tb_m = raw[-1]
        rows.append([name, f"{args.fraction:g}", recipe.interval, tb_m["tb_steps"], tb_m["tb_tb_updates"],
                     C.fmt_s(tb_m["tb_tb_time_s"]), C.fmt_s(tb_m["tb_train_time_s"]),
                     f"{C.median(ratios):.2%}", C.verdict(C.median(ratios) <= 0.05), C.fmt_x(C.median(walls))])
    C.print_table(["recipe", "fraction", "interval (steps)", "steps", "updates", "TB time", "TB training time",
                   "TB time / training", "<= 5%", "TB wall / baseline wall"], rows,
                  title="TempBalance recomputation overhead at the default interval")
    print("load avg at end:", C.loadavg())
    C.write_json(args.json, {"machine": info, "args": vars(args), "runs": raw})


if __name__ == "__main__":
    main()
