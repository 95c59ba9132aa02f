"""MD tree: the reproduced Table B (MD ``benchmark/README.md``) and its wall time.

(a) ``reproduce_table`` on the MD population (shipped with htsr) (cases 1-5, MD tree + two baselines, 5 seeds each;
    with ``--extras`` also the CKA variant and a free tree on loss-landscape features): the table
    next to the published accuracies, and the wall time (median of ``--repeats``).
(b) Threshold fitting alone, the vectorised predictor used by ``MDTreeTemperature.fit`` vs a per-row
    Python predictor (the reference's style) driving the same bounded scalar search, side by side in
    this process: case 1's seed-42 training set (96 configurations) and the whole clean Q1 pool
    (1,560). Both must give the same thresholds.

    python benchmarks/bench_mdtree.py [--data-dir DIR] [--repeats 3] [--extras] [--json OUT]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import _common as C


def row_loop_fit(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The Q1 tree fitted with a per-row Python predictor (same search, same objective)."""
    from scipy.optimize import minimize_scalar

    from htsr.diagnosis.mdtree import TEMPERATURE

    tau = [t.init for t in TEMPERATURE.thresholds]

    def predict(t: list[float]) -> np.ndarray:
        out = []
        for e, m, h in X:
            if e <= t[0]:
                out.append("small")
            elif m <= t[1]:
                out.append("large" if h <= t[2] else "small")
            else:
                out.append("large")
        return np.array(out)

    for j, spec in enumerate(TEMPERATURE.thresholds):
        def objective(v: float, j: int = j) -> float:
            tau[j] = v
            return -float(np.mean(predict(tau) == y))

        tau[j] = float(minimize_scalar(objective, bounds=spec.bounds, method="bounded").x)
    return np.array(tau)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None, help="the two population CSVs (default: the shipped copies)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--extras", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from htsr.diagnosis.mdtree import MDTreeTemperature
    from htsr.diagnosis.population import load_md_collections
    from htsr.diagnosis.reproduce import format_table, reproduce_table
    from htsr.diagnosis.transfer import prepare_task, sample_training_set

    info = C.announce_machine(label="")

    walls, table = [], None
    for _ in range(args.repeats):
        t, table = C.timed(lambda: reproduce_table(args.data_dir, extras=args.extras))
        walls.append(t)
    print("\n### (a) Table B reproduced (accuracy %, mean over seeds 42, 90, 38, 18, 72)\n")
    print(format_table(table, markdown=True))
    ok = table["within_tolerance"].dropna().astype(bool)
    print(f"{int(ok.sum())}/{len(ok)} within tolerance (MD tree 0.1, baselines 1.0 point); wall time "
          f"{C.fmt_s(C.median(walls))} (median of {args.repeats}; loading the CSVs included)")

    clean, noisy = load_md_collections(args.data_dir)
    pool, _ = prepare_task(clean, noisy, "bs_failure")
    cols = ["train_error", "mode_connectivity_peak", "hessian_t"]
    rows, raw = [], {}
    for name, train in (("case 1, seed 42 (96 configs)", sample_training_set(pool, "random", 8, 42)),
                        ("clean Q1 pool (1,560 configs)", pool)):
        X, y = train[cols].to_numpy(), train["bs_failure"].to_numpy().astype(str)
        ours_t, ref_t = [], []
        MDTreeTemperature().fit(train, train["bs_failure"])  # warm-up
        for _ in range(args.repeats):  # alternate the two sides so that load drift hits both
            t0 = time.perf_counter()
            est = MDTreeTemperature().fit(train, train["bs_failure"])
            ours_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            tau = row_loop_fit(X, y)
            ref_t.append(time.perf_counter() - t0)
        same = bool(np.array_equal(tau, est.thresholds_))
        ratio = C.median(ref_t) / C.median(ours_t)
        rows.append([name, C.fmt_s(C.median(ours_t)), C.fmt_s(C.median(ref_t)), C.fmt_x(ratio), same,
                     " ".join(f"{v:.4g}" for v in est.thresholds_)])
        raw[name] = {"ours_s": ours_t, "row_loop_s": ref_t, "same_thresholds": same,
                     "thresholds": est.thresholds_.tolist()}
    C.print_table(["training set", "MDTreeTemperature.fit", "per-row loop", "ratio", "same thresholds",
                   "thresholds"], rows, title="(b) fitting the Q1 tree: vectorised vs per-row predictor")
    print(f"\nload avg at end {C.loadavg()}")
    C.write_json(args.json, {"machine": info, "reproduce_wall_s": walls, "table": table.to_dict("records"),
                             "fit": raw})


if __name__ == "__main__":
    main()
