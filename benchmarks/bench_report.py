"""Time `htsr report` against `htsr analyze` on all-MiniLM-L6-v2, and the report of saved analyses; report sizes.

Run: ``PYTHONPATH=src python benchmarks/bench_report.py OUT_DIR [--repeats 3]``. Each command runs as a fresh
process (interpreter start and imports included, as a user sees them), alternating analyze and report; the Vega
bundle cache is warm (one report is written first) and the cold-cache cost is timed separately. Prints a markdown
table and writes OUT_DIR/bench_report.json."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    py = [sys.executable, "-m", "htsr"]
    res: dict[str, list[float]] = {"analyze": [], "report": [], "report_json_evals": [], "report_json": []}
    # saved analyses (with and without eigenvalues) and a warm bundle cache
    subprocess.run([*py, "analyze", "--example", "minilm", "-q", "-o", str(out / "minilm.json")], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    code = ("from htsr.examples import example_path; from htsr.spectra.analysis import analyze; "
            f"analyze(example_path('minilm')).save({str(out / 'minilm_evals.json')!r}, include_evals=True)")
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
    run([*py, "report", str(out / "minilm.json"), "-o", str(out / "warm.html")], env)
    for _ in range(a.repeats):
        res["analyze"].append(run([*py, "analyze", "--example", "minilm", "-q"], env))
        res["report"].append(run([*py, "report", "--example", "minilm", "-o", str(out / "minilm.html")], env))
        res["report_json_evals"].append(run([*py, "report", str(out / "minilm_evals.json"), "-o",
                                             str(out / "saved.html")], env))
        res["report_json"].append(run([*py, "report", str(out / "minilm.json"), "-o", str(out / "saved2.html")],
                                      env))
    with tempfile.TemporaryDirectory() as cache:  # cold cache: the bundle is built by vl-convert
        cold = run([*py, "report", "--example", "minilm", "-o", str(out / "cold.html")],
                   {**env, "HTSR_CACHE_DIR": cache})
    med = {k: statistics.median(v) for k, v in res.items()}
    sizes = {p: (out / p).stat().st_size for p in ("minilm.html", "saved.html", "saved2.html")}
    result = {"median_s": med, "runs_s": res, "cold_cache_report_s": cold, "sizes_bytes": sizes,
              "ratio_report_over_analyze": med["report"] / med["analyze"], "load": os.getloadavg()}
    (out / "bench_report.json").write_text(json.dumps(result, indent=2))
    print("| command | median wall time (s) |\n|---|---|")
    for k, v in med.items():
        print(f"| {k} | {v:.2f} |")
    print(f"| report, cold bundle cache | {cold:.2f} |")
    print(f"\nratio report / analyze: {result['ratio_report_over_analyze']:.2f}; sizes {sizes}; load "
          f"{result['load']}")


if __name__ == "__main__":
    main()
