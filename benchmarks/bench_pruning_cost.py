"""Pruning cost per layer: magnitude, Wanda and SparseGPT on one d x d linear layer, and SparseGPT's floor.

For each size, one calibration batch of ``rows`` input vectors (e.g. 128 windows x 128 tokens = 16,384)
is accumulated into the layer statistics exactly as :func:`htsr.pruning.prune_model` does
(``LayerStats.add_batch`` in chunks of one window), then the layer is pruned to 50%. The SparseGPT
floor is what no OBS pruner can avoid: accumulating the Hessian and one Cholesky factorisation of
it, timed in the same run; a second floor adds the OBS sweep's block products (each 128-column
block's error fed to the columns right of it: d^3 flops), timed on stand-in data of the same shapes.
Reported: median seconds over ``--repeats``, and SparseGPT / floor.

    python benchmarks/bench_pruning_cost.py --sizes 1024,4096 --rows 16384 --device cpu

``--llama 4096,11008`` instead times one layer of each LLaMA-7B shape (q/k/v/o: 4096 -> 4096, gate/up:
4096 -> 11008, down: 11008 -> 4096) and extrapolates pruning the 7B shape block by block as
:func:`htsr.pruning.prune_model` does it: per block, one forward pass of the calibration rows that fills the
layer statistics, the prune of each of its 7 layers, one forward pass with the pruned weights; x 32 blocks. Only
the linear layers' work is timed (attention over 128-token windows, norms and the MLP's element-wise product are
left out; on the reference's 128 x 2,048 calibration tokens every term but the prune grows 16x).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from htsr.io import write_json  # noqa: E402
from htsr.pruning.pruners import LayerStats, magnitude_prune, sparsegpt_prune, wanda_prune  # noqa: E402


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _stats(X: torch.Tensor, hessian: bool, window: int, device: str) -> LayerStats:
    """The layer statistics of calibration rows ``X``, accumulated one window at a time as ``prune_model`` does."""
    st = LayerStats(X.shape[1], hessian=hessian, device=device)
    for i in range(0, X.shape[0], window):
        st.add_batch(X[i:i + window].unsqueeze(0))
    return st


def _time(fn, device: str, repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one untimed call (first-call costs: thread pools, lazy
    library loads)."""
    fn()
    ts = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1024,4096")
    ap.add_argument("--rows", type=int, default=16384, help="calibration input vectors (nsamples x seqlen)")
    ap.add_argument("--window", type=int, default=128, help="vectors per add_batch call (one window)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None)
    ap.add_argument("--llama", default=None, metavar="HIDDEN,INTER",
                    help="time the LLaMA block shapes (e.g. 4096,11008) and extrapolate a 32-block model")
    a = ap.parse_args()
    if a.llama:
        parts = a.llama.split(",")
        if len(parts) != 2 or not all(v.strip().isdigit() and int(v) > 0 for v in parts):
            ap.error(f"--llama takes HIDDEN,INTER (two positive integers, e.g. 4096,11008), got {a.llama!r}")
        return llama(a)
    g = torch.Generator().manual_seed(0)
    results = []
    for d in (int(s) for s in a.sizes.split(",")):
        W0 = (torch.randn(d, d, generator=g) / d ** 0.5).to(a.device)
        X = torch.randn(a.rows, d, generator=g).to(a.device)

        def stats(hessian: bool, X=X) -> LayerStats:
            return _stats(X, hessian, a.window, a.device)

        st_w = stats(False)
        st_h = stats(True)
        t_acc_norm = _time(lambda: stats(False), a.device, a.repeats)
        t_acc_h = _time(lambda: stats(True), a.device, a.repeats)

        def chol(H=st_h.H, d=d) -> None:
            Hd = H + 0.01 * torch.mean(torch.diag(H)) * torch.eye(d, device=H.device)
            torch.linalg.cholesky(Hd)

        t_chol = _time(chol, a.device, a.repeats)

        def sweep(d=d, W0=W0) -> None:
            # the OBS sweep's unavoidable part: each 128-column block's error fed to the columns to its right
            # (one (rows x 128) @ (128 x rest) product per block; d^3 flops in all), on stand-in data
            E = torch.randn(128, d, device=W0.device)
            Hs = torch.randn(128, d, device=W0.device)
            Wt = W0.T.contiguous()
            for i1 in range(0, d, 128):
                Wt[i1 + 128:] -= Hs[:, i1 + 128:].T.matmul(E)

        t_sweep = _time(sweep, a.device, a.repeats)
        t_mag = _time(lambda W0=W0: magnitude_prune(W0.clone(), 0.5), a.device, a.repeats)
        t_wanda = _time(lambda W0=W0, st=st_w: wanda_prune(W0.clone(), 0.5, st.col_sq_norm), a.device, a.repeats)
        t_sgpt = _time(lambda W0=W0, st=st_h: sparsegpt_prune(W0.clone(), 0.5, st.H), a.device, a.repeats)
        row = {"d": d, "rows": a.rows, "magnitude_s": t_mag, "wanda_stats_s": t_acc_norm, "wanda_prune_s": t_wanda,
               "hessian_s": t_acc_h, "cholesky_s": t_chol, "sparsegpt_prune_s": t_sgpt,
               "sparsegpt_total_s": t_acc_h + t_sgpt, "floor_s": t_acc_h + t_chol,
               "ratio_total_to_floor": (t_acc_h + t_sgpt) / (t_acc_h + t_chol),
               "sweep_gemm_s": t_sweep, "floor_with_sweep_s": t_acc_h + t_chol + t_sweep,
               "ratio_total_to_floor_with_sweep": (t_acc_h + t_sgpt) / (t_acc_h + t_chol + t_sweep)}
        results.append(row)
        print(f"d={d}: magnitude {t_mag:.4f} s | wanda stats {t_acc_norm:.4f} + prune {t_wanda:.4f} s | "
              f"sparsegpt hessian {t_acc_h:.4f} + prune {t_sgpt:.4f} s | floor (hessian + cholesky "
              f"{t_chol:.4f}) {t_acc_h + t_chol:.4f} s | sparsegpt/floor {row['ratio_total_to_floor']:.2f}x | "
              f"+ sweep GEMMs {t_sweep:.4f} s: {row['ratio_total_to_floor_with_sweep']:.2f}x",
              flush=True)
    print(f"\n{a.rows} calibration vectors, 50% unstructured, device {a.device}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}\n")
    print("| d | magnitude s | Wanda s (stats + prune) | SparseGPT s (Hessian + OBS) | floor s (Hessian + Cholesky) "
          "| SparseGPT / floor | floor + sweep GEMMs s | SparseGPT / that |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['d']} | {r['magnitude_s']:.4f} | {r['wanda_stats_s'] + r['wanda_prune_s']:.4f} | "
              f"{r['sparsegpt_total_s']:.4f} | {r['floor_s']:.4f} | {r['ratio_total_to_floor']:.2f}x | "
              f"{r['floor_with_sweep_s']:.4f} | {r['ratio_total_to_floor_with_sweep']:.2f}x |")
    if a.json:
        write_json(a.json, {"device": a.device, "torch": torch.__version__, "results": results})


def llama(a) -> None:
    """Per-shape pruning costs of a LLaMA block and the 32-block extrapolation (see the module docstring)."""
    hidden, inter = (int(v) for v in a.llama.split(","))
    shapes = {(hidden, hidden): 4, (inter, hidden): 2, (hidden, inter): 1}  # (out, in): layers per block
    g = torch.Generator().manual_seed(0)
    rows = []
    for (dout, din), per_block in shapes.items():
        W0 = (torch.randn(dout, din, generator=g) / din ** 0.5).to(a.device)
        X = torch.randn(a.rows, din, generator=g).to(a.device)

        def stats(hessian: bool, X=X) -> LayerStats:
            return _stats(X, hessian, a.window, a.device)

        def forward(X=X, W0=W0) -> None:
            for i in range(0, a.rows, a.window):
                X[i:i + a.window] @ W0.T

        st_w, st_h = stats(False), stats(True)
        r = {"out": dout, "in": din, "per_block": per_block,
             "forward_s": _time(forward, a.device, a.repeats),
             "magnitude_s": _time(lambda W0=W0: magnitude_prune(W0.clone(), 0.5), a.device, a.repeats),
             "wanda_stats_s": _time(lambda: stats(False), a.device, a.repeats),
             "wanda_prune_s": _time(lambda W0=W0, st=st_w: wanda_prune(W0.clone(), 0.5, st.col_sq_norm), a.device,
                                    a.repeats),
             "hessian_s": _time(lambda: stats(True), a.device, a.repeats),
             "sparsegpt_prune_s": _time(lambda W0=W0, st=st_h: sparsegpt_prune(W0.clone(), 0.5, st.H), a.device,
                                        a.repeats)}
        del X, st_w, st_h
        rows.append(r)
        print(f"{dout}x{din}: " + ", ".join(f"{k} {v:.3f}" for k, v in r.items() if k.endswith("_s")), flush=True)
    blocks = 32
    per = {"magnitude": lambda r: r["magnitude_s"],
           "wanda": lambda r: 2 * r["forward_s"] + r["wanda_stats_s"] + r["wanda_prune_s"],
           "sparsegpt": lambda r: 2 * r["forward_s"] + r["hessian_s"] + r["sparsegpt_prune_s"]}
    total = {k: blocks * sum(f(r) * r["per_block"] for r in rows) for k, f in per.items()}
    print(f"\n{a.rows} calibration vectors, 50% unstructured, device {a.device}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}; 7B = {blocks} blocks, extrapolated per shape\n")
    print("| shape (out x in) | per block | forward s | magnitude s | Wanda stats + prune s | SparseGPT Hessian + "
          "prune s |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['out']}x{r['in']} | {r['per_block']} | {r['forward_s']:.3f} | {r['magnitude_s']:.3f} | "
              f"{r['wanda_stats_s']:.3f} + {r['wanda_prune_s']:.3f} | {r['hessian_s']:.3f} + "
              f"{r['sparsegpt_prune_s']:.3f} |")
    print("\n7B block by block (2 forward passes per block for Wanda/SparseGPT; magnitude needs none): " +
          ", ".join(f"{k} {v:.0f} s ({v / 60:.1f} min)" for k, v in total.items()))
    if a.json:
        write_json(a.json, {"device": a.device, "torch": torch.__version__, "rows": a.rows, "llama": rows,
                            "total_7b_s": total})


if __name__ == "__main__":
    main()
