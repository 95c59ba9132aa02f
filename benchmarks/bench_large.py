"""LLaMA-sized layers: htsr vs WeightWatcher 0.7.7 analyze() on one 4096x4096 and one 11008x4096 matrix.

The matrices are seeded heavy-tailed random (Student-t, ``--df`` 4 degrees of freedom, scaled by
1/sqrt(fan-in), float32), wrapped as two bias-free ``nn.Linear`` layers in an
``nn.Sequential``. Both tools analyse the same module; target: >= 5x faster end to end (round 2; 4x in round 1).
Two htsr configurations are timed against the same WW runs:

* ``preset="weightwatcher"``: WW's conventions and float64 spectra (the like-for-like row);
* ``preset="htsr"`` (defaults): precision "auto", i.e. float32 Gram + eigensolver for
  matrices whose smaller side exceeds 2048.

Alpha agreement with WW is reported for both.

    python benchmarks/bench_large.py [--repeats 3] [--ref-repeats 3] [--hidden 4096 --inter 11008] [--json OUT]
"""

from __future__ import annotations

import argparse

import _common as C


def build_model(hidden: int, inter: int, seed: int, df: float = 4.0):
    import torch

    model = torch.nn.Sequential(
        torch.nn.utils.skip_init(torch.nn.Linear, hidden, hidden, bias=False),
        torch.nn.utils.skip_init(torch.nn.Linear, hidden, inter, bias=False),
    )
    with torch.no_grad():
        model[0].weight.copy_(C.heavy_tailed(hidden, hidden, seed, df=df))
        model[1].weight.copy_(C.heavy_tailed(inter, hidden, seed + 1, df=df))
    return model.eval()


def warmup() -> None:
    import torch

    import htsr

    tiny = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.Linear(48, 64))
    htsr.analyze(tiny, preset="weightwatcher")
    htsr.analyze(tiny)
    C.ww_analyze(tiny)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each htsr configuration")
    ap.add_argument("--ref-repeats", type=int, default=3, help="timed runs of WeightWatcher")
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--inter", type=int, default=11008)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--df", type=float, default=4.0, help="Student-t degrees of freedom of the entries")
    ap.add_argument("--workers", type=int, default=0, help="htsr workers (0 = automatic)")
    ap.add_argument("--json", help="write results to this JSON file")
    return C.parse_and_run(ap, argv, run)


def run(args: argparse.Namespace) -> int:

    import htsr

    info = C.announce_machine(blas_threads=args.blas_threads)
    model = build_model(args.hidden, args.inter, args.seed, args.df)
    shapes = [tuple(m.weight.shape) for m in model]
    print("matrices:", shapes)
    warmup()

    configs = {"weightwatcher": {"preset": "weightwatcher"}, "htsr": {"preset": "htsr"}}
    times: dict[str, list[float]] = {k: [] for k in (*configs, "ww")}
    last: dict = {}
    n = max(args.repeats, args.ref_repeats)
    for i in range(n):
        sides = [*configs, "ww"] if i % 2 == 0 else ["ww", *configs]
        for side in sides:
            if side == "ww":
                if i < args.ref_repeats:
                    t, last["ww"] = C.timed(lambda: C.ww_analyze(model))
                    times["ww"].append(t)
            elif i < args.repeats:
                kw = configs[side]
                t, last[side] = C.timed(lambda kw=kw: htsr.analyze(model, workers=args.workers, **kw))
                times[side].append(t)
        print(f"  run {i + 1}: " + ", ".join(f"{k} {[round(x, 2) for x in v]}" for k, v in times.items()), flush=True)
    info["loadavg_end"] = C.loadavg()

    ref_alpha = C.ww_alphas(last["ww"])
    t_ref = C.median(times["ww"])
    results = []
    for name in configs:
        a = last[name]
        ours_alpha = C.our_alphas(a)
        matched, dmax, worst = C.alpha_diffs(ours_alpha, ref_alpha)
        t = C.median(times[name])
        results.append({
            "config": name, "workers": a.metadata.get("workers"), "ours_s": times[name], "ours_median_s": t,
            "ref_s": times["ww"], "ref_median_s": t_ref, "ratio": t_ref / t, "target_ratio": 5.0,
            "ratio_ok": t_ref / t >= 5.0, "matched": matched, "max_abs_alpha_diff": dmax, "worst_layer": worst,
            "alphas": ours_alpha, "per_layer_s": {r["name"]: r["time_s"] for r in a.rows},
        })
    rows = [[
        f"{args.hidden}x{args.hidden} + {args.inter}x{args.hidden}, preset={r['config']}",
        C.fmt_s(r["ours_median_s"]), C.fmt_s(r["ref_median_s"]), C.fmt_x(r["ratio"]), f">= {r['target_ratio']:.0f}x",
        C.verdict(r["ratio_ok"]), f"{r['max_abs_alpha_diff']:.1e} ({r['matched']} layers)",
        f"{len(r['ours_s'])}/{len(r['ref_s'])}",
    ] for r in results]
    C.print_table(["benchmark", "htsr (median)", "WW 0.7.7 (median)", "speed-up", "target", "verdict",
                   "max abs alpha diff", "runs ours/WW"], rows, title="bench_large")
    print("\nalphas: WW " + ", ".join(f"{k} {v:.6f}" for k, v in ref_alpha.items()))
    for r in results:
        print(f"        htsr[{r['config']}] " + ", ".join(f"{k} {v:.6f}" for k, v in r["alphas"].items()))
    print(f"\nload average at end: {info['loadavg_end']} (start {info['loadavg']})")
    C.write_json(args.json, {"benchmark": "large", "machine": info, "shapes": shapes,
                             "ww_alphas": ref_alpha, "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
