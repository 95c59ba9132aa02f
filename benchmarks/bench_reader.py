"""Many small tensors in one safetensors file: reading them (the validated reader) and analysing them, against
the same tensors in memory. Before the one-parse, one-map reader every load re-opened the file and re-parsed its
header, so the cost grew with (number of tensors)^2.

    python benchmarks/bench_reader.py --tensors 4000 20000 [--skip-analysis]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch
from safetensors.torch import load_file, save_file

import htsr
from htsr.spectra.sources import iter_entries


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tensors", type=int, nargs="+", default=[4000, 20000])
    ap.add_argument("--size", type=int, default=16, help="each tensor is SIZE x SIZE float32")
    ap.add_argument("--skip-analysis", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        for n in args.tensors:
            g = torch.Generator().manual_seed(0)
            sd = {f"layer{i}.weight": torch.randn(args.size, args.size, generator=g) for i in range(n)}
            p = os.path.join(d, f"many_{n}.safetensors")
            save_file(sd, p)
            t0 = time.perf_counter()
            es = list(iter_entries(p))
            t1 = time.perf_counter()
            total = sum(float(e.load()[0, 0]) for e in es)
            t2 = time.perf_counter()
            load_file(p)
            t3 = time.perf_counter()
            assert total == sum(float(t[0, 0]) for t in sd.values())
            print(f"n={n}: entries {t1 - t0:.2f} s, load every tensor {t2 - t1:.2f} s "
                  f"(safetensors.torch.load_file of the whole file: {t3 - t2:.2f} s)", flush=True)
            if not args.skip_analysis:
                t0 = time.perf_counter()
                htsr.analyze(sd, workers=1)
                t1 = time.perf_counter()
                htsr.analyze(p, workers=1)
                t2 = time.perf_counter()
                print(f"n={n}: analyze in memory {t1 - t0:.2f} s, from the file {t2 - t1:.2f} s", flush=True)


if __name__ == "__main__":
    main()
