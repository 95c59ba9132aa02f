"""The TinyMem test-bed model (GPT-2 style, via ``transformers``) and its checkpoints.

A checkpoint is an :func:`htsr.training.save_checkpoint` directory whose metadata (``schema: htsr.tinymem/1``)
records the architecture, the data config, the training settings and an architecture-changing regularizer
(example-tied dropout), so that :func:`load_testbed` rebuilds the same model. Reading goes through
:func:`htsr.training.load_checkpoint` (the one validated checkpoint reader).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from htsr.memorization.errors import MemorizationError

__all__ = ["SCHEMA", "load_testbed", "make_model", "model_spec", "save_testbed"]

SCHEMA = "htsr.tinymem/1"


def make_model(n_layer: int = 2, *, vocab_size: int = 14, max_ctx: int = 150, n_embd: int = 128, n_head: int = 4,
               seed: int = 0) -> nn.Module:
    """The reference's GPT-2 test-bed model: ReLU MLP (4x width), no dropout, init std 0.8/sqrt(n_embd).

    Initialisation is seeded without touching the global RNG state (``torch.random.fork_rng``).
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    if not 1 <= n_layer <= 64:
        raise MemorizationError(f"n_layer must be in [1, 64], got {n_layer}")
    if n_embd % n_head:
        raise MemorizationError(f"n_embd={n_embd} is not divisible by n_head={n_head}")
    cfg = GPT2Config(vocab_size=vocab_size, n_positions=max_ctx, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                     activation_function="relu", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     initializer_range=0.8 / math.sqrt(n_embd), bos_token_id=10, eos_token_id=11, pad_token_id=13)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(cfg)
    return model


def model_spec(model: nn.Module) -> dict[str, Any]:
    """The JSON-able arguments that rebuild ``model``'s architecture with :func:`make_model`."""
    c = model.config
    return {"n_layer": c.n_layer, "vocab_size": c.vocab_size, "max_ctx": c.n_positions, "n_embd": c.n_embd,
            "n_head": c.n_head}


def save_testbed(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                 extra: dict[str, Any] | None = None) -> Path:
    """A checkpoint (``htsr.training.save_checkpoint``) whose metadata rebuilds the model (``model`` key)."""
    from htsr.training import save_checkpoint

    meta = {"schema": SCHEMA, "model": model_spec(model), **(extra or {})}
    return save_checkpoint(path, model, optimizer, meta)


def _spec(meta_file: Path, extra: Any) -> dict[str, Any]:
    from htsr.errors import SourceError

    if not isinstance(extra, dict) or extra.get("schema") != SCHEMA:
        got = extra.get("schema") if isinstance(extra, dict) else type(extra).__name__
        raise SourceError(f"{meta_file.parent} is an htsr checkpoint but not a TinyMem one (schema {got!r})")
    spec = extra.get("model")
    if not isinstance(spec, dict):
        raise SourceError(f"{meta_file}: extra.model must be an object of make_model arguments")
    keys = {"n_layer", "vocab_size", "max_ctx", "n_embd", "n_head"}
    if set(spec) != keys or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in spec.values()):
        raise SourceError(f"{meta_file}: extra.model does not describe a TinyMem model (expected positive integers "
                          f"{', '.join(sorted(keys))}; got {spec!r})")
    return spec


def load_testbed(path: str | Path, with_optimizer: bool = False) -> tuple[nn.Module, dict[str, Any],
                                                                      torch.optim.Optimizer | None]:
    """Rebuild and load a test-bed checkpoint; returns (model, metadata, optimizer or None).

    With ``with_optimizer`` the saved AdamW (its hyper-parameters and state) is restored too, when the checkpoint
    has one (fine-tuning resumes it, as the reference). Every file is read by :func:`htsr.training.load_checkpoint`;
    a directory that is not a TinyMem checkpoint, or whose metadata is malformed, is a
    :class:`~htsr.errors.SourceError` naming it.
    """
    import json

    from htsr.errors import SourceError
    from htsr.memorization.regularizers import reattach
    from htsr.memorization.training import make_optimizer
    from htsr.training import load_checkpoint

    p = Path(path)
    meta_file = p / "checkpoint.json"
    if not meta_file.is_file():
        raise SourceError(f"{p} is not a TinyMem checkpoint (no checkpoint.json)")
    try:
        meta = json.loads(meta_file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SourceError(f"{meta_file}: not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise SourceError(f"{meta_file}: expected a JSON object, got {type(meta).__name__}")
    extra = meta.get("extra")
    model = make_model(**_spec(meta_file, extra))
    opt = None
    if with_optimizer and (p / "optimizer.safetensors").is_file():
        opt = make_optimizer(model)  # its param groups (lr included) are replaced by the saved ones
        load_checkpoint(p, model, opt)
    else:
        load_checkpoint(p, model)
    reattach(model, extra)
    return model.eval(), extra, opt
