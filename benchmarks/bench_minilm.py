"""all-MiniLM-L6-v2 (real weights): htsr vs WeightWatcher 0.7.7 analyze(), end to end.

(a) ``htsr.analyze(model, preset="weightwatcher")`` vs ``WeightWatcher(model).analyze()``
    with its defaults, on the same nn.Module: time ratio (target >= 5x) and the max
    |alpha diff| over layers matched by name (WW ``longname`` == htsr ``name``).
(c) ``htsr.analyze(model)`` with the default preset vs the same WW run (target >= 8x); its alphas come from
    another fit rule, so only the times are compared.
(floor, ``--floor``) the float64 work the ``weightwatcher`` preset cannot skip: each matrix's Gram product and
    its eigenvalues (``numpy`` ``a.T @ a`` and ``eigvalsh``, both releasing the GIL), the 39 matrices on
    two threads, timed next to WW: the best speed-up any float64 implementation could reach here.
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


def floor_time(model, repeats: int = 5) -> dict:
    """Seconds (best of ``repeats``) for the float64 Gram + eigenvalues of every matrix WW fits (both sides of
    at least 50), split over two threads (each BLAS call keeps the library's threads)."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    mats = [p.detach().numpy() for _, p in model.named_parameters() if p.ndim == 2 and min(p.shape) >= 50]

    def one(w):
        a = w.astype(np.float64)
        g = a.T @ a if a.shape[0] >= a.shape[1] else a @ a.T
        return np.linalg.eigvalsh(g)

    order = sorted(mats, key=lambda w: -w.size)
    ts = []
    with ThreadPoolExecutor(2) as ex:
        for _ in range(repeats):
            t = time.perf_counter()
            list(ex.map(one, order))
            ts.append(time.perf_counter() - t)
    seq = []
    for _ in range(repeats):
        t = time.perf_counter()
        for w in order:
            one(w)
        seq.append(time.perf_counter() - t)
    return {"matrices": len(mats), "two_threads_s": min(ts), "one_thread_loop_s": min(seq)}


def run_part(model, label: str, opts: dict, repeats: int, ref_repeats: int, workers: int, target: float,
             preset: str = "weightwatcher") -> dict:
    import htsr

    ours_t, ref_t = [], []
    ours = ref = None
    for i in range(max(repeats, ref_repeats)):
        order = ("ours", "ref") if i % 2 == 0 else ("ref", "ours")
        for side in order:
            if side == "ours" and i < repeats:
                t, ours = C.timed(lambda: htsr.analyze(model, preset=preset, workers=workers, **opts))
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
    ap.add_argument("--part", choices=("a", "b", "c", "both", "ac"), default="both",
                    help="a, b, c, both (= a and b), ac (= a and c)")
    ap.add_argument("--floor", action="store_true", help="also time the float64 floor (Gram + eigenvalues)")
    ap.add_argument("--workers", type=int, default=0, help="htsr workers (0 = automatic)")
    ap.add_argument("--json", help="write results to this JSON file")
    return C.parse_and_run(ap, argv, run)


def run(args: argparse.Namespace) -> int:

    info = C.announce_machine(blas_threads=args.blas_threads)
    model = load_model()
    warmup()
    results = []
    if args.part in ("a", "both", "ac"):
        results.append(run_part(model, "a: defaults", {}, args.repeats, args.ref_repeats, args.workers, 5.0))
    if args.part in ("c", "ac"):
        results.append(run_part(model, "c: htsr default preset", {}, args.repeats, args.ref_repeats, args.workers,
                                8.0, preset="htsr"))
    if args.part in ("b", "both"):
        results.append(run_part(model, "b: randomize+mp_fit", {"randomize": True, "mp_fit": True},
                                args.repeats, args.ref_repeats, args.workers, 30.0))
    floor = floor_time(model) if args.floor else None
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
    if floor:
        ref = [r for r in results if r["part"].startswith("a")]
        best = min(floor["two_threads_s"], floor["one_thread_loop_s"])
        ratio = f"; WW median / best floor = {ref[0]['ref_median_s'] / best:.2f}x" if ref else ""
        print(f"\nfloor: float64 Gram + eigvalsh of {floor['matrices']} matrices: {C.fmt_s(floor['two_threads_s'])}"
              f" on two threads, {C.fmt_s(floor['one_thread_loop_s'])} in one loop{ratio}")
    print(f"\nload average at end: {info['loadavg_end']} (start {info['loadavg']})")
    C.write_json(args.json, {"benchmark": "minilm", "machine": info, "results": results, "floor": floor})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
