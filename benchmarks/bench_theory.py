"""Single-index heavy-tail study: wall time of the whole default grid (target: under 10 minutes on 2 cores).

Runs exactly what ``htsr theory single-index --out-dir DIR`` runs (the paper's sizes n=2000, d=1000, h=1500, 10
full-batch steps, GD and Adam over the 9-rate grid, 1 repeat, figures included), in this process through the CLI
entry point, and reports wall time, process CPU time (all threads), the load average before and after (the
machine is shared: CPU time / wall time shows how much of the 2 cores the run actually got), and per-run
training vs measurement time.

With ``--profile`` it first times the parts of one measurement at the default sizes (median of 3, at the init
and after one Adam step at lr 1): engine eigenvalues, the two power-law fits, the top singular vector, the probe
features, their Gram matrix, KTA and the ridge refit, and one training step.

    python benchmarks/bench_theory.py [--threads 2] [--quick] [--profile] [--out DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import _common as C

TARGET_S = 600.0


def _parts(S, W, data, cfg) -> dict:
    """The parts of one measurement of weights ``W``, as zero-argument callables."""
    from htsr.spectra.eigen import eigenvalues

    ev = eigenvalues(W)
    Z = S.features(W, data.X_probe)
    G = Z.T @ Z
    return {
        "eigenvalues (engine, float64)": lambda: eigenvalues(W),
        "Hill + KS fits": lambda: S.spectrum_metrics(ev, cfg.h, cfg.d),
        "top singular vector (cold start)": lambda: S.top_right_singular_vector(W),
        "probe features": lambda: S.features(W, data.X_probe),
        "feature Gram (float64)": lambda: Z.T @ Z,
        "KTA": lambda: S.kernel_target_alignment(Z, data.y_probe, G),
        "ridge refit": lambda: S.ridge_refit(Z, data.y_probe, cfg.ridge_lambda, G),
        "whole measure()": lambda: S.measure(W, data, cfg),
    }


def profile(threads: int) -> list[list[str]]:
    """Median-of-3 wall time of each part of one measurement (at init and after 3 Adam steps at lr 1), and of one
    full-batch training step."""
    import torch

    from htsr.theory import single_index as S

    torch.set_num_threads(threads)
    cfg = S.SingleIndexConfig()
    data = S.make_data(cfg)
    model = S.TwoLayerStudent(data.W0, data.a0)
    opt = torch.optim.Adam([model.W], lr=1.0)

    def step() -> None:
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(data.X), data.y).backward()
        opt.step()

    rows = []
    for label in ("init", "after 3 Adam steps (lr 1)"):
        for name, fn in _parts(S, model.W.detach().clone(), data, cfg).items():
            rows.append([label, name, C.fmt_s(C.median([C.timed(fn)[0] for _ in range(3)]))])
        if label == "init":
            times = [C.timed(step)[0] for _ in range(3)]
            rows.append([label, "one full-batch Adam step (median of 3)", C.fmt_s(C.median(times))])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2: the target machine's cores)")
    ap.add_argument("--quick", action="store_true", help="the CLI's --quick sizes (a smoke test, not the target)")
    ap.add_argument("--out", default=None, help="keep the CLI's output here (default: a temporary directory)")
    ap.add_argument("--profile", action="store_true", help="first time the parts of one measurement")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import pandas as pd

    from htsr.cli.main import main as cli

    info = C.announce_machine(label="")
    if args.profile:
        C.print_table(["weights", "part", "median time"], profile(args.threads), "one measurement, by part")
    load0 = C.loadavg()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp) / "single_index"
        argv = ["theory", "single-index", "--threads", str(args.threads), "--out-dir", str(out), "--no-progress"]
        if args.out:
            argv.append("--overwrite")  # a previous run of this benchmark (an htsr output) is replaced
        if args.quick:
            argv.append("--quick")
        t0, c0 = time.perf_counter(), time.process_time()
        rc = cli(argv)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        load1 = C.loadavg()
        runs = pd.read_csv(out / "runs.csv") if rc == 0 else pd.DataFrame()
    rows = []
    for _, r in runs.iterrows():
        rows.append([r["optimizer"], f"{r['lr']:g}", C.fmt_s(r["time_s"]), C.fmt_s(r["measure_time_s"]),
                     f"{r['alpha_hill']:.3f}"])
    if rows:
        C.print_table(["optimizer", "lr", "run", "of which measuring", "alpha_hill"], rows, "per run")
    ok = rc == 0 and wall < TARGET_S and not args.quick
    C.print_table(["grid", "threads", "wall", "process CPU", "CPU/wall", "load avg start", "load avg end", "target"],
                  [["quick" if args.quick else "default (18 runs)", args.threads, C.fmt_s(wall), C.fmt_s(cpu),
                    f"{cpu / wall:.2f}", load0, load1,
                    f"< {TARGET_S:.0f} s " + (C.verdict(ok) if not args.quick else "")]],
                  "htsr theory single-index, whole grid")
    C.write_json(args.json, {"machine": info, "rc": rc, "wall_s": wall, "cpu_s": cpu, "load_start": load0,
                             "load_end": load1, "threads": args.threads, "quick": args.quick,
                             "runs": runs.to_dict(orient="records")})


if __name__ == "__main__":
    main()
