"""AlphaPruning on the real all-MiniLM-L6-v2: cosine similarity of pruned to dense sentence embeddings.

Sentences: KJV verses of the Gospel of John (never used for calibration); calibration: seeded 128-token
windows of the rest of the New Testament. Embeddings as sentence-transformers computes them for this
model: mean pooling over the attention mask, then L2 normalisation. One cell per pruner x allocation x
sparsity, each on a fresh copy of the dense model.

    python benchmarks/bench_pruning_minilm.py --json /tmp/minilm_grid.json
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from htsr.data.corpora import KJV_BOOKS, kjv_text, kjv_verses
from htsr.examples import example_path
from htsr.io import write_json
from htsr.pruning import evaluation as E
from htsr.pruning.prune import load_model, prune_model


@torch.no_grad()
def embed(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    out = model(**batch).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1).to(out.dtype)
    return torch.nn.functional.normalize((out * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sparsities", default="0.5,0.6,0.7,0.8")
    ap.add_argument("--pruners", default="magnitude,wanda,sparsegpt")
    ap.add_argument("--allocations", default="uniform,alpha,owl")
    ap.add_argument("--epsilon", type=float, default=0.3)
    ap.add_argument("--max-ratio", type=float, default=0.95)
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=128)
    ap.add_argument("--sentences", type=int, default=512)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    d = example_path("minilm")
    tok = E.load_tokenizer(d)
    dense = load_model(d).eval()
    verses = kjv_verses()
    john = verses[verses.book == "John"]["text"].tolist()[: a.sentences]
    batch = tok(john, padding=True, truncation=True, max_length=128, return_tensors="pt")
    calib_books = tuple(b for b in KJV_BOOKS[KJV_BOOKS.index("Matthew"):] if b != "John")
    calib = E.calibration_windows(E.tokenize(tok, kjv_text(calib_books)), a.nsamples, a.seqlen, 0)
    ref = embed(dense, batch)
    rows = []
    for pruner in a.pruners.split(","):
        for alloc in a.allocations.split(","):
            for s in (float(x) for x in a.sparsities.split(",")):
                m = copy.deepcopy(dense)
                t = time.perf_counter()
                rep = prune_model(m, s, pruner, alloc, a.epsilon, calib, max_ratio=a.max_ratio)
                dt = time.perf_counter() - t
                cos = torch.nn.functional.cosine_similarity(ref, embed(m, batch), dim=-1)
                rows.append({"pruner": pruner, "allocation": alloc, "sparsity": s, "cosine_mean": float(cos.mean()),
                             "cosine_min": float(cos.min()), "achieved": rep.achieved_sparsity, "prune_s": dt})
                print(f"{pruner:9s} {alloc:8s} {s:.2f}: cosine {float(cos.mean()):.4f} (min {float(cos.min()):.4f}) "
                      f"achieved {rep.achieved_sparsity:.4f} {dt:.1f} s", flush=True)
    sps = sorted({r["sparsity"] for r in rows})
    print(f"\nall-MiniLM-L6-v2, mean cosine(pruned, dense) over {len(john)} verses of John; calibration "
          f"{a.nsamples} x {a.seqlen} tokens; epsilon {a.epsilon}; max ratio {a.max_ratio}\n")
    print("| pruner | allocation | " + " | ".join(f"{int(s * 100)}%" for s in sps) + " |")
    print("|---|---|" + "---:|" * len(sps))
    for pruner in a.pruners.split(","):
        for alloc in a.allocations.split(","):
            cells = [next(r["cosine_mean"] for r in rows if r["pruner"] == pruner and r["allocation"] == alloc
                          and r["sparsity"] == s) for s in sps]
            print(f"| {pruner} | {alloc} | " + " | ".join(f"{c:.4f}" for c in cells) + " |")
    if a.json:
        write_json(a.json, {"sentences": len(john), "nsamples": a.nsamples, "seqlen": a.seqlen,
                            "epsilon": a.epsilon, "max_ratio": a.max_ratio, "torch": torch.__version__,
                            "rows": rows})


if __name__ == "__main__":
    main()
