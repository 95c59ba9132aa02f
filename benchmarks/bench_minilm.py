"""all-MiniLM-L6-v2 (real weights): htsr vs WeightWatcher 0.7.7 analyze(), end to end.

(a) ``htsr.analyze(model, preset="weightwatcher")`` vs ``WeightWatcher(model).analyze()``
    with its defaults, on the same nn.Module: time ratio (target >= 4x) and the max
    |alpha diff| over layers matched by name (WW ``longname`` == htsr ``name``).
(b) both with ``randomize=True, mp_fit=True`` (target >= 30x). htsr's randomized and MP
    metrics have their own definitions (seeded shuffle, JS distance between densities,
    closed-form MP fit), so only the times are compared; alphas are checked again.

Runs alternate ours/reference so that load drift on a shared machine hits both sides.

    python benchmarks/bench_minilm.py [--repeats 3] [--ref-repeats 3] [--part a|b|both] [--json OUT]
"""

from __future__ import annotations

import argparse

import _common as C


def load_model():
    import transformers

    from htsr.examples import example_path

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    m = transformers.AutoModel.from_pretrained(str(example_path("minilm")))
    m.eval()
    return m


def warmup() -> None:
    """Import and first-call costs of both sides, outside the timings."""
    import torch

    import htsr

    tiny = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.Linear(48, 64))
    htsr.analyze(tiny, preset="weightwatcher", randomize=True, mp_fit=True)
    C.ww_analyze(tiny, randomize=True, mp_fit=True)


def run_part(model, label: str, opts: dict, repeats: int, ref_repeats: int, workers: int, target: float) -> dict:
    import htsr

    ours_t, ref_t = [], []
    ours = ref = None
    for i in range(max(repeats, ref_repeats)):
        order = ("ours", "ref") if i % 2 == 0 else ("ref", "ours")
        for side in order:
            if side == "ours" and i < repeats:
                t, ours = C.timed(lambda: htsr.analyze(model, preset="weightwatcher", workers=workers, **opts))
                ours_t.append(t)
            elif side == "ref" and i < ref_repeats:
                t, ref = C.timed(lambda: C.ww_analyze(model, **opts))
                ref_t.append(t)
        print(f"  [{label}] run {i + 1}: ours {[round(x, 3) for x in ours_t]} ref {[round(x, 2) for x in ref_t]}",
              flush=True)
    a_ours, a_ref = C.our_alphas(ours), C.ww_alphas(ref)
    n, dmax, worst = C.alpha_diffs(a_ours, a_ref)
    t_o, t_r = C.median(ours_t), C.median(ref_t)
    ratio = t_r / t_o
    return {
        "part": label, "options": opts, "workers": ours.metadata.get("workers"),
        "ours_s": ours_t, "ref_s": ref_t, "ours_median_s": t_o, "ref_median_s": t_r, "ratio": ratio,
        "target_ratio": target, "ratio_ok": ratio >= target,
        "rows_ours": len(ours.rows), "fits_ours": len(a_ours), "rows_ref": len(ref), "fits_ref": len(a_ref),
        "matched": n, "max_abs_alpha_diff": dmax, "worst_layer": worst,
        "unmatched_ref": sorted(set(a_ref) - set(a_ours)), "unmatched_ours": sorted(set(a_ours) - set(a_ref)),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of htsr (median reported)")
    ap.add_argument("--ref-repeats", type=int, default=3, help="timed runs of WeightWatcher")
    ap.add_argument("--part", choices=("a", "b", "both"), default="both")
    ap.add_argument("--workers", type=int, default=0, help="htsr workers (0 = automatic)")
    ap.add_argument("--json", help="write results to this JSON file")
    return C.parse_and_run(ap, argv, run)


def run(args: argparse.Namespace) -> int:

    info = C.announce_machine(blas_threads=args.blas_threads)
    model = load_model()
    warmup()
    results = []
    if args.part in ("a", "both"):
        results.append(run_part(model, "a: defaults", {}, args.repeats, args.ref_repeats, args.workers, 4.0))
    if args.part in ("b", "both"):
        results.append(run_part(model, "b: randomize+mp_fit", {"randomize": True, "mp_fit": True},
                                args.repeats, args.ref_repeats, args.workers, 30.0))
    info["loadavg_end"] = C.loadavg()

    rows = []
    for r in results:
        rows.append([
            f"MiniLM {r['part']}", C.fmt_s(r["ours_median_s"]), C.fmt_s(r["ref_median_s"]), C.fmt_x(r["ratio"]),
            f">= {r['target_ratio']:.0f}x", C.verdict(r["ratio_ok"]),
            f"{r['max_abs_alpha_diff']:.1e} ({r['matched']} layers)",
            f"{len(r['ours_s'])}/{len(r['ref_s'])}",
        ])
    C.print_table(["benchmark", "htsr (median)", "WW 0.7.7 (median)", "speed-up", "target", "verdict",
                   "max abs alpha diff", "runs ours/WW"], rows, title="bench_minilm")
    for r in results:
        if r["unmatched_ref"] or r["unmatched_ours"]:
            print(f"  {r['part']}: fitted only by WW: {r['unmatched_ref']}; only by htsr: {r['unmatched_ours']}")
    print(f"\nload average at end: {info['loadavg_end']} (start {info['loadavg']})")
    C.write_json(args.json, {"benchmark": "minilm", "machine": info, "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
