"""TinyMem models (GPT-2 style, via ``transformers``), checkpoints, and the MLP adapter used by unlearning.

The MLP adapter builds on the pruning package's block finder (:func:`htsr.nn.find_layout`, reused
unchanged) and names, in each block, the MLP's up-projection(s) and down-projection by the Hugging Face naming of
GPT-2 (``mlp.c_fc``/``mlp.c_proj``), GPT-NeoX/Pythia/Falcon (``mlp.dense_h_to_4h``/``mlp.dense_4h_to_h``),
LLaMA/Mistral/Qwen (``mlp.gate_proj`` + ``mlp.up_proj``/``mlp.down_proj``), OPT (``fc1``/``fc2``) and BERT-style
(``intermediate.dense``/``output.dense``). A neuron is one input unit of the down-projection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from htsr.memorization.errors import MemorizationError
from htsr.nn import LayoutError, find_layout
from htsr.nn import is_linear_like as _is_prunable

#: (up-projection suffixes, down-projection suffix) per naming family, tried in order.
MLP_NAMINGS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("mlp.c_fc",), "mlp.c_proj"),
    (("mlp.dense_h_to_4h",), "mlp.dense_4h_to_h"),
    (("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj"),
    (("mlp.fc_in",), "mlp.fc_out"),
    (("fc1",), "fc2"),
    (("intermediate.dense",), "output.dense"),
)


def out_in_weight(mod: nn.Module) -> torch.Tensor:
    """The (out, in) view of a Linear's or HF Conv1D's weight (edits through it stick)."""
    w = mod.weight
    return w if isinstance(mod, nn.Linear) else w.t()


@dataclass
class MLP:
    """One block's MLP: ``ups`` (name -> module; gate and up for gated MLPs) and ``down`` (name, module)."""

    block: int
    ups: dict[str, nn.Module]
    down_name: str
    down: nn.Module

    @property
    def n_neurons(self) -> int:
        return int(out_in_weight(self.down).shape[1])

    def param_names(self, model: nn.Module) -> list[str]:
        """Full parameter names of this MLP's up/down weights and biases."""
        names = [*self.ups, self.down_name]
        return [f"{n}.{p}" for n in names for p in ("weight", "bias")
                if getattr(model.get_submodule(n), p, None) is not None]


def find_mlps(model: nn.Module) -> list[MLP]:
    """Each transformer block's MLP, or a :class:`MemorizationError` naming what was expected."""
    try:
        layout = find_layout(model)
    except LayoutError as e:
        raise MemorizationError(f"no recognisable MLP layers: {e}") from None
    mlps = []
    for k, blk in enumerate(layout.blocks):
        prefix = f"{layout.blocks_path}.{k}"
        mods = dict(blk.named_modules())
        for ups, down in MLP_NAMINGS:
            if all(u in mods and _is_prunable(mods[u]) for u in ups) and down in mods and _is_prunable(mods[down]):
                mlp = MLP(k, {f"{prefix}.{u}": mods[u] for u in ups}, f"{prefix}.{down}", mods[down])
                d_ff = mlp.n_neurons
                if any(out_in_weight(m).shape[0] != d_ff for m in mlp.ups.values()):
                    continue
                mlps.append(mlp)
                break
        else:
            raise MemorizationError(
                f"no recognisable MLP layers in block {prefix} of {type(model).__name__}: expected one of "
                + ", ".join(f"{'+'.join(u)} / {d}" for u, d in MLP_NAMINGS))
    return mlps


def mlp_param_names(model: nn.Module, mlps: list[MLP] | None = None) -> list[str]:
    """Full names of every MLP weight and bias (the tensors weight-based unlearning may change)."""
    return [n for m in (mlps or find_mlps(model)) for n in m.param_names(model)]


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

    meta = {"schema": "htsr.tinymem/1", "model": model_spec(model), **(extra or {})}
    return save_checkpoint(path, model, optimizer, meta)


def load_testbed(path: str | Path, with_optimizer: bool = False) -> tuple[nn.Module, dict[str, Any],
                                                                      torch.optim.Optimizer | None]:
    """Rebuild and load a test-bed checkpoint; returns (model, metadata, optimizer or None).

    With ``with_optimizer`` the saved AdamW (its hyper-parameters and state) is restored too, when the checkpoint
    has one (fine-tuning resumes it, as the reference).
    """
    import json

    from htsr.errors import SourceError
    from htsr.training import load_checkpoint

    p = Path(path)
    meta_file = p / "checkpoint.json"
    if not meta_file.is_file():
        raise SourceError(f"{p} is not a TinyMem checkpoint (no checkpoint.json)")
    extra = json.loads(meta_file.read_text()).get("extra", {})
    if extra.get("schema") != "htsr.tinymem/1":
        raise SourceError(f"{p} is an htsr checkpoint but not a TinyMem one (schema {extra.get('schema')!r})")
    model = make_model(**extra["model"])
    opt = None
    if with_optimizer and (p / "optimizer.safetensors").is_file():
        from htsr.memorization.training import make_optimizer

        opt = make_optimizer(model)  # its param groups (lr included) are replaced by the saved ones
        load_checkpoint(p, model, opt)
    else:
        load_checkpoint(p, model)
    from htsr.memorization.regularizers import reattach

    reattach(model, extra)
    return model.eval(), extra, opt
