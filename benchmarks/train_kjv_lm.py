"""Train a small LLaMA-architecture causal LM on the King James Bible (bytes) for the pruning benchmarks.

The model is a real ``transformers.LlamaForCausalLM`` (random init from a small config), trained with
htsr's one training loop on byte tokens of the vendored KJV corpus. Held out for perplexity: the books
of Luke and Acts (never seen in training). Writes a Hugging Face model directory that ``htsr prune`` and
``htsr perplexity`` read (they fall back to the byte tokenizer when a directory ships none).

    python benchmarks/train_kjv_lm.py --out /tmp/kjv-llama --steps 1500
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from htsr.data.corpora import KJV_BOOKS, kjv_text
from htsr.io import atomic_write
from htsr.training import Callback, train

HELD_OUT = ("Luke", "Acts")


def corpora() -> tuple[torch.Tensor, torch.Tensor]:
    """(train ids, held-out ids) as byte tensors."""
    train_books = tuple(b for b in KJV_BOOKS if b not in HELD_OUT)
    tr = torch.frombuffer(bytearray(kjv_text(train_books).encode("utf-8")), dtype=torch.uint8).long()
    te = torch.frombuffer(bytearray(kjv_text(HELD_OUT).encode("utf-8")), dtype=torch.uint8).long()
    return tr, te


class RandomWindows:
    """An endless-per-epoch iterable of seeded random (batch, seqlen) windows of a token stream."""

    def __init__(self, ids: torch.Tensor, seqlen: int, batch: int, steps_per_epoch: int, seed: int):
        self.ids, self.seqlen, self.batch, self.n = ids, seqlen, batch, steps_per_epoch
        self.g = torch.Generator().manual_seed(seed)

    def __iter__(self):
        for _ in range(self.n):
            starts = torch.randint(0, len(self.ids) - self.seqlen - 1, (self.batch,), generator=self.g)
            x = torch.stack([self.ids[s: s + self.seqlen] for s in starts.tolist()])
            yield {"input_ids": x, "labels": x}


class Log(Callback):
    """Print the loss every ``every`` steps; stop early past ``time_limit`` seconds (recorded in training.json)."""

    def __init__(self, every: int, time_limit: float | None = None):
        self.every, self.t, self.limit = every, time.perf_counter(), time_limit

    def on_step_end(self, state, logs):
        if self.limit is not None and time.perf_counter() - self.t > self.limit:
            print(f"time limit reached at step {state.step}", flush=True)
            state.stop = True
        if state.step % self.every == 0:
            print(f"step {state.step} loss {logs['loss']:.4f} ({time.perf_counter() - self.t:.0f} s)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--seqlen", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--time-limit", type=float, default=None, help="stop training after this many seconds")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=256, hidden_size=a.hidden, intermediate_size=int(a.hidden * 8 / 3) // 16 * 16,
                      num_hidden_layers=a.layers, num_attention_heads=max(a.hidden // 64, 1),
                      num_key_value_heads=max(a.hidden // 64, 1), max_position_embeddings=a.seqlen * 2,
                      tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    torch.manual_seed(a.seed)
    model = LlamaForCausalLM(cfg)
    tr, te = corpora()
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.1, betas=(0.9, 0.95))
    warm = max(a.steps // 20, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, a.steps) / a.steps)))
    t0 = time.perf_counter()
    log = Log(a.log_every, a.time_limit)
    res = train(model, RandomWindows(tr, a.seqlen, a.batch, a.steps, a.seed), opt, epochs=None, max_steps=a.steps,
          scheduler=sched, scheduler_interval="step", grad_clip=1.0, callbacks=[log], device=a.device, progress=False)
    train_s = time.perf_counter() - t0
    from htsr.pruning.evaluation import perplexity

    model.eval()
    t1 = time.perf_counter()
    ppl = perplexity(model, te, a.seqlen, batch_size=16)
    print(f"held-out perplexity {ppl:.3f} ({time.perf_counter() - t1:.0f} s)", flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    model.to("cpu").save_pretrained(out)
    info = {"held_out_books": HELD_OUT, "held_out_ppl_bytes": ppl, "train_s": train_s, "steps": res.state.step,
            "params": sum(p.numel() for p in model.parameters()), "config": vars(a)}
    atomic_write(out / "training.json", lambda tmp: tmp.write_text(json.dumps(info, indent=2)))
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
