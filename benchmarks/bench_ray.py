"""The Ray executor against the local one: a 16-cell sweep, and a sharded checkpoint's analysis (driver memory).

    python benchmarks/bench_ray.py sweep --cells 16 --cell-seconds 5
    python benchmarks/bench_ray.py checkpoint --gib 2 --dir /tmp/htsr-bench-2g

``sweep``: 16 cells of about ``--cell-seconds`` of single-threaded CPU work each (a fixed eigensolve repeated,
calibrated once), run (a) locally, one after another, (b) on a local Ray instance with 2 CPUs (two at a time) and
(c) on a local Ray instance with 1 CPU (one at a time: the executor's own overhead). Each run in a fresh
subprocess, so Ray's start-up is counted. ``checkpoint``: writes (once, cached) a sharded float32 safetensors
checkpoint of about ``--gib`` GiB (2048x2048 matrices, 4 shards), then analyses it locally and with
``--executor ray`` in subprocesses, reporting wall time and the driver's peak RSS (VmHWM), and checks the rows
are identical.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import _common as B

HERE = Path(__file__).resolve().parent


def work(units: int) -> float:
    """Single-threaded CPU work: ``units`` eigensolves of a fixed 300x300 symmetric matrix."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    a = np.random.default_rng(0).standard_normal((300, 300))
    a = a + a.T
    s = 0.0
    with threadpool_limits(1):
        for _ in range(units):
            s += float(np.linalg.eigvalsh(a)[-1])
    return s


def cell(i: int, units: int) -> tuple[dict, None]:
    return {"value": work(units)}, None


def _child_sweep(executor: str, cpus: int, cells: int, units: int, out: str) -> None:
    from htsr.experiments import RayExecutor, ResultStore, grid, run_sweep

    t0 = time.perf_counter()
    ex = RayExecutor(local_cpus=cpus) if executor == "ray" else None
    try:
        run_sweep(cell, grid(i=list(range(cells)), units=[units]), ResultStore(out), executor=ex)
    finally:
        if ex is not None:
            ex.close()
    print(json.dumps({"wall_s": time.perf_counter() - t0}))


def _child_analyze(executor: str, src: str) -> None:
    import htsr

    t0 = time.perf_counter()
    a = htsr.analyze(src, executor=None if executor == "local" else executor)
    wall = time.perf_counter() - t0
    hwm = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
               if line.startswith("VmHWM:")) / 1024
    rows = [{k: v for k, v in r.items() if k != "time_s"} for r in a.rows]
    print(json.dumps({"wall_s": wall, "driver_peak_mib": hwm, "rows": rows}, default=str))


def _run_child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "_child", *args], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE.parent / "src"),
                                                                                  os.environ.get("PYTHONPATH")]))})
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_sweep_bench(a: argparse.Namespace) -> int:
    import tempfile

    info = B.announce_machine()
    t = time.perf_counter()
    work(20)
    per = (time.perf_counter() - t) / 20
    units = max(1, round(a.cell_seconds / per))
    print(f"calibration: {per * 1e3:.1f} ms per unit -> {units} units per cell (~{units * per:.2f} s)")
    rows, res = [], {}
    for label, ex, cpus in (("local (serial)", "local", 0), ("ray, 2 CPUs", "ray", 2), ("ray, 1 CPU", "ray", 1)):
        with tempfile.TemporaryDirectory() as d:
            res[label] = _run_child(["sweep", ex, str(cpus), str(a.cells), str(units), d])["wall_s"]
        rows.append([label, B.fmt_s(res[label]), f"{res[label] / res['local (serial)']:.2f}x"])
    B.print_table(["executor", "wall", "vs local"], rows, title=f"{a.cells} cells of ~{a.cell_seconds} s")
    B.write_json(a.json, {"machine": info, "units": units, "unit_s": per, "wall_s": res})
    return 0


def _make_checkpoint(directory: Path, gib: float) -> Path:
    import shutil

    import torch
    from safetensors.torch import save_file

    index = directory / "model.safetensors.index.json"
    if index.is_file():
        return directory
    n = max(4, round(gib * 1024**3 / (2048 * 2048 * 4)))
    free = shutil.disk_usage(directory.parent if directory.parent.exists() else Path("/")).free
    if free < 1.2 * n * 2048 * 2048 * 4:
        raise SystemExit(f"not enough free disk for a {gib} GiB checkpoint at {directory} ({free / 1024**3:.1f} GiB)")
    tmp = directory.with_name(directory.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    wm, per_shard = {}, -(-n // 4)
    for s in range(4):
        names = [f"model.layers.{i}.mlp.proj.weight" for i in range(s * per_shard, min(n, (s + 1) * per_shard))]
        fn = f"model-{s + 1:05d}-of-00004.safetensors"
        save_file({k: torch.randn(2048, 2048, generator=g) / 45.0 for k in names}, tmp / fn)
        wm.update({k: fn for k in names})
    (tmp / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}))
    tmp.rename(directory)
    return directory


def run_checkpoint_bench(a: argparse.Namespace) -> int:
    info = B.announce_machine()
    src = _make_checkpoint(Path(a.dir), a.gib)
    size = sum(p.stat().st_size for p in src.glob("*.safetensors")) / 1024**3
    out = {}
    for ex in ("local", "ray"):
        out[ex] = _run_child(["analyze", ex, str(src)])
    same = out["local"]["rows"] == out["ray"]["rows"]
    B.print_table(["executor", "wall", "driver peak RSS"],
                  [[ex, B.fmt_s(out[ex]["wall_s"]), f"{out[ex]['driver_peak_mib']:.0f} MiB"] for ex in out],
                  title=f"analysis of a {size:.2f} GiB sharded checkpoint ({len(out['local']['rows'])} matrices); "
                        f"rows identical: {same}")
    B.write_json(a.json, {"machine": info, "gib": size,
                          **{ex: {k: v for k, v in r.items() if k != "rows"} for ex, r in out.items()},
                          "identical": same})
    return 0 if same else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_child":
        if argv[1] == "sweep":
            _child_sweep(argv[2], int(argv[3]), int(argv[4]), int(argv[5]), argv[6])
        else:
            _child_analyze(argv[2], argv[3])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    s = sub.add_parser("sweep")
    s.add_argument("--cells", type=int, default=16)
    s.add_argument("--cell-seconds", type=float, default=5.0)
    s.add_argument("--json", default=None)
    c = sub.add_parser("checkpoint")
    c.add_argument("--gib", type=float, default=2.0)
    c.add_argument("--dir", default="/tmp/htsr-bench-2g")
    c.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    return run_sweep_bench(a) if a.what == "sweep" else run_checkpoint_bench(a)


if __name__ == "__main__":
    sys.exit(main())
