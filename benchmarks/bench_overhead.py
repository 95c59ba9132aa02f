"""Overhead of ``htsr.analyze`` over the bare eigensolves it cannot avoid.

For each workload, the *bare* baseline is a plain loop calling
``htsr.spectra.eigen.eigenvalues(W, precision=<the precision analyze uses>)`` on exactly
the matrices that analyze fits (skipped rows excluded), with the default BLAS threads.
Everything else analyze does (walking the source, the power-law fit, norm metrics,
bookkeeping, thread pool) is overhead. Targets:

* default options: analyze / bare <= 1.25x;
* ``randomize=True, mp_fit=True``: analyze / bare <= 1.5x, where the bare baseline is the
  eigensolves of the original **and** of the element-shuffled matrices (shuffled once,
  outside the timing); the shuffling itself therefore counts as htsr overhead.

Workloads: all-MiniLM-L6-v2 (real weights, preset "htsr": embeddings skipped, float64
spectra) and LLaMA-7B-shaped Student-t random matrices (q/o 4096x4096, gate 11008x4096,
down 4096x11008; float32 spectra under precision "auto").

    python benchmarks/bench_overhead.py [--repeats 3] [--workload minilm llama] [--hidden 4096 --inter 11008]
"""

from __future__ import annotations

import argparse

import _common as C


def minilm_source():
    import transformers

    from htsr.examples import example_path

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    m = transformers.AutoModel.from_pretrained(str(example_path("minilm"))).eval()
    params = {k: v.detach() for k, v in m.named_parameters()}
    return m, params


def llama_source(hidden: int, inter: int, seed: int):
    shapes = {
        "model.layers.0.self_attn.q_proj.weight": (hidden, hidden),
        "model.layers.0.self_attn.o_proj.weight": (hidden, hidden),
        "model.layers.0.mlp.gate_proj.weight": (inter, hidden),
        "model.layers.0.mlp.down_proj.weight": (hidden, inter),
    }
    sd = {k: C.heavy_tailed(n, m, seed + i) for i, (k, (n, m)) in enumerate(shapes.items())}
    return sd, sd


def matrices_for(analysis, params: dict) -> list:
    """The weight tensors of the rows analyze actually fitted (not skipped)."""
    out = []
    for r in analysis.rows:
        if r["status"] == "skipped":
            continue
        w = params[r["param"]]
        if w.ndim != 2:
            raise SystemExit(f"{r['name']}: only 2-D weights are handled by this benchmark")
        out.append(w)
    return out


def shuffled(mats: list, seed: int) -> list:
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    out = []
    for w in mats:
        perm = torch.from_numpy(rng.permutation(w.numel()))
        out.append(w.reshape(-1)[perm].reshape(w.shape).contiguous())
    return out


def run_workload(label: str, source, params: dict, opts: dict, repeats: int, workers: int, target: float) -> dict:
    import htsr
    from htsr.spectra.eigen import eigenvalues

    a0 = htsr.analyze(source, workers=workers, **opts)  # warm-up, and find the fitted rows
    precision = a0.config.precision
    mats = matrices_for(a0, params)
    rand = opts.get("randomize", False)
    bare_mats = mats + (shuffled(mats, 1) if rand else [])

    n_workers = a0.metadata.get("workers") or 1

    def bare_serial():
        for w in bare_mats:
            eigenvalues(w, precision=precision)

    def bare_parallel():
        # the layout analyze uses: n_workers threads, each with single-threaded BLAS
        from concurrent.futures import ThreadPoolExecutor

        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(n_workers) as pool:
            list(pool.map(lambda w: eigenvalues(w, precision=precision), bare_mats))

    sides = {"analyze": lambda: htsr.analyze(source, workers=workers, **opts), "serial": bare_serial}
    if n_workers > 1:
        sides["parallel"] = bare_parallel
    for fn in list(sides.values())[1:]:
        fn()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in sides}
    a = a0
    for i in range(repeats):
        order = list(sides) if i % 2 == 0 else list(sides)[::-1]
        for side in order:
            t, out = C.timed(sides[side])
            times[side].append(t)
            if side == "analyze":
                a = out
        print(f"  [{label}] run {i + 1}: " + ", ".join(f"{k} {[round(x, 3) for x in v]}" for k, v in times.items()),
              flush=True)
    med = {k: C.median(v) for k, v in times.items()}
    ta = med["analyze"]
    best = min((k for k in med if k != "analyze"), key=med.get)
    tb = med[best]
    return {
        "workload": label, "options": opts, "precision": precision, "workers": a.metadata.get("workers"),
        "n_matrices": len(mats), "n_eigensolves": len(bare_mats), "shapes": sorted({tuple(w.shape) for w in mats}),
        "analyze_s": times["analyze"], "bare_serial_s": times["serial"], "bare_parallel_s": times.get("parallel", []),
        "analyze_median_s": ta, "bare_serial_median_s": med["serial"],
        "bare_parallel_median_s": med.get("parallel", float("nan")), "bare_median_s": tb, "bare_baseline": best,
        "ratio": ta / tb, "target_ratio": target, "ratio_ok": ta / tb <= target,
        "layer_time_sum_s": sum(r["time_s"] for r in a.rows),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workload", nargs="+", choices=("minilm", "llama"), default=["minilm", "llama"])
    ap.add_argument("--mode", nargs="+", choices=("default", "rand"), default=["default", "rand"],
                    help="default options and/or randomize=True + mp_fit=True")
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--inter", type=int, default=11008)
    ap.add_argument("--workers", type=int, default=0, help="htsr workers (0 = automatic)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write results to this JSON file")
    return C.parse_and_run(ap, argv, run)


def run(args: argparse.Namespace) -> int:

    info = C.announce_machine(blas_threads=args.blas_threads)
    results = []
    for wl in args.workload:
        if wl == "minilm":
            source, params = minilm_source()
            name = "MiniLM (real)"
        else:
            source, params = llama_source(args.hidden, args.inter, args.seed)
            name = f"LLaMA-shaped random ({args.hidden}/{args.inter})"
        for mode in args.mode:
            opts = {} if mode == "default" else {"randomize": True, "mp_fit": True}
            target = 1.25 if mode == "default" else 1.5
            results.append(run_workload(f"{name}, {mode}", source, params, opts, args.repeats, args.workers, target))
        del source, params
    info["loadavg_end"] = C.loadavg()

    rows = [[
        r["workload"], f"{r['n_matrices']} ({r['precision']})", r["n_eigensolves"], C.fmt_s(r["analyze_median_s"]),
        C.fmt_s(r["bare_serial_median_s"]), C.fmt_s(r["bare_parallel_median_s"]),
        f"{r['ratio']:.2f}x", f"<= {r['target_ratio']}x", C.verdict(r["ratio_ok"]), r["workers"],
    ] for r in results]
    C.print_table(["workload", "matrices (precision)", "bare eigensolves", "analyze (median)", "bare serial",
                   "bare parallel", "analyze / best bare", "target", "verdict", "workers"], rows,
                  title="bench_overhead")
    print("\nbare serial = plain loop, default BLAS threads; bare parallel = the same thread layout as analyze "
          "(workers threads, 1 BLAS thread each). The ratio uses the faster of the two.\n"
          "'rand' = randomize=True + mp_fit=True; its bare baseline includes the eigensolves of the shuffled "
          "matrices (shuffled once, outside the timing), so shuffling counts as htsr overhead.")
    print(f"load average at end: {info['loadavg_end']} (start {info['loadavg']})")
    C.write_json(args.json, {"benchmark": "overhead", "machine": info, "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
