"""GPU check (< 3 min): htsr.analyze with device="cuda" vs device="cpu", same alphas, timings.

Workloads: all-MiniLM-L6-v2 (real weights, the example directory) and a pair of seeded
Student-t(4) matrices, 4096x4096 and 11008x4096 (LLaMA-7B q_proj / gate_proj shapes).
For precision "float64" the per-layer alphas on CUDA must match the CPU ones within
``--tol`` (1e-3); "float32" differences are reported only (float32 eigenvalues of the
two backends differ in the last bits, which can move xmin by one sample).

Exits 0 with a message when CUDA is not available; exits 1 when a float64 check fails.

    python benchmarks/gpu_check.py [--tol 1e-3] [--repeats 2] [--json OUT]
"""

from __future__ import annotations

import argparse
import sys
import time

import _common as C


def workloads():
    from htsr.examples import example_path

    out = []
    try:
        out.append(("MiniLM", example_path("minilm")))
    except Exception as e:  # the example package is optional
        print(f"skipping MiniLM: {e}")
    sd = {
        "q_proj.weight": C.heavy_tailed(4096, 4096, 0),
        "gate_proj.weight": C.heavy_tailed(11008, 4096, 1),
    }
    out.append(("4096x4096 + 11008x4096", sd))
    return out


def timed_analyze(source, device: str, precision: str, repeats: int):
    import torch

    import htsr

    times, a = [], None
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a = htsr.analyze(source, device=device, precision=precision)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return a, times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tol", type=float, default=1e-3, help="max |alpha diff| allowed in float64")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per device (the first CUDA one warms up)")
    ap.add_argument("--json", help="write results to this JSON file")
    ap.add_argument("--device", default="cuda",
                    help="device compared with cpu (default cuda; 'cpu' dry-runs the script without a GPU)")
    args = ap.parse_args(argv)

    import torch

    dev = args.device
    if dev.startswith("cuda") and not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device available (torch {torch.__version__}); nothing to check, exiting 0.")
        return 0

    import htsr

    info = C.machine_info()
    info["cuda"] = torch.version.cuda
    info["compared_device"] = dev
    print("machine:", C.machine_line(info), f"CUDA {torch.version.cuda}; comparing {dev} with cpu")
    # initialise CUDA, cuBLAS and cuSOLVER outside the timings
    htsr.analyze({"w.weight": torch.randn(256, 128)}, device=dev, precision="float64")
    htsr.analyze({"w.weight": torch.randn(256, 128)}, device=dev, precision="float32")

    results, failed = [], False
    t_start = time.perf_counter()
    for label, source in workloads():
        for precision in ("float64", "float32"):
            a_cpu, t_cpu = timed_analyze(source, "cpu", precision, 1)
            a_gpu, t_gpu = timed_analyze(source, dev, precision, args.repeats)
            al_cpu, al_gpu = C.our_alphas(a_cpu), C.our_alphas(a_gpu)
            n, dmax, worst = C.alpha_diffs(al_gpu, al_cpu)
            missing = sorted(set(al_cpu) ^ set(al_gpu))
            ok = None
            if precision == "float64":
                ok = dmax <= args.tol and not missing and n > 0
                failed |= not ok
            errs = [r for r in a_gpu.rows if r["status"] == "error"]
            r = {"workload": label, "precision": precision, "cpu_s": t_cpu, "cuda_s": t_gpu,
                 "cpu_median_s": C.median(t_cpu), "cuda_best_s": min(t_gpu), "matched": n,
                 "max_abs_alpha_diff": dmax, "worst_layer": worst, "fit_only_on_one_device": missing,
                 "cuda_errors": [f"{e['name']}: {e['reason']}" for e in errs], "ok": ok}
            results.append(r)
            print(f"  {label} {precision}: cpu {C.fmt_s(r['cpu_median_s'])}, {dev} {C.fmt_s(r['cuda_best_s'])}, "
                  f"max |dalpha| {dmax:.2e} over {n} layers" + (f" (worst {worst})" if worst else ""), flush=True)
            for e in r["cuda_errors"]:
                print(f"    {dev} row error: {e}")
            if missing:
                print(f"    fitted on one device only: {missing}")
    rows = [[
        r["workload"], r["precision"], C.fmt_s(r["cpu_median_s"]), C.fmt_s(r["cuda_best_s"]),
        C.fmt_x(r["cpu_median_s"] / r["cuda_best_s"]) if r["cuda_best_s"] > 0 else "n/a",
        f"{r['max_abs_alpha_diff']:.1e} ({r['matched']} layers)",
        ("pass" if r["ok"] else "FAIL") if r["ok"] is not None else "report only",
    ] for r in results]
    C.print_table(["workload", "precision", "cpu", f"{dev} (best)", f"cpu / {dev}", "max abs alpha diff", "check"],
                  rows, title=f"gpu_check ({info['gpu'] or dev})")
    print(f"\ntotal {time.perf_counter() - t_start:.1f} s; float64 tolerance {args.tol}")
    C.write_json(args.json, {"benchmark": "gpu_check", "machine": info, "results": results})
    if failed:
        print(f"gpu_check: FAILED (float64 alphas differ between {dev} and cpu)", file=sys.stderr)
        return 1
    print("gpu_check: OK")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
