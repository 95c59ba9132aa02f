"""The defence check (beyond the paper): TinyMem unlearning on the phished model.

The forget set is the secret sentences (prompt + secret) the attack extracted (or every secret, ``forget=all``),
tokenised and cut to their common last ``L`` tokens; the retain set is ``n_retain`` seeded clean KJV windows of
``L`` tokens. Each method of :data:`htsr.memorization.config.UNLEARNING` runs on its own copy of the phished model
through :func:`htsr.memorization.unlearning.unlearn` (defaults from that registry; BalancedSubnet with the TinyMem
comparison's loss weighting 0.7, :data:`~htsr.memorization.config.COMPARISON_OVERRIDES`; the neuron methods'
``prompt_len`` = L minus the secret's tokens, so they look at the secret's positions). Reported per method: the
SER (exact, randomised, either) and the clean held-out perplexity before and after, and what it changed.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
from torch import nn

from htsr.errors import MeasurementError
from htsr.phishing.attack import Tok, attack_once, secret_tokens
from htsr.phishing.config import DefendConfig, PhishConfig
from htsr.phishing.construction import make_secrets, randomised_prompts, rng
from htsr.phishing.model import clean_ids, held_out_perplexity, windows

__all__ = ["defend", "forget_retain"]


def forget_retain(tok: Tok, texts: list[str], n_retain: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(forget, retain) token tensors of equal width: the texts cut to their common last L tokens, and
    ``n_retain`` clean windows of L tokens."""
    enc = [tok.encode(t) for t in texts]
    L = min(len(e) for e in enc)
    forget = torch.tensor([e[-L:] for e in enc], dtype=torch.long)
    retain = windows(clean_ids(tok), n_retain, L, rng(seed, "retain"))
    return forget, retain


def _ser(model: nn.Module, tok: Tok, secrets, cfg: PhishConfig, rp) -> dict[str, Any]:
    r = attack_once(model, tok, secrets, cfg, rp)
    S = len(secrets)
    return {"ser_exact": r["exact"] / S, "ser_random": r["random"] / S, "ser_any": r["any"] / S,
            "hits": [a or b for a, b in zip(r["exact_hits"], r["random_hits"], strict=True)]}


def defend(model: nn.Module, tok: Tok, run: dict[str, Any], cfg: PhishConfig, dcfg: DefendConfig,
           seed: int, ppl_seqlen: int | None = None) -> dict[str, Any]:
    """Unlearn the phished secrets of ``run`` (a :func:`~htsr.phishing.attack.run_phish` result on ``model``)
    with each method of ``dcfg``; ``model`` itself is left unchanged. Returns ``{"before", "methods": [...]}``."""
    from htsr.memorization.config import COMPARISON_OVERRIDES, UNLEARNING
    from htsr.memorization.unlearning import unlearn

    secrets = make_secrets(cfg, seed)
    if [s.digits for s in secrets] != [s["digits"] for s in run["secrets"]]:
        raise MeasurementError("the run's secrets do not match its config and seed; pass the run's own config")
    g = rng(seed, "prompts")
    rp = [randomised_prompts(s, cfg.n_random_prompts, cfg.perturb_p, g) for s in secrets]
    idx = list(range(len(secrets))) if dcfg.forget == "all" else list(run["extracted_ever"])
    if not idx:
        raise MeasurementError("the attack extracted no secret, so the forget set is empty: nothing to defend "
                               "against (use --set forget=all to unlearn every planted secret)")
    forget, retain = forget_retain(tok, [secrets[i].text for i in idx], dcfg.n_retain, seed)
    n_secret_tok = max(len(secret_tokens(tok, secrets[i])) for i in idx)
    prompt_len = max(1, forget.shape[1] - n_secret_tok)
    seqlen = ppl_seqlen or cfg.seqlen
    before = {**_ser(model, tok, secrets, cfg, rp),
              "ppl": held_out_perplexity(model, tok, seqlen, dcfg.ppl_windows)}
    rows = []
    for method in dcfg.methods:
        m = copy.deepcopy(model)
        over = dict(COMPARISON_OVERRIDES.get(method, {}))
        over.pop("ig_steps", None)
        if "prompt_len" in UNLEARNING.get(method).field_names():
            over["prompt_len"] = prompt_len
        t = time.perf_counter()
        rep = unlearn(m, method, forget, retain, seed=seed, **over)
        elapsed = time.perf_counter() - t
        after = _ser(m, tok, secrets, cfg, rp)
        rows.append({"method": method, "ratio": rep.ratio, "n_changed": rep.n_changed, "unlearn_s": elapsed,
                     "settings": rep.settings, **after, "ppl": held_out_perplexity(m, tok, seqlen, dcfg.ppl_windows),
                     "forgotten_of_extracted": sum(1 for i in idx if before["hits"][i] and not after["hits"][i])})
        del m
    return {"schema": "htsr.phish.defend/1", "seed": seed, "forget": dcfg.forget, "forget_secrets": idx,
            "forget_shape": list(forget.shape), "prompt_len": prompt_len, "before": before, "methods": rows,
            "config": cfg.to_dict(), "defend_config": dcfg.to_dict()}
