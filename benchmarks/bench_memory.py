"""Peak memory of ``htsr.analyze`` on a sharded safetensors checkpoint larger than 2 GB.

1. Writes a LLaMA-shaped checkpoint (per block: q/k/v/o hidden x hidden, gate/up
   inter x hidden, down hidden x inter, plus two 1-D norm vectors) as several
   ``model-0000i-of-0000n.safetensors`` shards with ``model.safetensors.index.json``.
   Shards are streamed to disk one tensor at a time (safetensors header first, then each
   tensor's bytes), so the writer never holds more than one tensor.
2. For each ``--workers`` value, runs ``htsr.analyze(dir, workers=W)`` in a fresh
   subprocess. The child imports everything and runs a tiny warm-up analysis, records its
   baseline RSS, analyses the checkpoint, and reports its peak RSS (``ru_maxrss``). It
   also samples RssAnon/RssFile every 5 ms (anonymous memory vs mmapped file pages).
3. Growth = peak RSS - baseline RSS. Target: growth <= 3 x (largest tensor in float32,
   the dtype the analysis computes in) + 300 MB.

The checkpoint goes to a temporary directory that is deleted afterwards, unless ``--dir``
is given (then it is reused when it already holds a matching checkpoint, and kept).

    python benchmarks/bench_memory.py [--blocks 3] [--dtype fp32|bf16] [--workers 1 0] [--dir DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

MB = 1024**2
ST_DTYPE = {"fp32": ("F32", 4), "bf16": ("BF16", 2), "fp16": ("F16", 2)}


# ----------------------------------------------------------------------------- writer
def block_tensors(i: int, hidden: int, inter: int) -> list[tuple[str, tuple[int, ...]]]:
    p = f"model.layers.{i}."
    return [
        (p + "input_layernorm.weight", (hidden,)),
        (p + "self_attn.q_proj.weight", (hidden, hidden)),
        (p + "self_attn.k_proj.weight", (hidden, hidden)),
        (p + "self_attn.v_proj.weight", (hidden, hidden)),
        (p + "self_attn.o_proj.weight", (hidden, hidden)),
        (p + "post_attention_layernorm.weight", (hidden,)),
        (p + "mlp.gate_proj.weight", (inter, hidden)),
        (p + "mlp.up_proj.weight", (inter, hidden)),
        (p + "mlp.down_proj.weight", (hidden, inter)),
    ]


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _tensor_bytes(shape: tuple[int, ...], dtype: str, seed: int):
    """A buffer of one seeded random tensor (N(0, 1/fan_in)) in the checkpoint dtype."""
    import torch

    g = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=g) / (shape[-1] ** 0.5) if len(shape) > 1 else torch.ones(shape)
    if dtype == "bf16":
        return t.to(torch.bfloat16).view(torch.int16).numpy()
    if dtype == "fp16":
        return t.to(torch.float16).numpy()
    return t.numpy()


def write_shard(path: Path, tensors: list[tuple[str, tuple[int, ...]]], dtype: str, seed: int) -> int:
    """Stream one safetensors file: header, then each tensor generated and written in turn."""
    code, size = ST_DTYPE[dtype]
    header: dict = {"__metadata__": {"format": "pt"}}
    off = 0
    for name, shape in tensors:
        nbytes = _numel(shape) * size
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [off, off + nbytes]}
        off += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # data section 8-byte aligned
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        for k, (_, shape) in enumerate(tensors):
            buf = _tensor_bytes(shape, dtype, seed + k)
            fh.write(memoryview(buf).cast("B"))
            del buf
    return off


def write_checkpoint(directory: Path, blocks: int, shards: int, hidden: int, inter: int, dtype: str) -> dict:
    directory.mkdir(parents=True, exist_ok=True)
    per_shard = [list(range(blocks))[s::shards] for s in range(shards)]
    per_shard = [sorted(b) for b in per_shard if b]
    n = len(per_shard)
    weight_map: dict[str, str] = {}
    total = 0
    t0 = time.perf_counter()
    for s, bl in enumerate(per_shard):
        fn = f"model-{s + 1:05d}-of-{n:05d}.safetensors"
        tensors = [t for b in bl for t in block_tensors(b, hidden, inter)]
        total += write_shard(directory / fn, tensors, dtype, seed=1000 * s)
        weight_map.update({name: fn for name, _ in tensors})
        print(f"  wrote {fn} ({sum(_numel(sh) for _, sh in tensors) * ST_DTYPE[dtype][1] / MB:.0f} MiB)", flush=True)
    # index in model order (block by block), as Hugging Face writes it
    ordered = {name: weight_map[name] for b in range(blocks) for name, _ in block_tensors(b, hidden, inter)}
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": ordered}, indent=1))
    spec = {"blocks": blocks, "shards": n, "hidden": hidden, "inter": inter, "dtype": dtype, "total_bytes": total}
    (directory / "bench_memory.json").write_text(json.dumps(spec))
    print(f"  checkpoint: {total / 1e9:.2f} GB in {n} shards, {time.perf_counter() - t0:.1f} s", flush=True)
    return spec


# ----------------------------------------------------------------------------- child
def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def child(directory: str, workers: int, options: dict) -> int:
    import numpy as np  # noqa: F401
    import scipy.linalg  # noqa: F401
    import torch

    import htsr

    # warm-up: lazy imports and first-call allocations of the same code path, on a tiny source
    tiny = {"a.weight": torch.randn(96, 64), "b.weight": torch.randn(64, 96)}
    htsr.analyze(tiny, workers=workers, **options)
    del tiny
    import gc

    gc.collect()
    base_rss = _status_kb("VmRSS")
    base_anon, base_file = _status_kb("RssAnon"), _status_kb("RssFile")
    peaks = {"anon": base_anon, "file": base_file, "rss": base_rss}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            a, f = _status_kb("RssAnon"), _status_kb("RssFile")
            peaks["anon"] = max(peaks["anon"], a)
            peaks["file"] = max(peaks["file"], f)
            peaks["rss"] = max(peaks["rss"], a + f + _status_kb("RssShmem"))
            time.sleep(0.005)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.perf_counter()
    a = htsr.analyze(directory, workers=workers, **options)
    elapsed = time.perf_counter() - t0
    stop.set()
    th.join()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    statuses: dict[str, int] = {}
    for r in a.rows:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    out = {
        "workers_requested": workers, "workers": a.metadata.get("workers"), "elapsed_s": elapsed,
        "baseline_rss_mib": base_rss / 1024, "peak_rss_mib": maxrss / 1024, "growth_mib": (maxrss - base_rss) / 1024,
        "vmhwm_mib": _status_kb("VmHWM") / 1024,
        "sampled_peak_anon_growth_mib": (peaks["anon"] - base_anon) / 1024,
        "sampled_peak_file_growth_mib": (peaks["file"] - base_file) / 1024,
        "rows": len(a.rows), "statuses": statuses,
        "alpha_mean": a.summary().get("alpha"),
    }
    print("BENCH_MEMORY_RESULT " + json.dumps(out))
    return 0


def run_child(directory: Path, workers: int, options: dict, blas_threads: int | None = None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(directory), "--workers", str(workers),
           "--options", json.dumps(options)]
    env = dict(os.environ)
    if blas_threads:
        for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[k] = str(blas_threads)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"child for workers={workers} failed with exit code {proc.returncode}")
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH_MEMORY_RESULT "):
            return json.loads(line.split(" ", 1)[1])
    raise SystemExit(f"child for workers={workers} printed no result:\n{proc.stdout}\n{proc.stderr}")


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, default=None, help="transformer blocks (default: 3 for fp32, 6 for bf16)")
    ap.add_argument("--shards", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--inter", type=int, default=11008)
    ap.add_argument("--dtype", choices=tuple(ST_DTYPE), default="fp32", help="checkpoint dtype")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 0], help="workers values to measure (0 = auto)")
    ap.add_argument("--randomize", action="store_true", help="also randomize=True + mp_fit=True")
    ap.add_argument("--blas-threads", type=int, default=None,
                    help="set OPENBLAS/OMP/MKL_NUM_THREADS in the child (default: library defaults)")
    ap.add_argument("--dir", help="checkpoint directory (kept; reused if it matches)")
    ap.add_argument("--tmp-root", help="parent of the temporary checkpoint directory (default: system temp)")
    ap.add_argument("--json", help="write results to this JSON file")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--options", default="{}", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args.child, args.workers[0], json.loads(args.options))

    import _common as C

    blocks = args.blocks or (3 if args.dtype == "fp32" else 6)
    info = C.announce_machine(blas_threads=args.blas_threads)
    tmp = None
    if args.dir:
        directory = Path(args.dir)
    else:
        tmp = tempfile.mkdtemp(prefix="htsr-bench-memory-", dir=args.tmp_root)
        directory = Path(tmp)
    want = {"blocks": blocks, "shards": min(args.shards, blocks), "hidden": args.hidden, "inter": args.inter,
            "dtype": args.dtype}
    try:
        spec_file = directory / "bench_memory.json"
        spec = json.loads(spec_file.read_text()) if spec_file.is_file() else None
        if spec and all(spec.get(k) == v for k, v in want.items()):
            print(f"reusing checkpoint in {directory}")
        else:
            print(f"writing checkpoint to {directory}")
            spec = write_checkpoint(directory, blocks, args.shards, args.hidden, args.inter, args.dtype)
        largest = max(_numel(sh) for b in range(blocks) for _, sh in block_tensors(b, args.hidden, args.inter))
        largest_mib = largest * 4 / MB  # float32, the dtype the analysis computes in
        limit_mib = 3 * largest_mib + 300
        options = {"randomize": True, "mp_fit": True} if args.randomize else {}
        results = []
        for w in args.workers:
            r = run_child(directory, w, options, args.blas_threads)
            r["largest_fp32_mib"] = largest_mib
            r["limit_mib"] = limit_mib
            r["ratio_to_largest"] = r["growth_mib"] / largest_mib
            r["ok"] = r["growth_mib"] <= limit_mib
            results.append(r)
            print(f"  workers={w} ({r['workers']}): growth {r['growth_mib']:.0f} MiB, "
                  f"{r['elapsed_s']:.1f} s, statuses {r['statuses']}", flush=True)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            print(f"removed {tmp}")
    info["loadavg_end"] = C.loadavg()
    desc = (f"{spec['total_bytes'] / 1e9:.2f} GB {args.dtype}, {spec['shards']} shards, {blocks} blocks "
            f"({args.hidden}/{args.inter})" + (", randomize+mp_fit" if args.randomize else "")
            + (f", BLAS threads {args.blas_threads}" if args.blas_threads else ""))
    rows = [[
        desc, f"{r['workers_requested']} ({r['workers']})", f"{r['baseline_rss_mib']:.0f} MiB",
        f"{r['peak_rss_mib']:.0f} MiB", f"{r['growth_mib']:.0f} MiB", f"{r['largest_fp32_mib']:.0f} MiB",
        f"{r['ratio_to_largest']:.2f}x", f"<= {r['limit_mib']:.0f} MiB", C.verdict(r["ok"]),
        f"{r['sampled_peak_anon_growth_mib']:.0f} / {r['sampled_peak_file_growth_mib']:.0f} MiB",
        f"{r['elapsed_s']:.1f} s",
    ] for r in results]
    C.print_table(["checkpoint", "workers (used)", "baseline RSS", "peak RSS", "growth", "largest tensor (fp32)",
                   "growth / largest", "target (3x + 300 MiB)", "verdict", "sampled peak anon / file growth",
                   "analyze time"], rows, title="bench_memory")
    print(f"\nload average at end: {info['loadavg_end']} (start {info['loadavg']})")
    C.write_json(args.json, {"benchmark": "memory", "machine": info, "checkpoint": spec, "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
