"""The MLP adapter used by unlearning: each transformer block's MLP of any Hugging Face causal LM.

Blocks and linear-like layers come from :func:`htsr.nn.find_layout` (Linear and HF ``Conv1D`` alike); in each
block the MLP's up-projection(s) and down-projection are named by the Hugging Face naming of GPT-2
(``mlp.c_fc``/``mlp.c_proj``), GPT-NeoX/Pythia/Falcon (``mlp.dense_h_to_4h``/``mlp.dense_4h_to_h``),
LLaMA/Mistral/Qwen (``mlp.gate_proj`` + ``mlp.up_proj``/``mlp.down_proj``), GPT-J (``mlp.fc_in``/``mlp.fc_out``),
OPT (``fc1``/``fc2``) and BERT-style (``intermediate.dense``/``output.dense``). A neuron is one input unit of the
down-projection.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from htsr.memorization.errors import MemorizationError
from htsr.nn import LayoutError, find_layout, is_linear_like, weight_2d

__all__ = ["MLP", "MLP_NAMINGS", "find_mlps", "mlp_param_names"]

#: (up-projection suffixes, down-projection suffix) per naming family, tried in order.
MLP_NAMINGS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("mlp.c_fc",), "mlp.c_proj"),
    (("mlp.dense_h_to_4h",), "mlp.dense_4h_to_h"),
    (("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj"),
    (("mlp.fc_in",), "mlp.fc_out"),
    (("fc1",), "fc2"),
    (("intermediate.dense",), "output.dense"),
)


@dataclass
class MLP:
    """One block's MLP: ``ups`` (name -> module; gate and up for gated MLPs) and ``down`` (name, module)."""

    block: int
    ups: dict[str, nn.Module]
    down_name: str
    down: nn.Module

    @property
    def n_neurons(self) -> int:
        return int(weight_2d(self.down).shape[1])

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
    for k, (prefix, blk) in enumerate(zip(layout.block_names, layout.blocks, strict=True)):
        mods = dict(blk.named_modules())
        for ups, down in MLP_NAMINGS:
            if all(u in mods and is_linear_like(mods[u]) for u in ups) and down in mods and is_linear_like(mods[down]):
                mlp = MLP(k, {f"{prefix}.{u}": mods[u] for u in ups}, f"{prefix}.{down}", mods[down])
                if any(weight_2d(m).shape[0] != mlp.n_neurons for m in mlp.ups.values()):
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
