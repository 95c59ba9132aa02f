"""AlphaPruning perplexity table: pruner x allocation x sparsity on a causal LM trained on the KJV.

Reads a model directory written by ``train_kjv_lm.py`` (byte tokens), draws seeded calibration windows
from the training books, prunes a fresh copy of the dense model per cell, and measures byte-level
perplexity on the held-out books (Luke, Acts). Prints a markdown table and writes every number as JSON.

    python benchmarks/bench_pruning_lm.py --model /tmp/kjv-llama --json /tmp/prune_grid.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from htsr.io import write_json  # noqa: E402
from htsr.pruning.evaluation import calibration_windows, perplexity  # noqa: E402
from htsr.pruning.prune import load_model, prune_model  # noqa: E402
from train_kjv_lm import corpora  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--sparsities", default="0.5,0.6,0.7,0.8")
    ap.add_argument("--pruners", default="magnitude,wanda,sparsegpt")
    ap.add_argument("--allocations", default="uniform,alpha,owl")
    ap.add_argument("--epsilon", type=float, default=0.3)
    ap.add_argument("--max-ratio", type=float, default=0.95, help="clip per-layer sparsity, mean restored")
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=None, help="default: the trained window length")
    ap.add_argument("--eval-chars", type=int, default=None, help="limit the held-out text (bytes)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    info = json.loads((Path(a.model) / "training.json").read_text())
    seqlen = a.seqlen or info["config"]["seqlen"]
    dense = load_model(a.model).to(a.device).eval()
    tr, te = corpora()
    if a.eval_chars:
        te = te[: a.eval_chars]
    calib = calibration_windows(tr, a.nsamples, seqlen, a.seed)
    t = time.perf_counter()
    base = perplexity(dense, te, seqlen, batch_size=32)
    print(f"dense held-out perplexity {base:.4f} ({time.perf_counter() - t:.1f} s)", flush=True)
    rows = []
    shown = False
    for pruner in a.pruners.split(","):
        for alloc in a.allocations.split(","):
            for s in (float(x) for x in a.sparsities.split(",")):
                model = copy.deepcopy(dense)
                t = time.perf_counter()
                rep = prune_model(model, s, pruner, alloc, a.epsilon, calib, max_ratio=a.max_ratio)
                prune_s = time.perf_counter() - t
                ppl = perplexity(model, te, seqlen, batch_size=32)
                tg = [r["target_sparsity"] for r in rep.layers]
                rows.append({"pruner": pruner, "allocation": alloc, "sparsity": s, "ppl": ppl,
                             "achieved": rep.achieved_sparsity, "min_layer": min(tg), "max_layer": max(tg),
                             "prune_s": prune_s})
                print(f"{pruner:9s} {alloc:8s} {s:.2f}: ppl {ppl:10.4f} achieved {rep.achieved_sparsity:.4f} "
                      f"layers [{min(tg):.3f}, {max(tg):.3f}] {prune_s:.1f} s", flush=True)
                if alloc == "alpha" and not shown:  # which blocks the metric calls least trained
                    shown = True
                    blocks: dict[int, list] = {}
                    for r in rep.layers:
                        blocks.setdefault(r["block"], []).append((r["metric"], r["target_sparsity"]))
                    print("block: mean alpha -> target sparsity at "
                          f"{s:.2f}: " + "; ".join(f"{k}: {sum(m for m, _ in v) / len(v):.3f} -> {v[0][1]:.3f}"
                                                    for k, v in sorted(blocks.items())), flush=True)
                del model
    sps = sorted({r["sparsity"] for r in rows})
    allocs = a.allocations.split(",")
    print(f"\nheld-out byte perplexity, dense {base:.3f}; {info['params']:,} parameters; calibration "
          f"{a.nsamples} x {seqlen} bytes; epsilon {a.epsilon}; max ratio {a.max_ratio}; device {a.device}\n")
    print("| pruner | allocation | " + " | ".join(f"{int(s * 100)}%" for s in sps) + " |")
    print("|---|---|" + "---:|" * len(sps))
    for pruner in a.pruners.split(","):
        for alloc in allocs:
            cells = [next(r["ppl"] for r in rows if r["pruner"] == pruner and r["allocation"] == alloc
                          and r["sparsity"] == s) for s in sps]
            print(f"| {pruner} | {alloc} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    if a.json:
        write_json(a.json, {"dense_ppl": base, "model": info, "nsamples": a.nsamples, "seqlen": seqlen,
                            "epsilon": a.epsilon, "max_ratio": a.max_ratio, "device": a.device,
                            "torch": torch.__version__, "rows": rows})


if __name__ == "__main__":
    main()
