"""A LLaMA-7B-shaped model end to end: ``htsr analyze`` (default preset) vs WeightWatcher 0.7.7, per shape.

Builds once, and caches under ``--cache`` (default /tmp/htsr-llm7b-<N>b), a bf16 sharded safetensors
checkpoint of ``--blocks`` N LLaMA-7B blocks (hidden 4096, intermediate 11008: per block q/k/v/o 4096x4096,
gate/up 11008x4096, down 4096x11008; one shard per block, an HF index JSON). Entries are seeded Student-t(4)
/ sqrt(fan-in). The full 7B is 32 blocks (12.95 GB); with N < 32 every figure is also given extrapolated to
32 blocks two ways, labelled: start-up (timed on a one-tensor checkpoint) + (wall - start-up) x 32/N, and
the per-shape compute alone (mean row time of each shape x its 7B count: 128 / 64 / 32; no I/O). Refuses, before
writing anything, when the cache's disk lacks the space (:func:`check_disk`).

Timed, each in a fresh process (peak RSS from ``wait4``):

* ``htsr analyze CKPT -o out.csv`` (default preset, default workers) end to end from the bf16 files;
* the same with ``--set tail_only=true`` (full-rank matrices: expected to fall back, each row says why);
* WeightWatcher 0.7.7 ``analyze()`` on ``--ww-per-shape`` matrices of each shape, loaded as float32
  ``nn.Linear`` layers, its time per matrix extrapolated to the 7B count of that shape.

    python benchmarks/bench_llm_scale.py --blocks 2 --build-only       # once, any time (cached)
    python benchmarks/bench_llm_scale.py [--blocks 2] [--ww-per-shape 1] [--no-tail] [--json OUT]

Expected run time on the 2-core VM, quiet: ~1 min to build 2 blocks (once), ~1-2 min per htsr run,
~1.5 min for WeightWatcher on one matrix of each shape.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

HIDDEN, INTER, N_BLOCKS_7B = 4096, 11008, 32
MARKER = "htsr-bench-complete.json"


def block_shapes(hidden: int = HIDDEN, inter: int = INTER) -> tuple[tuple[str, int, int], ...]:
    """(name, out_features, in_features) of one LLaMA block's matrices (nn.Linear weight shape: out x in)."""
    return (("self_attn.q_proj", hidden, hidden), ("self_attn.k_proj", hidden, hidden),
            ("self_attn.v_proj", hidden, hidden), ("self_attn.o_proj", hidden, hidden),
            ("mlp.gate_proj", inter, hidden), ("mlp.up_proj", inter, hidden), ("mlp.down_proj", hidden, inter))


BLOCK = block_shapes()
BYTES_PER_BLOCK = sum(o * i for _, o, i in BLOCK) * 2  # bf16, LLaMA-7B


class DiskSpaceError(RuntimeError):
    """The cache's disk has less free space than the checkpoint needs."""


def check_disk(directory: str | os.PathLike, need_bytes: int, margin: float = 1.1) -> None:
    """Raise :class:`DiskSpaceError` unless ``directory``'s file system has ``need_bytes * margin`` free."""
    d = Path(directory)
    probe = d if d.exists() else next((p for p in d.parents if p.exists()), Path("/"))
    free = shutil.disk_usage(probe).free
    if free < need_bytes * margin:
        raise DiskSpaceError(
            f"{probe}: {free / 2**30:.1f} GiB free, the checkpoint needs {need_bytes / 2**30:.1f} GiB "
            f"(+{(margin - 1) * 100:.0f}% margin); use fewer --blocks (the figures are extrapolated per shape) or "
            f"another --cache")


def shape_counts(blocks: int, hidden: int = HIDDEN, inter: int = INTER) -> dict[str, int]:
    """Matrices per shape ('4096x4096', ...) in ``blocks`` blocks."""
    out: dict[str, int] = {}
    for _, o, i in block_shapes(hidden, inter):
        out[f"{o}x{i}"] = out.get(f"{o}x{i}", 0) + blocks
    return out


def build_checkpoint(cache: Path, blocks: int, seed: int = 0, hidden: int = HIDDEN, inter: int = INTER) -> Path:
    """The cached checkpoint directory (built once; a marker file says it is complete)."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    if (cache / MARKER).is_file():
        return cache
    shapes = block_shapes(hidden, inter)
    per_block = BYTES_PER_BLOCK if (hidden, inter) == (HIDDEN, INTER) else sum(o * i for _, o, i in shapes) * 2
    check_disk(cache, blocks * per_block)
    if cache.exists():
        shutil.rmtree(cache)
    cache.mkdir(parents=True)
    weight_map = {}
    t0 = time.perf_counter()
    for b in range(blocks):
        shard = f"model-{b + 1:05d}-of-{blocks:05d}.safetensors"
        tensors = {}
        for j, (name, o, i) in enumerate(shapes):
            rng = np.random.default_rng([seed, b, j])
            w = rng.standard_t(4.0, size=(o, i)).astype(np.float32)
            w *= np.float32(1.0 / np.sqrt(i))
            key = f"model.layers.{b}.{name}.weight"
            tensors[key] = torch.from_numpy(w).to(torch.bfloat16)
            weight_map[key] = shard
        save_file(tensors, str(cache / shard), metadata={"format": "pt"})
        print(f"  block {b + 1}/{blocks} written ({time.perf_counter() - t0:.0f} s)", flush=True)
    (cache / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": blocks * per_block}, "weight_map": weight_map}, indent=1))
    (cache / MARKER).write_text(json.dumps({"blocks": blocks, "seed": seed, "hidden": hidden, "inter": inter}))
    return cache


def run_timed(cmd: list[str], env: dict | None = None) -> tuple[float, float, int, str]:
    """Wall seconds, peak RSS (MiB) of the child, exit code, stderr tail."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    err = p.stderr.read().decode(errors="replace")[-2000:] if p.stderr else ""
    return wall, ru.ru_maxrss / 1024, os.waitstatus_to_exitcode(status), err


def htsr_run(ckpt: Path, out: Path, extra: list[str]) -> dict:
    import pandas as pd

    cmd = [sys.executable, "-m", "htsr", "analyze", str(ckpt), "-o", str(out), "--quiet", *extra]
    wall, rss, rc, err = run_timed(cmd)
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {rc}: {err}")
    df = pd.read_csv(out)
    per_shape = {}
    for shape, g in df.groupby("shape"):
        per_shape[shape] = float(g["time_s"].mean())
    res = {"wall_s": wall, "peak_rss_mib": rss, "rows": len(df), "per_matrix_s": per_shape,
           "alpha_mean": float(df["alpha"].mean())}
    if "spectrum" in df:
        res["spectrum"] = df["spectrum"].value_counts().to_dict()
        res["notes"] = sorted(set(df["spectrum_note"].dropna().astype(str)))[:3]
    return res


def startup_s(cache: Path) -> float:
    """Wall seconds of ``htsr analyze`` on a one-tensor 16x16 checkpoint: process start, imports, output."""
    import torch
    from safetensors.torch import save_file

    tiny = cache.parent / f"{cache.name}-startup.safetensors"
    if not tiny.is_file():
        save_file({"w.weight": torch.randn(16, 16, generator=torch.Generator().manual_seed(0))}, str(tiny))
    out = cache.parent / f"{cache.name}-startup.csv"
    times = []
    for _ in range(2):
        wall, _, rc, err = run_timed([sys.executable, "-m", "htsr", "analyze", str(tiny), "-o", str(out), "--quiet"])
        if rc != 0:
            raise RuntimeError(f"htsr analyze on {tiny} exited {rc}: {err}")
        times.append(wall)
    return min(times)


def ww_per_shape(ckpt: Path, per_shape: int) -> dict[str, float]:
    """WeightWatcher 0.7.7 seconds per matrix, by shape, on the first ``per_shape`` matrices of each shape."""
    import torch
    from safetensors import safe_open

    import _common as C

    index = json.loads((ckpt / "model.safetensors.index.json").read_text())["weight_map"]
    picked: dict[str, list[str]] = {}
    for key, shard in index.items():
        with safe_open(str(ckpt / shard), "pt") as f:
            shape = "x".join(map(str, f.get_slice(key).get_shape()))
        if len(picked.setdefault(shape, [])) < per_shape:
            picked[shape].append(key)
    warm = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.Linear(48, 64))
    C.ww_analyze(warm)  # WeightWatcher's import and first-call costs, outside the timings
    out = {}
    for shape, keys in picked.items():
        mods = []
        for key in keys:
            with safe_open(str(ckpt / index[key]), "pt") as f:
                w = f.get_tensor(key).float()
            lin = torch.nn.utils.skip_init(torch.nn.Linear, w.shape[1], w.shape[0], bias=False)
            with torch.no_grad():
                lin.weight.copy_(w)
            mods.append(lin)
        model = torch.nn.Sequential(*mods).eval()
        t, _ = C.timed(lambda m=model: C.ww_analyze(m))
        out[shape] = t / len(mods)
        print(f"  WW {shape}: {out[shape]:.1f} s per matrix ({len(mods)} timed)", flush=True)
    return out


def solver_check(width: int = HIDDEN, repeats: int = 1) -> list[dict]:
    """Seconds of scipy's syevr vs LAPACK's two-stage solver on one Gram matrix per dtype (library threads)."""
    import numpy as np
    from scipy.linalg import eigh

    import htsr.spectra.eigen as E

    rng = np.random.default_rng(0)
    out = []
    for dtype in (np.float32, np.float64):
        w = (rng.standard_t(4.0, size=(width, width)) / np.sqrt(width)).astype(dtype)
        g = E._cpu_gram(w)
        two = E._two_stage(np.dtype(dtype))
        used = two is not None and width >= E.TWO_STAGE_MIN_DIM[np.dtype(dtype).itemsize]
        row = {"width": width, "dtype": np.dtype(dtype).name, "in_use": "two-stage" if used else "syevr"}
        for name, fn in (("syevr", lambda a: eigh(a, lower=False, eigvals_only=True, driver="evr",
                                                   check_finite=False, overwrite_a=True)),
                         ("two_stage", two)):
            if fn is None:
                continue
            ts = []
            for _ in range(repeats):
                a = np.asfortranarray(g.copy())
                t = time.perf_counter()
                fn(a)
                ts.append(time.perf_counter() - t)
            row[name] = min(ts)
        out.append(row)
    return out


def floor_check(hidden: int = HIDDEN, inter: int = INTER, repeats: int = 1, dtype: str = "float32") -> list[dict]:
    """The work no full-spectrum analysis avoids, per LLaMA shape, with library default threads (how htsr solves
    large tensors): bf16 -> ``dtype``, the Gram product (BLAS syrk, as htsr) and the dense solve htsr uses for
    that dtype (float32: syevr; float64: the two-stage solver when available); seconds per matrix (best of
    ``repeats``) and the 7B sum (x 128 / 64 / 32)."""
    import numpy as np
    import torch
    from scipy.linalg import eigh

    import htsr.spectra.eigen as E

    g = torch.Generator().manual_seed(0)
    counts = shape_counts(N_BLOCKS_7B, hidden, inter)
    out = []
    for key in counts:
        shape = tuple(int(v) for v in key.split("x"))
        w16 = (torch.randn(*shape, generator=g) / shape[1] ** 0.5).to(torch.bfloat16)
        best = {"convert": float("inf"), "gram": float("inf"), "solve": float("inf")}
        for _ in range(repeats):
            t0 = time.perf_counter()
            w = w16.to(getattr(torch, dtype)).numpy()
            t1 = time.perf_counter()
            gm = E._cpu_gram(w)
            t2 = time.perf_counter()
            two = E._two_stage(gm.dtype) if gm.shape[0] >= E.TWO_STAGE_MIN_DIM.get(gm.dtype.itemsize, 1 << 62) else None
            if two is not None:
                two(gm)
            else:
                eigh(np.asfortranarray(gm), lower=False, eigvals_only=True, driver="evr", check_finite=False,
                     overwrite_a=True)
            t3 = time.perf_counter()
            for k, v in (("convert", t1 - t0), ("gram", t2 - t1), ("solve", t3 - t2)):
                best[k] = min(best[k], v)
        per = sum(best.values())
        out.append({"shape": list(shape), "dtype": dtype, "solver": "two-stage" if two is not None else "syevr",
                    "count_7b": counts[key], **{f"{k}_s": v for k, v in best.items()},
                    "per_matrix_s": per, "total_7b_s": per * counts[key]})
    return out


def extrapolate(per_matrix: dict[str, float], hidden: int = HIDDEN, inter: int = INTER) -> float:
    """Seconds for the 32-block model from seconds per matrix of each shape."""
    counts = shape_counts(N_BLOCKS_7B, hidden, inter)
    return sum(per_matrix[s] * n for s, n in counts.items() if s in per_matrix)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, default=2, help="LLaMA-7B blocks in the checkpoint (32 = the whole 7B)")
    ap.add_argument("--cache", default=None, help="checkpoint directory (default /tmp/htsr-llm7b-<N>b)")
    ap.add_argument("--ww-per-shape", type=int, default=1, help="matrices of each shape WeightWatcher analyses "
                                                                "(0: skip WeightWatcher)")
    ap.add_argument("--no-tail", action="store_true", help="skip the tail_only run")
    ap.add_argument("--build-only", action="store_true", help="build (or find) the cached checkpoint and stop")
    ap.add_argument("--solver-check", action="store_true",
                    help="only time syevr vs the two-stage solver on one --hidden-wide Gram per dtype (~30 s at 4096)")
    ap.add_argument("--floor", action="store_true",
                    help="only time the floor (bf16 -> float32, Gram, float32 solve) per LLaMA shape (~15 s at 7B)")
    ap.add_argument("--floor-dtype", choices=("float32", "float64"), default="float32",
                    help="precision of --floor (float32: the default preset's; float64: the weightwatcher preset's)")
    ap.add_argument("--hidden", type=int, default=HIDDEN, help="hidden size (4096 = LLaMA-7B; smaller for a smoke run)")
    ap.add_argument("--inter", type=int, default=INTER, help="MLP size (11008 = LLaMA-7B)")
    ap.add_argument("--json", help="write results to this JSON file")
    args = ap.parse_args(argv)
    if not 1 <= args.blocks <= N_BLOCKS_7B:
        ap.error(f"--blocks must be in 1..{N_BLOCKS_7B}")
    import _common as C

    info = C.announce_machine()
    if args.solver_check:
        res = solver_check(args.hidden)
        C.print_table(["width", "dtype", "syevr", "two-stage", "htsr uses"],
                      [[r["width"], r["dtype"], C.fmt_s(r["syevr"]), C.fmt_s(r.get("two_stage", float("nan"))),
                        r["in_use"]] for r in res], title="Gram eigensolvers, library default threads")
        C.write_json(args.json, {"machine": info, "solver_check": res, "load_end": C.loadavg()})
        return 0
    if args.floor:
        res = floor_check(args.hidden, args.inter, repeats=2, dtype=args.floor_dtype)
        C.print_table(["shape", "7B count", f"to {args.floor_dtype}", "Gram", "solve", "per matrix", "x count"],
                      [[f"{r['shape'][0]}x{r['shape'][1]}", r["count_7b"], C.fmt_s(r["convert_s"]),
                        C.fmt_s(r["gram_s"]), f"{C.fmt_s(r['solve_s'])} ({r['solver']})", C.fmt_s(r["per_matrix_s"]),
                        C.fmt_s(r["total_7b_s"])] for r in res], title="the floor per LLaMA shape")
        print(f"7B floor: {sum(r['total_7b_s'] for r in res):.1f} s (load at end {C.loadavg()})")
        C.write_json(args.json, {"machine": info, "floor": res, "load_end": C.loadavg()})
        return 0
    dims = "" if (args.hidden, args.inter) == (HIDDEN, INTER) else f"-{args.hidden}x{args.inter}"
    cache = Path(args.cache or f"/tmp/htsr-llm7b-{args.blocks}b{dims}")
    try:
        ckpt = build_checkpoint(cache, args.blocks, hidden=args.hidden, inter=args.inter)
    except DiskSpaceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.build_only:
        print(f"checkpoint: {ckpt}")
        return 0
    scale = N_BLOCKS_7B / args.blocks
    results: dict = {"machine": info, "blocks": args.blocks, "checkpoint": str(ckpt)}
    runs = {"htsr default": []}
    if not args.no_tail:
        runs["htsr tail_only"] = ["--set", "tail_only=true"]
    rows = []
    start = startup_s(cache)
    results["startup_s"] = start
    print(f"  htsr analyze start-up (tiny checkpoint): {start:.2f} s", flush=True)
    for label, extra in runs.items():
        r = htsr_run(ckpt, cache.parent / f"{cache.name}-{label.replace(' ', '_')}.csv", extra)
        # start-up once, the rest (loading + compute) scaled by the number of blocks
        r["extrapolated_7b_s"] = start + max(r["wall_s"] - start, 0.0) * scale
        r["extrapolated_7b_by_shape_s"] = extrapolate(r["per_matrix_s"], args.hidden, args.inter)
        results[label] = r
        rows.append([label, C.fmt_s(r["wall_s"]), f"{r['peak_rss_mib']:.0f} MiB",
                     C.fmt_s(r["extrapolated_7b_s"]), C.fmt_s(r["extrapolated_7b_by_shape_s"]),
                     json.dumps(r.get("spectrum", ""))])
    if args.ww_per_shape:
        ww = ww_per_shape(ckpt, args.ww_per_shape)
        results["ww_per_matrix_s"] = ww
        results["ww_extrapolated_7b_s"] = extrapolate(ww, args.hidden, args.inter)
        rows.append(["WeightWatcher 0.7.7 (per shape, extrapolated)", "", "", "",
                     C.fmt_s(results["ww_extrapolated_7b_s"]), ""])
    label7 = ("7B (32 blocks)" if args.blocks == N_BLOCKS_7B else
              f"7B: start-up + (wall - start-up) x {scale:g}")
    C.print_table(["run", f"wall, {args.blocks} block(s)", "peak RSS", label7,
                   "7B: per-shape compute (row times; no I/O, no start-up)", "rows by spectrum"], rows,
                  title=f"LLaMA-7B shapes ({args.hidden}/{args.inter}), bf16, {args.blocks} block(s)")
    results["load_end"] = C.loadavg()
    C.write_json(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
