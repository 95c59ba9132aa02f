"""Cost of the MoE-LoRA forward pass (issue 16): all-MiniLM-L6-v2 with every Linear of its 6 blocks adapted.

Variants, all at LoRA rank r on the 36 targeted Linears, forward pass of one batch of tokens (no grad, eval mode,
and training mode forward+backward):

* ``base``: the frozen model alone;
* ``peft lora``: PEFT's LoRA at rank r (the reference plain LoRA);
* ``molora 1 expert``: our layer with one expert (plain LoRA, no router);
* ``molora 4 experts top-2``: our layer, 4 experts, top-2 routing (the target: <= 1.5x ``peft lora``);
* ``molora 8 experts top-2``: for scale.

Variants alternate inside each repeat; the median is reported.

    python benchmarks/bench_lora.py [--repeats 7] [--batch 16] [--length 64] [--rank 8] [--json OUT]

Run it under ``heavy`` with one thread: the numbers are ratios of timings taken in the same process.
"""

from __future__ import annotations

import argparse
import copy

import _common as C


def build(rank: int):
    import peft
    import torch

    from htsr.lora.config import BERT_TARGETS, MoLoraConfig
    from htsr.lora.model import inject
    from htsr.models.text import load_minilm_classifier

    base, tok = load_minilm_classifier(2, seed=0)
    base.eval()
    models = {"base": base}
    pcfg = peft.LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=list(BERT_TARGETS),
                           init_lora_weights=False)
    models["peft lora"] = peft.get_peft_model(copy.deepcopy(base), pcfg).eval()
    for e in (1, 4, 8):
        cfg = MoLoraConfig(target_modules=BERT_TARGETS, experts=(e,), r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                           init_lora_weights=False)
        name = "molora 1 expert" if e == 1 else f"molora {e} experts top-2"
        models[name] = inject(copy.deepcopy(base), cfg, seed=0).eval()
    torch.manual_seed(0)
    return models, tok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--length", type=int, default=64)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    info = C.announce_machine(threads=a.threads)
    models, _ = build(a.rank)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (a.batch, a.length), generator=g)
    mask = torch.ones_like(ids)
    labels = torch.zeros(a.batch, dtype=torch.long)

    def fwd(m):
        with torch.no_grad():
            return m(input_ids=ids, attention_mask=mask).logits

    def train_step(m):
        m.train()
        out = m(input_ids=ids, attention_mask=mask, labels=labels).loss
        out.backward()
        m.zero_grad(set_to_none=True)
        m.eval()

    for m in models.values():  # warm-up
        fwd(m)
    for p in models["base"].parameters():
        p.requires_grad_(False)
    models["base"].classifier.weight.requires_grad_(True)
    times = {k: {"forward": [], "train": []} for k in models}
    for _ in range(a.repeats):
        for name, m in models.items():
            times[name]["forward"].append(C.timed(lambda m=m: fwd(m))[0])
            times[name]["train"].append(C.timed(lambda m=m: train_step(m))[0])
    med = {k: {w: C.median(v) for w, v in d.items()} for k, d in times.items()}
    ref = med["peft lora"]
    rows = []
    for name, d in med.items():
        ok = (d["forward"] <= 1.5 * ref["forward"]) if name == "molora 4 experts top-2" else None
        rows.append([name, C.fmt_s(d["forward"]), C.fmt_x(d["forward"] / ref["forward"]), C.fmt_s(d["train"]),
                     C.fmt_x(d["train"] / ref["train"]), C.verdict(ok) if ok is not None else ""])
    C.print_table(["variant", "forward", "/ peft lora", "fwd+bwd", "/ peft lora", "<= 1.5x"], rows,
                  f"MiniLM, 36 Linears adapted, rank {a.rank}, batch {a.batch} x {a.length} tokens, "
                  f"{a.repeats} repeats (median), {a.threads} thread(s)")
    info["loadavg_end"] = C.loadavg()
    print(f"load avg at end: {info['loadavg_end']}")
    C.write_json(a.json, {"machine": info, "median_s": med, "args": vars(a)})


if __name__ == "__main__":
    main()
