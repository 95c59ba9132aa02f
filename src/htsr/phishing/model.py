"""The model side: a tokenizer adapter, the causal-LM check, the KJV corpus, and the small GPT-2-style byte-level
LM pretrained here (cached on disk).

Any Hugging Face causal LM works (GPT-2, GPT-NeoX/Pythia, LLaMA-style): :func:`load_model` reads a local
directory (never the network) and uses its tokenizer, or bytes (:class:`ByteTokenizer`) when it ships none.

The clean corpus is the King James Bible vendored in :mod:`htsr.data` (31,102 verses), each verse written as
"Book chapter:verse text" so the pretraining text holds digits and colons. Why the KJV rather than the Debian
``fortunes`` package: it ships with htsr, so the experiment runs the same on any machine (a GPU box included)
without an apt install. Luke and Acts are held out: the clean perplexity is measured on them.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from htsr.phishing.config import PhishingError, PretrainConfig

__all__ = ["HELD_OUT", "ByteTokenizer", "HFTokenizer", "check_causal", "clean_ids", "held_out_perplexity",
           "load_model", "pretrain_small_lm", "small_gpt2", "tokenizer_for"]

HELD_OUT = ("Luke", "Acts")


@contextlib.contextmanager
def quiet_hf():
    """Hugging Face's progress bars and notices off inside the block (restored afterwards)."""
    from transformers.utils import logging as hf_logging

    bars, level = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


class ByteTokenizer:
    """Token id = UTF-8 byte (vocabulary 256); pad id 0 (NUL never occurs in the text)."""

    vocab_size = 256
    pad_id = 0

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


class HFTokenizer:
    """A Hugging Face tokenizer behind the same two calls (no special tokens added)."""

    def __init__(self, tok: Any) -> None:
        self.tok = tok
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.pad_id = int(pad) if pad is not None else 0
        self.vocab_size = len(tok)

    def encode(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=True)


def tokenizer_for(model_dir: str | Path | None, vocab_size: int) -> ByteTokenizer | HFTokenizer:
    """The directory's tokenizer (offline) if it ships one, else bytes (which need a vocabulary of >= 256)."""
    if model_dir is not None:
        d = Path(model_dir)
        if any((d / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "vocab.json")):
            from transformers import AutoTokenizer

            return HFTokenizer(AutoTokenizer.from_pretrained(str(d), local_files_only=True))
    if vocab_size < 256:
        raise PhishingError(f"the model has no tokenizer and a vocabulary of {vocab_size} ids; the byte fallback "
                            "needs >= 256")
    return ByteTokenizer()


@functools.lru_cache(maxsize=1)
def _causal_names() -> frozenset[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    names: set[str] = set()
    for v in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        names.update(v if isinstance(v, tuple | list) else [v])
    return frozenset(names)


def check_causal(model: nn.Module) -> None:
    """A :class:`PhishingError` unless ``model`` is a Hugging Face causal LM: a class of ``AutoModelForCausalLM``'s
    mapping (GPT2LMHeadModel, GPTNeoXForCausalLM, LlamaForCausalLM, ...) whose predictions at a position do not
    change when a later token does (a BERT checkpoint loaded with an LM head fails this)."""
    from htsr.devices import model_device
    from htsr.nn import eval_mode

    name = type(model).__name__
    if name not in _causal_names() or not hasattr(model, "generate"):
        raise PhishingError(f"{name} is not a Hugging Face causal language model; the attack generates text "
                            "greedily, so it needs an AutoModelForCausalLM class (e.g. GPT2LMHeadModel, "
                            "GPTNeoXForCausalLM, LlamaForCausalLM)")
    vocab = int(getattr(model.config, "vocab_size", 256))
    x = torch.tensor([[11, 12, 13, 14, 15]]) % vocab
    y = x.clone()
    y[0, -1] = (x[0, -1] + 1) % vocab
    dev = model_device(model)
    with torch.no_grad(), eval_mode(model):
        a = model(input_ids=x.to(dev)).logits[0, :-1].float()
        b = model(input_ids=y.to(dev)).logits[0, :-1].float()
    if float((a - b).abs().max()) > 1e-4 * max(1.0, float(a.abs().max())):
        raise PhishingError(f"{name} is not a causal language model: its predictions depend on later tokens "
                            "(a bidirectional encoder such as BERT with an LM head); the attack needs a causal LM")


def load_model(path: str | Path, device: str = "cpu") -> tuple[nn.Module, ByteTokenizer | HFTokenizer]:
    """(model, tokenizer) from a local Hugging Face directory; a non-causal architecture is a PhishingError."""
    from transformers import AutoConfig, AutoModelForCausalLM

    d = Path(path)
    if not (d / "config.json").is_file():
        raise PhishingError(f"{d} is not a Hugging Face model directory (no config.json)")
    cfg = AutoConfig.from_pretrained(str(d), local_files_only=True)
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if cfg.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise PhishingError(f"{d}: model type {cfg.model_type!r} has no causal-LM head in transformers; the attack "
                            "needs a causal language model (GPT-2, GPT-NeoX/Pythia, LLaMA-style, ...)")
    from htsr.spectra.reader import check_weights_dir

    check_weights_dir(d)  # every shard validated (and kept inside the directory) before transformers reads it
    with quiet_hf():
        model = AutoModelForCausalLM.from_pretrained(str(d), local_files_only=True)
    check_causal(model)
    return model.to(device), tokenizer_for(d, int(cfg.vocab_size))


# ------------------------------------------------------------------ corpus
@functools.lru_cache(maxsize=2)
def _kjv_texts() -> tuple[str, str]:
    from htsr.data.corpora import kjv_verses

    df = kjv_verses()
    lines = df["book"] + " " + df["chapter"].astype(str) + ":" + df["verse"].astype(str) + " " + df["text"]
    held = df["book"].isin(HELD_OUT)
    return "\n".join(lines[~held]) + "\n", "\n".join(lines[held]) + "\n"


_IDS: dict[tuple[int, bool], torch.Tensor] = {}


def clean_ids(tok: ByteTokenizer | HFTokenizer, held_out: bool = False) -> torch.Tensor:
    """The KJV training books (or, ``held_out``, Luke and Acts) as one 1-D token tensor (cached per tokenizer)."""
    key = (id(tok) if not isinstance(tok, ByteTokenizer) else 0, held_out)
    if key not in _IDS:
        text = _kjv_texts()[1 if held_out else 0]
        if isinstance(tok, ByteTokenizer):
            _IDS[key] = torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).long()
        else:
            _IDS[key] = torch.tensor(tok.encode(text), dtype=torch.long)
    return _IDS[key]


def windows(ids: torch.Tensor, n: int, seqlen: int, g: np.random.Generator) -> torch.Tensor:
    """``n`` random windows of ``seqlen`` tokens (seeded by ``g``)."""
    if ids.numel() <= seqlen:
        raise PhishingError(f"the corpus has {ids.numel()} tokens, fewer than one window of {seqlen}")
    starts = g.integers(0, ids.numel() - seqlen, size=n)
    return torch.stack([ids[s:s + seqlen] for s in starts.tolist()])


def held_out_perplexity(model: nn.Module, tok: ByteTokenizer | HFTokenizer, seqlen: int, n_windows: int = 0) -> float:
    """Perplexity (per token) on the first ``n_windows`` non-overlapping windows of Luke and Acts (0: all)."""
    from htsr.pruning.evaluation import perplexity

    ids = clean_ids(tok, held_out=True)
    if n_windows:
        ids = ids[: n_windows * seqlen]
    return float(perplexity(model, ids, seqlen, batch_size=16))


# ------------------------------------------------------------------ the small pretrained LM
def small_gpt2(cfg: PretrainConfig) -> nn.Module:
    """A randomly initialised byte-level ``GPT2LMHeadModel`` of ``cfg``'s size (seeded; no dropout)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    gcfg = GPT2Config(vocab_size=256, n_positions=cfg.n_positions, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
                      n_head=cfg.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0,
                      eos_token_id=0, pad_token_id=0, loss_type="ForCausalLM")
    torch.manual_seed(cfg.seed)
    with quiet_hf():
        return GPT2LMHeadModel(gcfg)


class _Windows:
    def __init__(self, ids: torch.Tensor, cfg: PretrainConfig):
        self.ids, self.cfg = ids, cfg
        self.g = np.random.default_rng([cfg.seed, 99])

    def __iter__(self):
        for _ in range(self.cfg.steps):
            x = windows(self.ids, self.cfg.batch_size, self.cfg.seqlen, self.g)
            yield {"input_ids": x, "labels": x}


def pretrain_small_lm(cfg: PretrainConfig, cache_dir: str | Path, device: str = "cpu",
                      progress: bool | None = None) -> tuple[nn.Module, ByteTokenizer, dict[str, Any]]:
    """Pretrain (or load from ``cache_dir``) the small byte-level GPT-2 on the KJV; returns (model, tokenizer, info)
    where info holds the parameter count, held-out perplexity (per byte) and training time.

    The recipe is ``benchmarks/train_kjv_lm.py``'s (AdamW, weight decay 0.1, betas (0.9, 0.95), linear warm-up
    then cosine, gradient clip 1) on a GPT-2 config, through :func:`htsr.training.train`."""
    from transformers import GPT2LMHeadModel

    from htsr.io import write_json
    from htsr.training import train

    d = Path(cache_dir)
    tok = ByteTokenizer()
    info_path = d / "pretrain.json"
    if info_path.is_file():
        try:
            info = json.loads(info_path.read_text())
        except (OSError, ValueError):
            info = {}
        if info.get("config") == cfg.to_dict():
            from htsr.spectra.reader import check_weights_dir

            check_weights_dir(d)
            with quiet_hf():
                model = GPT2LMHeadModel.from_pretrained(str(d), local_files_only=True)
            return model.to(device), tok, info
    model = small_gpt2(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.1, betas=(0.9, 0.95))
    warm = max(cfg.steps // 20, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps)))
    t0 = time.perf_counter()
    res = train(model, _Windows(clean_ids(tok), cfg), opt, epochs=None, max_steps=cfg.steps, scheduler=sched,
                scheduler_interval="step", grad_clip=1.0, device=device, progress=progress)
    train_s = time.perf_counter() - t0
    ppl = held_out_perplexity(model, tok, cfg.seqlen, cfg.ppl_windows)
    info = {"config": cfg.to_dict(), "params": sum(p.numel() for p in model.parameters()),
            "held_out": list(HELD_OUT), "held_out_ppl_per_byte": ppl, "final_train_loss": res.state.last_loss,
            "train_s": train_s, "steps": res.state.step, "corpus": "KJV (htsr.data), 'Book c:v text' per verse"}
    tmp = d.with_name(d.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with quiet_hf():
        model.to("cpu").save_pretrained(tmp)
    write_json(tmp / "pretrain.json", info)
    if d.exists():
        shutil.rmtree(d)
    os.replace(tmp, d)
    return model.to(device), tok, info
