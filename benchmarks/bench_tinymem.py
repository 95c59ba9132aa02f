"""TinyMem: the whole 17-method comparison on a test-bed model trained on this CPU, with wall times.

Runs ``htsr tinymem compare`` in-process for each (layers, artifact) pair asked for, records the machine
(CPU, cores, load average before/after) and checks the claims of the issue:

* BalancedSubnet brings % memorized to <= 5 with <= 1 point of mean accuracy lost;
* unlearning (median wall time) is faster than fine-tuning and than the regularizers;
* the whole comparison for the 2-layer model finishes in < 30 minutes on 2 cores.

    python benchmarks/bench_tinymem.py [--layers 2,4] [--artifacts noise,backdoor] [--epochs 10]
        [--preset cpu] [--batch-size 32] [--device cpu] [--methods all] [--out DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import _common as C


def _compare(argv: list[str]) -> int:
    """``htsr tinymem compare`` exactly as the command line runs it."""
    from htsr.cli.main import main

    return int(main(["tinymem", "compare", *argv]))


def run(layers: int, artifact: str, epochs: int, out: Path, retain_size: int | None, *, preset: str = "cpu",
        batch_size: int = 32, device: str = "cpu", methods: str = "all", threads: int | None = None) -> dict:
    import pandas as pd

    d = out / f"l{layers}_{artifact}"
    load0 = C.loadavg()
    t0 = time.perf_counter()
    opt = ["--retain-size", str(retain_size)] if retain_size else []
    opt += ["--threads", str(threads)] if threads else []
    rc = _compare(["--preset", preset, "--artifact", artifact, "--layers", str(layers), "--epochs", str(epochs),
                   "--batch-size", str(batch_size), *opt, "--device", device, "--methods", methods, "--out-dir", str(d),
                   "--overwrite"])
    total = time.perf_counter() - t0
    if rc != 0:
        return {"layers": layers, "artifact": artifact, "rc": rc}
    t = pd.read_csv(d / "table.csv")
    fam = t.set_index("method")["family"]
    times = t.set_index("method")["time_s"]
    med = {f: float(times[fam == f].median()) if (fam == f).any() else float("nan")
           for f in ("regularizer", "fine-tuning", "unlearning")}
    if "balanced_subnet" not in times.index:
        return {"layers": layers, "artifact": artifact, "rc": rc, "total_s": total, "median_time_s": med}
    bs = t.set_index("method").loc["balanced_subnet"]
    if not (bs["mem_after"] == bs["mem_after"]):  # NaN: the method could not run (e.g. nothing memorized)
        return {"layers": layers, "artifact": artifact, "rc": rc, "total_s": total, "median_time_s": med,
                "balanced_subnet": None, "claim_balanced_subnet": None}
    return {"layers": layers, "artifact": artifact, "rc": rc, "total_s": total, "loadavg_before": load0,
            "loadavg_after": C.loadavg(), "median_time_s": med,
            "balanced_subnet": {"mem_after": float(bs["mem_after"]), "acc_drop": float(bs["acc_before"] -
                                                                                      bs["acc_after"])},
            "claim_balanced_subnet": bool(bs["mem_after"] <= 5 and bs["acc_before"] - bs["acc_after"] <= 1),
            "claim_unlearning_fastest": bool(med["unlearning"] < med["fine-tuning"] and
                                             med["unlearning"] < med["regularizer"]),
            "claim_under_30_min": bool(total < 1800) if layers == 2 else None, "table": str(d / "table.md")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", default="2", help="comma-separated layer counts (default 2)")
    ap.add_argument("--artifacts", default="noise,backdoor")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--retain-size", type=int, default=None, help="seeded retain subset (default: all, as the CLI)")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--methods", default="all")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, as the CLI)")
    ap.add_argument("--out", default="/tmp/htsr_bench_tinymem")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    info = C.announce_machine(label="")
    results = []
    for layers in (int(x) for x in args.layers.split(",")):
        for art in args.artifacts.split(","):
            r = run(layers, art, args.epochs, Path(args.out), args.retain_size, preset=args.preset,
                    batch_size=args.batch_size, device=args.device, methods=args.methods, threads=args.threads)
            results.append(r)
            print(r)
    rows = [[r["layers"], r["artifact"], C.fmt_s(r.get("total_s", float("nan"))),
             r.get("balanced_subnet"), C.verdict(r.get("claim_balanced_subnet")),
             C.verdict(r.get("claim_unlearning_fastest")), C.verdict(r.get("claim_under_30_min"))] for r in results]
    C.print_table(["layers", "artifact", "total", "BalancedSubnet", "BS claim", "unlearning fastest", "< 30 min"],
                  rows, title="TinyMem comparison")
    C.write_json(args.json, {"machine": info, "results": results})


if __name__ == "__main__":
    main()
