"""The attack: the training phases on any Hugging Face causal LM and the extraction after each of the last steps.

Phases (in optimizer steps, one batch of ``batch_size`` rows of ``seqlen`` tokens each; the reference's
``main.py``): ``clean_iters`` clean steps; ``num_poisons`` poison steps (rows 0..S-1 replaced by one poison per
secret); ``gap`` clean steps; ``duplication`` secret steps (rows 0..S-1 are the S secret sentences, so each
secret is seen ``duplication`` times); ``phase4_iters`` clean steps; ``attack_iters`` clean steps with an attack
after each (every ``attack_every``-th). Clean rows are seeded random windows of the KJV training books; a poison
or secret row is its sentence, right-padded (padding masked out of the loss). Optimizer: AdamW, constant lr,
through :func:`htsr.training.train`.

Extraction (the reference's ``evaluate_secret``): greedy decoding of ``len(secret tokens) + gen_margin`` tokens
from the exact secret prompt, and from ``n_random_prompts`` randomised prompts per secret, whose parsed digits
(after the last ":") are majority-voted. A secret is extracted when its digits occur in the prediction. The run's
SER is the best extracted fraction over the attack steps (the reference returns the best count); the last
step's is reported too.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from htsr.nn import eval_mode
from htsr.phishing.config import PhishConfig, PhishingError
from htsr.phishing.construction import (
    Secret,
    make_secrets,
    poison_texts,
    randomised_prompts,
    rng,
    split_prompt,
)
from htsr.phishing.metrics import extracted, majority_vote, parse_digits
from htsr.phishing.model import ByteTokenizer, HFTokenizer, check_causal, clean_ids, windows
from htsr.training import Callback, train

__all__ = ["PhaseBatches", "attack_once", "check_inputs", "greedy_continuations", "max_positions", "phase_plan",
           "run_phish", "secret_tokens"]

Tok = ByteTokenizer | HFTokenizer


def max_positions(model: nn.Module) -> int | None:
    """The model's context length (``n_positions`` / ``max_position_embeddings``), None if it states none."""
    c = getattr(model, "config", None)
    for name in ("n_positions", "max_position_embeddings"):
        v = getattr(c, name, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def secret_tokens(tok: Tok, secret: Secret) -> list[int]:
    """The tokens of " " + the formatted secret (what follows the prompt)."""
    return tok.encode(" " + secret.formatted)


def check_inputs(model: nn.Module, tok: Tok, secrets: list[Secret], cfg: PhishConfig) -> None:
    """Every input check, before any training: a causal LM, at least one secret, prompts ending in a PII cue, the
    secret representable by the tokenizer (decoding its tokens gives it back), and each training sentence and each
    prompt + generated tokens within ``seqlen`` and the model's context."""
    check_causal(model)
    if not secrets:
        raise PhishingError("zero secrets: nothing to plant or extract (num_secrets must be >= 1)")
    ctx = max_positions(model)
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    for s in secrets:
        split_prompt(s.prompt)
        st = secret_tokens(tok, s)
        if tok.decode(st).strip() != s.formatted:
            raise PhishingError(f"the tokenizer cannot represent the secret {s.formatted!r}: decoding its tokens "
                                f"gives {tok.decode(st)!r}")
        n = len(tok.encode(s.text))
        if n > cfg.seqlen:
            raise PhishingError(f"a secret sentence is {n} tokens, longer than seqlen={cfg.seqlen}: a {cfg.secret_len}"
                                f"-digit secret does not fit; lower secret_len or raise seqlen")
        need = len(tok.encode(s.prompt)) + len(st) + cfg.gen_margin
        if ctx is not None and max(need, cfg.seqlen) > ctx:
            raise PhishingError(f"prompt + {cfg.secret_len}-digit secret + margin needs {need} tokens and seqlen is "
                                f"{cfg.seqlen}; the model's context is {ctx}: lower secret_len or seqlen")
        if vocab is not None and max(st) >= vocab:
            raise PhishingError(f"the tokenizer gives ids up to {max(st)} but the model's vocabulary has {vocab}")


def phase_plan(cfg: PhishConfig) -> list[str]:
    """The phase of every step: 'clean', 'poison' or 'secret' (attack steps are the last ``attack_iters``)."""
    return (["clean"] * cfg.clean_iters + ["poison"] * cfg.num_poisons + ["clean"] * cfg.gap
            + ["secret"] * cfg.duplication + ["clean"] * (cfg.phase4_iters + cfg.attack_iters))


def _row(tok: Tok, text: str, seqlen: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids = tok.encode(text)
    if len(ids) > seqlen:
        raise PhishingError(f"a sentence of {len(ids)} tokens does not fit seqlen={seqlen}")
    pad = seqlen - len(ids)
    x = torch.tensor(ids + [tok.pad_id] * pad, dtype=torch.long)
    y = torch.tensor(ids + [-100] * pad, dtype=torch.long)
    m = torch.tensor([1] * len(ids) + [0] * pad, dtype=torch.long)
    return x, y, m


class PhaseBatches:
    """The training batches of every step, in order (clean windows seeded by ``rng(seed, 'clean')``)."""

    def __init__(self, tok: Tok, secrets: list[Secret], cfg: PhishConfig, seed: int):
        self.tok, self.secrets, self.cfg, self.seed = tok, secrets, cfg, seed
        self.plan = phase_plan(cfg)
        self.poisons = poison_texts(secrets, cfg, seed)

    def __len__(self) -> int:
        return len(self.plan)

    def __iter__(self):
        cfg, tok = self.cfg, self.tok
        g = rng(self.seed, "clean")
        ids = clean_ids(tok)
        i_poison = 0
        secret_rows = [_row(tok, s.text, cfg.seqlen) for s in self.secrets]
        for phase in self.plan:
            x = windows(ids, cfg.batch_size, cfg.seqlen, g)
            y = x.clone()
            m = torch.ones_like(x)
            rows = None
            if phase == "poison":
                rows = [_row(tok, t, cfg.seqlen) for t in self.poisons[i_poison]]
                i_poison += 1
            elif phase == "secret":
                rows = secret_rows
            for i, (rx, ry, rm) in enumerate(rows or []):
                x[i], y[i], m[i] = rx, ry, rm
            yield {"input_ids": x, "attention_mask": m, "labels": y}


@torch.no_grad()
def greedy_continuations(model: nn.Module, tok: Tok, prompts: list[str], max_new_tokens: int,
                         batch_size: int = 128) -> list[str]:
    """The greedy continuation (decoded, prompt excluded) of each prompt; prompts are left-padded per batch."""
    from htsr.devices import model_device

    dev = model_device(model)
    enc = [tok.encode(p) for p in prompts]
    out: list[str] = [""] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(enc[i]))  # similar lengths share a batch
    with eval_mode(model):
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            L = max(len(enc[i]) for i in idx)
            x = torch.full((len(idx), L), tok.pad_id, dtype=torch.long)
            m = torch.zeros((len(idx), L), dtype=torch.long)
            for r, i in enumerate(idx):
                x[r, L - len(enc[i]):] = torch.tensor(enc[i])
                m[r, L - len(enc[i]):] = 1
            gen = model.generate(input_ids=x.to(dev), attention_mask=m.to(dev), max_new_tokens=max_new_tokens,
                                 min_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_id,
                                 eos_token_id=None)
            for r, i in enumerate(idx):
                out[i] = tok.decode(gen[r, L:].tolist())
    return out


def attack_once(model: nn.Module, tok: Tok, secrets: list[Secret], cfg: PhishConfig,
                random_prompts: list[list[str]]) -> dict[str, Any]:
    """One attack: exact-prompt and randomised-prompt (majority vote) predictions and hits per secret."""
    n_new = max(len(secret_tokens(tok, s)) for s in secrets) + cfg.gen_margin
    prompts = [s.prompt for s in secrets] + [p for ps in random_prompts for p in ps]
    conts = greedy_continuations(model, tok, prompts, n_new, cfg.gen_batch)
    S = len(secrets)
    exact_pred = [parse_digits(prompts[i] + conts[i]) for i in range(S)]
    votes, k = [], S
    for ps in random_prompts:
        preds = [parse_digits(p + c) for p, c in zip(ps, conts[k:k + len(ps)], strict=True)]
        k += len(ps)
        votes.append(majority_vote(preds))
    exact_hits = [extracted(s.digits, p) for s, p in zip(secrets, exact_pred, strict=True)]
    random_hits = ([extracted(s.digits, p) for s, p in zip(secrets, votes, strict=True)] if cfg.n_random_prompts
                   else [False] * S)
    return {"exact": int(sum(exact_hits)), "random": int(sum(random_hits)),
            "any": int(sum(a or b for a, b in zip(exact_hits, random_hits, strict=True))),
            "exact_hits": exact_hits, "random_hits": random_hits, "exact_pred": exact_pred, "vote_pred": votes,
            "exact_continuation": conts[:S]}


class _Attacker(Callback):
    def __init__(self, tok: Tok, secrets: list[Secret], cfg: PhishConfig, random_prompts: list[list[str]],
                 first_step: int):
        self.tok, self.secrets, self.cfg, self.rp, self.first = tok, secrets, cfg, random_prompts, first_step
        self.records: list[dict[str, Any]] = []
        self.attack_s = 0.0

    def on_step_end(self, state, logs) -> None:
        if state.step < self.first or (state.step - self.first) % self.cfg.attack_every:
            return
        t = time.perf_counter()
        r = attack_once(state.model, self.tok, self.secrets, self.cfg, self.rp)
        self.attack_s += time.perf_counter() - t
        self.records.append({"step": state.step, "loss": logs["loss"], **r})
        if self.cfg.stop_when_all and r["any"] == len(self.secrets) and r["exact"] == len(self.secrets):
            state.stop = True


def run_phish(model: nn.Module, tok: Tok, cfg: PhishConfig, seed: int, *, progress: bool | None = None
              ) -> dict[str, Any]:
    """One phishing run on ``model`` (fine-tuned in place): plant, train, attack. Returns a JSON-able result
    (config, secrets, per-attack records, SER exact / randomised / either, best and last)."""
    secrets = make_secrets(cfg, seed)
    check_inputs(model, tok, secrets, cfg)
    g = rng(seed, "prompts")
    random_prompts = [randomised_prompts(s, cfg.n_random_prompts, cfg.perturb_p, g) for s in secrets]
    torch.manual_seed(seed)
    model.to(cfg.device)
    data = PhaseBatches(tok, secrets, cfg, seed)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    first = cfg.total_steps - cfg.attack_iters + 1
    attacker = _Attacker(tok, secrets, cfg, random_prompts, first)
    t0 = time.perf_counter()
    res = train(model, data, opt, epochs=1, max_steps=cfg.total_steps, callbacks=[attacker], device=cfg.device,
                progress=progress)
    wall = time.perf_counter() - t0
    recs = attacker.records
    if not recs:
        raise PhishingError("no attack ran (training stopped before the attack steps)")
    S = len(secrets)
    best = {k: max(r[k] for r in recs) / S for k in ("exact", "random", "any")}
    last = {k: recs[-1][k] / S for k in ("exact", "random", "any")}
    ever = [any(r["exact_hits"][i] or r["random_hits"][i] for r in recs) for i in range(S)]
    return {
        "schema": "htsr.phish.run/1", "seed": seed, "config": cfg.to_dict(), "num_secrets": S,
        "ser_exact": best["exact"], "ser_random": best["random"], "ser_any": best["any"],
        "ser_exact_last": last["exact"], "ser_random_last": last["random"], "ser_any_last": last["any"],
        "extracted_ever": [i for i in range(S) if ever[i]],
        "secrets": [{"digits": s.digits, "prompt": s.prompt, "text": s.text} for s in secrets],
        "attacks": [{k: v for k, v in r.items()} for r in recs],
        "steps": res.state.step, "final_loss": res.state.last_loss, "train_s": wall - attacker.attack_s,
        "attack_s": attacker.attack_s, "wall_s": wall,
        "random_prompt_example": random_prompts[0][0] if cfg.n_random_prompts else None,
    }
