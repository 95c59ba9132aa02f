"""Parity of htsr's pruner and llmcompressor's modifiers under the same AlphaPruning allocation.

The same dense causal LM, the same calibration windows, the same pruner and the same per-layer
sparsities (htsr's allocation, handed to llmcompressor as a per-layer list by
``htsr.pruning.backends.llmcompressor``) go through ``prune_model`` (htsr) and ``oneshot`` with
``WandaPruningModifier`` / ``SparseGPTModifier`` (llmcompressor). Reported per pruner and sparsity:

* achieved sparsity per layer: how many layers are identical, the largest difference, and the extra
  zeros per layer in units of SparseGPT column blocks (llmcompressor keeps the reference's ``<=``
  threshold: one more weight per 128-column block);
* weights: how many layers are bitwise identical, the largest |difference|;
* perplexity on held-out text (target: within 1 %), and the time of each side (median of the repeats,
  sides alternated; both include computing the alphas and the allocation);
* for SparseGPT, a "count-matched" llmcompressor run whose per-layer sparsities are lowered so its
  ``<=`` threshold removes exactly htsr's count, isolating that one difference;
* uniform vs OWL vs alpha allocation with Wanda at the highest sparsity, through both backends.

Needs llmcompressor (``pip install 'htsr[llmcompressor]'``; it pins its own transformers, so use a
separate virtual environment). Without ``--model-dir``, a small LLaMA (byte vocabulary) is trained here
for ``--steps`` steps on the vendored King James Bible (htsr's training loop), so perplexity means
something; the last 10 % of the text is held out. Nothing is downloaded.

    python benchmarks/bench_llmcompressor_parity.py [--steps 300] [--sparsity 0.5 0.7] [--repeats 2] [--json out.json]
    python benchmarks/bench_llmcompressor_parity.py --model-dir /models/llama-2-7b --text c4.txt \\
        --eval-text wikitext2-test.txt --nsamples 128 --seqlen 2048 --device cuda     # the 7B recipe
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path

import _common as C

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def train_small_llama(args, ids_train):
    """A small byte-level LLaMA trained with htsr's one training loop (seeded)."""
    import torch
    import transformers

    from htsr.training import train

    g = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)  # model init: transformers draws from the global generator
    cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=args.hidden, intermediate_size=args.inter,
                                   num_hidden_layers=args.layers, num_attention_heads=args.heads,
                                   num_key_value_heads=args.heads, max_position_embeddings=args.seqlen)
    model = transformers.LlamaForCausalLM(cfg)
    n = ids_train.numel() - args.seqlen - 1
    starts = torch.randint(0, n, (args.steps * args.batch,), generator=g)
    windows = torch.stack([ids_train[s:s + args.seqlen] for s in starts.tolist()])
    batches = [{"input_ids": w, "labels": w} for w in windows.split(args.batch)]
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    res = train(model, batches, opt, epochs=1, device=args.device, grad_clip=1.0, progress=False)
    return model.eval(), res


def per_layer(ra, rb):
    """Per-layer comparison of two PruneReports (same layer order)."""
    same = 0
    max_d = 0.0
    extra_blocks = []
    for a, b in zip(ra.layers, rb.layers, strict=True):
        out_f, in_f = a["shape"]
        za = round(a["achieved_sparsity"] * out_f * in_f)
        zb = round(b["achieved_sparsity"] * out_f * in_f)
        same += za == zb
        max_d = max(max_d, abs(a["achieved_sparsity"] - b["achieved_sparsity"]))
        extra_blocks.append((zb - za) / math.ceil(in_f / 128))
    return same, max_d, extra_blocks


def weight_diff(ma, mb):
    from htsr.nn import find_layout, weight_2d

    same = 0
    mx = 0.0
    names = find_layout(ma).names
    for n in names:
        wa, wb = weight_2d(ma.get_submodule(n)), weight_2d(mb.get_submodule(n))
        same += bool((wa == wb).all())
        mx = max(mx, float((wa.float() - wb.float()).abs().max()))
    return same, len(names), mx


def count_matched(report):
    """Per-layer sparsities that make llmcompressor's ``<=`` threshold remove htsr's int(N*s) per 128-column block."""
    out = []
    for r in report.layers:
        rows, cols = r["shape"]
        if cols % 128:
            return None
        n = rows * 128
        out.append((int(n * r["target_sparsity"]) - 0.5) / n)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", default=None, help="an HF causal LM directory (default: train a small LLaMA)")
    ap.add_argument("--text", default=None, help="calibration text file (default: KJV, first 90 %%)")
    ap.add_argument("--eval-text", default=None, help="held-out text file (default: KJV, last 10 %%)")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--inter", type=int, default=512)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seqlen", type=int, default=128)
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--eval-windows", type=int, default=128)
    ap.add_argument("--sparsity", type=float, nargs="+", default=[0.5, 0.7])
    ap.add_argument("--epsilon", type=float, default=0.3)
    ap.add_argument("--pruners", nargs="+", default=["wanda", "sparsegpt"])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import torch
    import transformers

    from htsr.data.corpora import kjv_text
    from htsr.pruning import evaluation as E
    from htsr.pruning.backends.llmcompressor import prune_with_llmcompressor, require
    from htsr.pruning.prune import load_model, prune_model

    if args.threads:
        torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    llmc = require("llmcompressor")
    info = C.machine_info()
    info.update(llmcompressor=C._version("llmcompressor"), transformers=transformers.__version__,
                compressed_tensors=C._version("compressed-tensors"))
    print(C.machine_line(info))
    print(f"llmcompressor {info['llmcompressor']}, transformers {info['transformers']}, "
          f"compressed-tensors {info['compressed_tensors']}")

    tmp = tempfile.TemporaryDirectory(prefix="htsr-bench-llmc-")
    if args.model_dir is None:
        text = kjv_text()
        cut = int(len(text) * 0.9)
        calib_text = E.read_text(args.text) if args.text else text[:cut]
        eval_text = E.read_text(args.eval_text) if args.eval_text else text[cut:]
        tok = E.ByteTokenizer()
        ids_train = E.tokenize(tok, text[:cut])
        t_train, (model, res) = C.timed(lambda: train_small_llama(args, ids_train))
        print(f"trained a {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M-parameter LLaMA for {args.steps} "
              f"steps in {C.fmt_s(t_train)}; last train loss {float(res.history['train_loss'].iloc[-1]):.3f}")
        model_dir = Path(tmp.name) / "dense"
        model.to("cpu").save_pretrained(str(model_dir))  # loading from a directory, as the CLI and oneshot expect
    else:
        model_dir = Path(args.model_dir)
        if not (args.text and args.eval_text):
            ap.error("--model-dir needs --text (calibration) and --eval-text (held-out)")
        calib_text, eval_text = E.read_text(args.text), E.read_text(args.eval_text)
        tok = E.load_tokenizer(model_dir)
    dtype = None if args.dtype == "auto" else getattr(torch, args.dtype)
    dense = load_model(model_dir, dtype).to(args.device)
    calib = E.calibration_windows(E.tokenize(tok, calib_text), args.nsamples, args.seqlen, args.seed)
    eval_ids = E.tokenize(tok, eval_text)[: args.eval_windows * args.seqlen]
    ppl_dense = E.perplexity(dense, eval_ids, args.seqlen)
    print(f"dense perplexity {ppl_dense:.4f} on {eval_ids.numel() // args.seqlen} windows of {args.seqlen}")
    proc = None if isinstance(tok, E.ByteTokenizer) else tok

    def fresh():  # from disk: name_or_path set, nothing shared with `dense`
        return load_model(model_dir, dtype).to(args.device)

    def run_htsr(pruner, s, allocation="alpha", **kw):
        m = fresh()
        t, r = C.timed(lambda: prune_model(m, s, pruner, allocation, args.epsilon, calib, **kw))
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return t, m, r

    def run_llmc(pruner, s, allocation="alpha", **kw):
        m = fresh()
        t, r = C.timed(lambda: prune_with_llmcompressor(m, s, pruner, allocation, args.epsilon, calib,
                                                        processor=proc, **kw))
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return t, m, r

    run_llmc("wanda", args.sparsity[0])  # warm-up: llmcompressor's imports and first trace are not timed
    run_htsr("wanda", args.sparsity[0])
    results = {"machine": info, "args": vars(args), "dense_ppl": ppl_dense, "runs": []}
    rows = []
    for pruner in args.pruners:
        for s in args.sparsity:
            th, tl = [], []
            for rep in range(max(1, args.repeats)):
                order = (run_htsr, run_llmc) if rep % 2 == 0 else (run_llmc, run_htsr)
                for fn in order:
                    t, m, r = fn(pruner, s)
                    (th if fn is run_htsr else tl).append(t)
                    if fn is run_htsr:
                        mh, rh = m, r
                    else:
                        ml, rl = m, r
            same, max_d, extra = per_layer(rh, rl)
            wsame, nl, wmax = weight_diff(mh, ml)
            ph, pl = E.perplexity(mh, eval_ids, args.seqlen), E.perplexity(ml, eval_ids, args.seqlen)
            run = {"pruner": pruner, "sparsity": s, "layers": nl, "achieved_identical": same,
                   "achieved_max_diff": max_d, "extra_zeros_per_col_block": sorted(set(extra)),
                   "weights_identical": wsame, "weights_max_abs_diff": wmax, "ppl_htsr": ph, "ppl_llmc": pl,
                   "ppl_rel_diff": pl / ph - 1, "time_htsr_s": th, "time_llmc_s": tl,
                   "achieved_htsr": rh.achieved_sparsity, "achieved_llmc": rl.achieved_sparsity}
            rows.append([pruner, s, "llmcompressor", f"{same}/{nl}", f"{max_d:.2e}",
                         ",".join(f"{x:g}" for x in sorted(set(extra))), f"{wsame}/{nl}", f"{wmax:.2e}",
                         f"{ph:.4f}", f"{pl:.4f}", f"{100 * (pl / ph - 1):+.3f} %", C.fmt_s(C.median(th)),
                         C.fmt_s(C.median(tl)), C.fmt_x(C.median(tl) / C.median(th))])
            if pruner == "sparsegpt":
                matched = count_matched(rh)
                if matched is not None:  # same layers and order, per-layer list lowered to htsr's counts
                    mm = fresh()
                    t, rm = C.timed(lambda m=mm, r=rh, sp=matched: _llmc_with_list(llmc, m, r, sp, calib, proc))
                    same2, max_d2, extra2 = per_layer(rh, rm)
                    wsame2, _, wmax2 = weight_diff(mh, mm)
                    pm = E.perplexity(mm, eval_ids, args.seqlen)
                    run["count_matched"] = {"achieved_identical": same2, "achieved_max_diff": max_d2,
                                            "weights_identical": wsame2, "weights_max_abs_diff": wmax2,
                                            "ppl": pm, "ppl_rel_diff": pm / ph - 1}
                    rows.append([pruner, s, "llmcompressor, count-matched", f"{same2}/{nl}", f"{max_d2:.2e}",
                                 ",".join(f"{x:g}" for x in sorted(set(extra2))), f"{wsame2}/{nl}", f"{wmax2:.2e}",
                                 f"{ph:.4f}", f"{pm:.4f}", f"{100 * (pm / ph - 1):+.3f} %", "", C.fmt_s(t), ""])
            results["runs"].append(run)
            del mh, ml
    C.print_table(["pruner", "sparsity", "llmc side", "achieved identical", "max |Δ achieved|",
                   "extra zeros / col block", "weights identical", "max |Δw|", "ppl htsr", "ppl llmc", "Δ ppl",
                   "time htsr", "time llmc", "llmc / htsr"], rows,
                  title=f"htsr vs llmcompressor, alpha allocation (eps {args.epsilon}), dense ppl {ppl_dense:.4f}")

    s = max(args.sparsity)
    arows = []
    for allocation in ("uniform", "owl", "alpha"):
        _, mh, rh = run_htsr("wanda", s, allocation)
        _, ml, rl = run_llmc("wanda", s, allocation)
        ph, pl = E.perplexity(mh, eval_ids, args.seqlen), E.perplexity(ml, eval_ids, args.seqlen)
        lo, hi = min(r["target_sparsity"] for r in rh.layers), max(r["target_sparsity"] for r in rh.layers)
        arows.append([allocation, f"{lo:.3f}..{hi:.3f}", f"{rh.achieved_sparsity:.4f}", f"{ph:.4f}", f"{pl:.4f}"])
        results.setdefault("allocations", []).append({"allocation": allocation, "sparsity": s, "ppl_htsr": ph,
                                                      "ppl_llmc": pl, "layer_range": [lo, hi],
                                                      "achieved": rh.achieved_sparsity})
    C.print_table(["allocation", "layer sparsities", "achieved", "ppl (htsr)", "ppl (llmcompressor)"], arows,
                  title=f"Wanda at {s}: uniform vs OWL vs alpha (eps {args.epsilon})")
    info_end = C.loadavg()
    print(f"\nload avg at end {info_end}")
    results["loadavg_end"] = info_end
    C.write_json(args.json, results)
    tmp.cleanup()
    return 0


def _llmc_with_list(llmc, model, report, sparsities, calib, proc):
    """Run llmcompressor's SparseGPT with an explicit per-layer list (the count-matched diagnostic)."""
    import torch
    from llmcompressor.modifiers.pruning import SparseGPTModifier
    from torch.utils.data import DataLoader

    from htsr.nn import weight_2d
    from htsr.pruning.backends.llmcompressor import _config_on_disk, _quiet, _TokenizedCalibration, check_supported
    from htsr.pruning.prune import PruneReport

    _, block_class = check_supported(model, "sparsegpt")
    mod = SparseGPTModifier(sparsity=sparsities, targets=[r["name"] for r in report.layers], block_size=128,
                            dampening_frac=0.01)
    dev = next(model.parameters()).device
    data = DataLoader([{"input_ids": x, "attention_mask": torch.ones_like(x)} for x in calib.to(dev)], batch_size=1)
    with _quiet(False), _config_on_disk(model):
        llmc.oneshot(model=model, dataset=data, recipe=mod, processor=proc or _TokenizedCalibration(),
                     pipeline="sequential", sequential_targets=[block_class])
    rows = []
    for r in report.layers:
        w = weight_2d(model.get_submodule(r["name"]))
        rows.append({**r, "achieved_sparsity": float((w == 0).sum()) / w.numel()})
    return PruneReport(rows, report.target_sparsity, float("nan"), {})


if __name__ == "__main__":
    sys.exit(main())
