"""MoE-LoRA on any Hugging Face model: injection by target names, frozen base, adapters saved and loaded in PEFT's
layout, clean removal; per-block alphas from the spectral engine; PEFT ``LoraConfig`` with AlphaLoRA ranks.

* :func:`target_layers`: the linear-like layers (``nn.Linear``, GPT-2 ``Conv1D``) inside the transformer blocks
  (:func:`htsr.nn.find_layout`) whose names match the targets, grouped by block. A target is matched as PEFT
  does (the name equals it or ends in ``.target``), or as a glob / ``re:REGEX`` (:mod:`htsr.nn`).
* :class:`MoLoraModel` (:func:`inject`): replaces each targeted layer by :class:`~htsr.lora.layer.MoLoraLinear`
  with its block's experts and top-k, freezes everything else (``modules_to_save`` stay trainable),
  ``save_pretrained(dir)`` writes ``adapter_config.json`` + ``adapter_model.safetensors``,
  ``MoLoraModel.from_pretrained(model, dir)`` / :func:`load_adapters` restore them (shapes checked), and
  ``unload()`` puts the original layers, weights and ``requires_grad`` flags back.
* :func:`layer_alphas`: mean PL alpha (``analyze(..., preset="alphapruning")``: peak xmin, KS search) of the
  targeted matrices of each block: AlphaLoRA's layer quality.
* :func:`peft_rank_config`: per-block ranks as a PEFT ``LoraConfig`` (``rank_pattern``, ``alpha_pattern``).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from htsr.errors import ConfigError, HtsrError
from htsr.lora.config import MoLoraConfig
from htsr.lora.layer import MoLoraLinear
from htsr.nn import LayoutError, find_layout, match_any

log = logging.getLogger(__name__)

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
FORMAT = "htsr.molora/1"
PREFIX = "base_model.model."


class LoraError(HtsrError, ValueError):
    """Targets that match nothing, a model without the targeted layers, adapters of another base model."""


# ------------------------------------------------------------------ which layers
def _is_pattern(t: str) -> bool:
    return t.startswith("re:") or any(c in t for c in "*?[")


def name_matches(name: str, targets: Sequence[str]) -> bool:
    """PEFT's rule (``name == t`` or ``name.endswith('.' + t)``), or a glob / ``re:`` pattern."""
    for t in targets:
        if _is_pattern(t):
            if match_any((t,), name):
                return True
        elif name == t or name.endswith("." + t):
            return True
    return False


def target_layers(model: nn.Module, targets: Sequence[str]) -> tuple[list[str], list[dict[str, nn.Module]]]:
    """(block paths, per block the targeted linear-like layers by full name), or a :class:`LoraError`."""
    try:
        layout = find_layout(model)
    except LayoutError as e:
        raise LoraError(f"{e}; MoE-LoRA targets layers inside the transformer blocks") from None
    per_block = [{n: m for n, m in blk.items() if name_matches(n, targets)} for blk in layout.layers]
    if not any(per_block):
        some = ", ".join(dict.fromkeys(n.rsplit(".", 1)[-1] for n in layout.layers[0]))
        raise LoraError(f"target modules {', '.join(targets)} match none of the {len(layout.names)} linear layers "
                        f"in the blocks of {type(model).__name__} (block 0 has: {some})")
    empty = [k for k, b in enumerate(per_block) if not b]
    if empty:
        raise LoraError(f"target modules {', '.join(targets)} match no layer in block(s) "
                        f"{', '.join(map(str, empty[:8]))} of {type(model).__name__}; every block needs a target")
    unused = [t for t in targets if not any(name_matches(n, (t,)) for b in per_block for n in b)]
    if unused:
        log.warning("target module(s) %s match no layer of %s", ", ".join(unused), type(model).__name__)
    return layout.block_names, per_block


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


# ------------------------------------------------------------------ the wrapped model
class MoLoraModel(nn.Module):
    """``model`` with MoE-LoRA adapters injected (see the module docstring); calls go to ``model``."""

    def __init__(self, model: nn.Module, config: MoLoraConfig, *, seed: int | None = None) -> None:
        super().__init__()
        if any(isinstance(m, MoLoraLinear) for m in model.modules()):
            raise LoraError(f"{type(model).__name__} already has MoE-LoRA adapters; unload() them first")
        self.config = config
        blocks, per_block = target_layers(model, config.target_modules)
        experts, topk = config.per_block(len(blocks))
        save = [n for n, _ in model.named_modules() if n and config.modules_to_save
                and name_matches(n, config.modules_to_save)]
        if config.modules_to_save and not save:
            raise LoraError(f"modules_to_save {', '.join(config.modules_to_save)} match no module of "
                            f"{type(model).__name__}")
        save = [n for n in save if not any(n.startswith(o + ".") for o in save if o != n)]  # outermost only
        self.model = model
        self.block_names = blocks
        self.modules_to_save = save
        self._flags = {n: p.requires_grad for n, p in model.named_parameters()}
        self._saved = {f"{m}.{n}": p.detach().clone() for m in save
                       for n, p in model.get_submodule(m).named_parameters()}
        self.layers: dict[str, MoLoraLinear] = {}
        self.layer_block: dict[str, int] = {}
        for p in model.parameters():
            p.requires_grad_(False)
        ctx = None
        if seed is not None:
            from htsr.models import seeded_init

            ctx = seeded_init(seed)
            ctx.__enter__()
        try:
            for k, blk in enumerate(per_block):
                for name, base in blk.items():
                    layer = MoLoraLinear(base, experts[k], topk[k], config.r, config.lora_alpha,
                                         config.lora_dropout, config.init_lora_weights)
                    layer.train(base.training)  # the model's mode (an eval-mode model stays deterministic)
                    _set_submodule(model, name, layer)
                    self.layers[name] = layer
                    self.layer_block[name] = k
        finally:
            if ctx is not None:
                ctx.__exit__(None, None, None)
        for m in save:
            for p in model.get_submodule(m).parameters():
                p.requires_grad_(True)
        self.experts, self.top_k = experts, topk

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    # ---------------------------------------------------------------- inspection
    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """The adapters' tensors (and ``modules_to_save``) under PEFT-style keys ``base_model.model.<path>...``."""
        out: dict[str, torch.Tensor] = {}
        for name, layer in self.layers.items():
            out[f"{PREFIX}{name}.lora_A"] = layer.lora_A.detach()
            out[f"{PREFIX}{name}.lora_B"] = layer.lora_B.detach()
            if layer.router is not None:
                out[f"{PREFIX}{name}.router.weight"] = layer.router.weight.detach()
        for m in self.modules_to_save:
            for n, p in self.model.get_submodule(m).named_parameters():
                out[f"{PREFIX}{m}.{n}"] = p.detach()
        return out

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def parameter_counts(self) -> dict[str, int]:
        """Adapter parameters (experts, routers), trainable parameters and all parameters."""
        experts = sum(la.lora_A.numel() + la.lora_B.numel() for la in self.layers.values())
        routers = sum(la.router.weight.numel() for la in self.layers.values() if la.router is not None)
        return {"experts": experts, "routers": routers,
                "trainable": sum(p.numel() for p in self.trainable_parameters()),
                "total": sum(p.numel() for p in self.model.parameters())}

    def allocation_table(self) -> list[dict[str, Any]]:
        """One row per block: its path, targeted layers, experts and top-k."""
        return [{"block": b, "layers": sum(1 for v in self.layer_block.values() if v == k),
                 "experts": self.experts[k], "top_k": self.top_k[k]} for k, b in enumerate(self.block_names)]

    def balance_loss(self) -> torch.Tensor:
        """``config.balance_loss`` times the mean Switch balance loss over the multi-expert layers of the last
        forward pass (0 when the coefficient is 0 or no layer routes)."""
        terms = [la.balance_loss() for la in self.layers.values() if la.n_experts > 1]
        terms = [t for t in terms if t is not None]
        if not terms or self.config.balance_loss == 0:
            return torch.zeros(())
        return self.config.balance_loss * torch.stack(terms).mean()

    # ---------------------------------------------------------------- save / load / remove
    def save_pretrained(self, directory: str | Path, *, overwrite: bool = False,
                        base_model_name_or_path: str | None = None) -> Path:
        """Write ``adapter_config.json`` and ``adapter_model.safetensors`` into ``directory`` atomically (a new or
        empty directory, or with ``overwrite`` a previous htsr output)."""
        from safetensors.torch import save_file

        from htsr.io import replace_dir, write_json

        doc = {"format": FORMAT, "peft_type": "MOLORA", "task_type": None,
               "base_model_name_or_path": base_model_name_or_path or getattr(
                   getattr(self.model, "config", None), "_name_or_path", None),
               "base_model_class": type(self.model).__name__, **self.config.to_dict(),
               "block_names": self.block_names, "experts": self.experts, "top_k": self.top_k,
               "layers": {n: {"block": self.layer_block[n], "in_features": la.in_features,
                              "out_features": la.out_features} for n, la in self.layers.items()},
               "modules_to_save_resolved": self.modules_to_save}
        tensors = {k: v.contiguous().cpu() for k, v in self.adapter_state_dict().items()}

        def fill(tmp: Path) -> None:
            save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", "htsr": FORMAT})
            write_json(tmp / CONFIG_NAME, doc)

        return replace_dir(directory, fill, overwrite=overwrite)

    @classmethod
    def from_pretrained(cls, model: nn.Module, directory: str | Path, *, trainable: bool = False) -> MoLoraModel:
        """Inject the adapters saved in ``directory`` into ``model`` (the same base model) and load their weights;
        a missing layer or a shape mismatch is a :class:`LoraError` and leaves ``model`` unchanged."""
        from htsr.errors import SourceError
        from htsr.spectra.reader import read_safetensors

        d = Path(directory)
        cfg_path, w_path = d / CONFIG_NAME, d / WEIGHTS_NAME
        if not cfg_path.is_file() or not w_path.is_file():
            raise LoraError(f"{d} is not an adapter directory (expected {CONFIG_NAME} and {WEIGHTS_NAME})")
        try:
            doc = json.loads(cfg_path.read_text())
        except (OSError, ValueError) as e:
            raise LoraError(f"{cfg_path} is not valid JSON ({e})") from None
        if doc.get("format") != FORMAT:
            raise LoraError(f"{cfg_path} is not an htsr MoE-LoRA adapter (format {doc.get('format')!r}, expected "
                            f"{FORMAT!r}); a plain PEFT adapter loads with peft.PeftModel.from_pretrained")
        fields = {k: doc[k] for k in MoLoraConfig.field_names() if k in doc}
        config = MoLoraConfig.from_dict({**fields, "init_lora_weights": True})
        try:
            tensors = read_safetensors(w_path)  # the one validated reader
        except (SourceError, OSError) as e:
            raise LoraError(f"{w_path} cannot be read ({e})") from None
        try:
            wrapped = cls(model, config)
        except (LoraError, ConfigError) as e:
            raise LoraError(f"the adapters in {d} do not fit this {type(model).__name__}: {e}") from None
        try:
            want = set(doc.get("layers", {}))
            have = set(wrapped.layers)
            if want != have:
                extra = sorted(want - have) or sorted(have - want)
                raise LoraError(f"the adapters in {d} were saved for other layers than this "
                                f"{type(model).__name__} has (e.g. {extra[0]}); expected the same base model")
            own = wrapped.adapter_state_dict()
            missing = sorted(set(own) - set(tensors))
            if missing:
                raise LoraError(f"{w_path} lacks {len(missing)} tensor(s), e.g. {missing[0]}")
            for k, v in own.items():
                if tuple(tensors[k].shape) != tuple(v.shape):
                    raise LoraError(f"shape mismatch for {k}: the adapter has {tuple(tensors[k].shape)}, this model "
                                    f"needs {tuple(v.shape)}; the adapters were trained on another base model")
            with torch.no_grad():
                for k, v in own.items():
                    v.copy_(tensors[k].to(v.dtype))
        except BaseException:
            wrapped.unload()
            raise
        if not trainable:
            for p in wrapped.model.parameters():
                p.requires_grad_(False)
        return wrapped

    def unload(self) -> nn.Module:
        """Remove the adapters: the original layers back in place, ``modules_to_save`` weights and every
        ``requires_grad`` flag as before injection. Returns the original model."""
        for name, layer in self.layers.items():
            _set_submodule(self.model, name, layer.base)
        with torch.no_grad():
            for full, p in self.model.named_parameters():
                if full in self._saved:
                    p.copy_(self._saved[full])
        for n, p in self.model.named_parameters():
            if n in self._flags:
                p.requires_grad_(self._flags[n])
        self.layers = {}
        return self.model


def inject(model: nn.Module, config: MoLoraConfig | None = None, *, seed: int | None = None,
           **options: Any) -> MoLoraModel:
    """:class:`MoLoraModel` of ``model`` with ``config`` (or a :class:`MoLoraConfig` from ``options``)."""
    cfg = config if config is not None else MoLoraConfig.from_dict(options)
    return MoLoraModel(model, cfg, seed=seed)


def load_adapters(model: nn.Module, directory: str | Path, *, trainable: bool = False) -> MoLoraModel:
    """Same as :meth:`MoLoraModel.from_pretrained`."""
    return MoLoraModel.from_pretrained(model, directory, trainable=trainable)


# ------------------------------------------------------------------ layer quality and PEFT ranks
def layer_alphas(model: nn.Module, targets: Sequence[str], *, analysis: Any = None, nan_policy: str = "raise"
                 ) -> tuple[np.ndarray, list[str], list[dict[str, Any]]]:
    """AlphaLoRA's layer quality: per block the mean PL alpha of its targeted matrices, from
    ``htsr.analyze(model, "alphapruning")`` (peak xmin with KS search). Returns ``(alphas, block names, rows)``
    with one row per matrix. A failed fit (NaN alpha) is an error naming the layers (``nan_policy="raise"``) or
    left out of its block's mean (``"skip"``)."""
    from htsr.spectra.analysis import analyze

    if nan_policy not in ("raise", "skip"):
        raise ConfigError(f"unknown nan_policy {nan_policy!r}; expected raise or skip")
    blocks, per_block = target_layers(model, targets)
    names = [n for b in per_block for n in b]
    if analysis is None:
        analysis = analyze(model, "alphapruning", layers=names, kinds=("linear", "hf_conv1d"))
    return _block_means(analysis, blocks, [list(b) for b in per_block], nan_policy)


def source_layers(source: str | Path, targets: Sequence[str]) -> tuple[str, list[str], list[list[str]]]:
    """Like :func:`target_layers` for a checkpoint on disk (a safetensors file, a sharded or HF directory), from its
    tensor names and shapes alone (nothing is loaded): ``(stack path, block paths, targeted names per block)``.
    The stack is the outermost ``<path>.<index>`` prefix (:func:`htsr.nn.block_of`) holding targeted 2-D
    weights."""
    from htsr.nn import block_of
    from htsr.spectra.sources import path_entries

    mods = [e.module for e in path_entries(source) if len(e.shape) == 2 and e.name.endswith(".weight")]
    hits: dict[str, dict[int, list[str]]] = {}
    for m in mods:
        b = block_of(m)
        if b is None or not name_matches(m, targets):
            continue
        stack, _, idx = b.rpartition(".")
        hits.setdefault(stack, {}).setdefault(int(idx), []).append(m)
    if not hits:
        some = ", ".join(dict.fromkeys(m.rsplit(".", 1)[-1] for m in mods if block_of(m) is not None)) or "none"
        raise LoraError(f"target modules {', '.join(targets)} match none of the {len(mods)} weight matrices in "
                        f"the blocks of {source} (block layers: {some[:200]})")
    stack = min(hits, key=lambda k: (k.count("."), -len(hits[k])))
    idx = sorted(hits[stack])
    if idx != list(range(len(idx))):
        missing = sorted(set(range(max(idx) + 1)) - set(idx))
        raise LoraError(f"target modules {', '.join(targets)} match no layer in block(s) "
                        f"{', '.join(map(str, missing[:8]))} of {source}; every block needs a target")
    return stack, [f"{stack}.{k}" for k in idx], [hits[stack][k] for k in idx]


def source_alphas(source: str | Path, targets: Sequence[str], *, nan_policy: str = "raise"
                  ) -> tuple[np.ndarray, list[str], list[dict[str, Any]], list[list[str]]]:
    """:func:`layer_alphas` of a checkpoint on disk, streamed by the spectral engine one matrix at a time (a 7B model
    is never instantiated). Returns ``(alphas, block names, rows, targeted names per block)``."""
    from htsr.spectra.analysis import analyze

    _, blocks, per_block = source_layers(source, targets)
    names = [n for b in per_block for n in b]
    analysis = analyze(str(source), "alphapruning", layers=names)
    return (*_block_means(analysis, blocks, per_block, nan_policy), per_block)


def _block_means(analysis: Any, blocks: list[str], per_block: list[list[str]], nan_policy: str
                 ) -> tuple[np.ndarray, list[str], list[dict[str, Any]]]:
    if nan_policy not in ("raise", "skip"):
        raise ConfigError(f"unknown nan_policy {nan_policy!r}; expected raise or skip")
    names = [n for b in per_block for n in b]
    vec = analysis.metric("alpha", names, policy="nan")
    vals = dict(zip(names, np.asarray(vec.values, dtype=np.float64), strict=True))
    bad = [n for n in names if not np.isfinite(vals[n])]
    if bad and nan_policy == "raise":
        raise LoraError(f"the alpha fit failed (NaN) for {len(bad)} layer(s): {', '.join(bad[:4])}"
                        f"{' ...' if len(bad) > 4 else ''}; expected a fit for every targeted matrix "
                        "(use nan_policy='skip' to leave them out of their block's mean)")
    out = []
    for k, b in enumerate(per_block):
        v = [vals[n] for n in b if np.isfinite(vals[n])]
        if not v:
            raise LoraError(f"no alpha could be fitted in block {blocks[k]}")
        out.append(float(np.mean(v)))
    rows = [{"name": n, "block": k, "alpha": vals[n]} for k, b in enumerate(per_block) for n in b]
    return np.array(out), blocks, rows


def _relative(name: str, stack: str) -> str:
    """``name`` from the blocks' list on (``model.layers.3.mlp.up_proj`` -> ``layers.3.mlp.up_proj``): the same key
    for the bare model and its task wrappers (``AutoModel`` and ``AutoModelForCausalLM`` name modules differently)."""
    head = stack.rpartition(".")[0]
    return name[len(head) + 1:] if head and name.startswith(head + ".") else name


def peft_config_from_names(per_block: Sequence[Sequence[str]], stack: str, ranks: Sequence[int], *, r: int = 8,
                           lora_alpha: float = 16.0, keep_scaling: bool = True, **lora_kwargs: Any) -> Any:
    """The PEFT ``LoraConfig`` of :func:`peft_rank_config` from module names grouped by block (see there)."""
    from peft import LoraConfig

    ranks = [int(x) for x in ranks]
    if len(ranks) != len(per_block):
        raise ConfigError(f"{len(ranks)} ranks for {len(per_block)} blocks; expected one rank per block")
    if any(x < 1 for x in ranks):
        raise ConfigError(f"ranks must be >= 1, got {ranks}")
    keys = {_relative(n, stack): ranks[k] for k, b in enumerate(per_block) for n in b}
    rank_pattern = {re.escape(n): v for n, v in keys.items()}
    alpha_pattern = {re.escape(n): float(lora_alpha) * v / r for n, v in keys.items()} if keep_scaling else {}
    return LoraConfig(r=r, lora_alpha=lora_alpha, target_modules=sorted(keys), rank_pattern=rank_pattern,
                      alpha_pattern=alpha_pattern, **lora_kwargs)


def peft_rank_config(model: nn.Module, ranks: Sequence[int], targets: Sequence[str], *, r: int = 8,
                     lora_alpha: float = 16.0, keep_scaling: bool = True, **lora_kwargs: Any) -> Any:
    """A PEFT ``LoraConfig`` giving every targeted layer of block ``k`` rank ``ranks[k]`` (``rank_pattern``; keys
    and ``target_modules`` are the escaped module names from the blocks' list on, e.g. ``layers.3.mlp.up_proj``,
    which PEFT matches as suffixes). ``keep_scaling``: ``alpha_pattern`` sets ``lora_alpha * rank / r`` so the
    scaling ``alpha / rank`` stays the uniform adapter's ``lora_alpha / r``; otherwise PEFT's ``lora_alpha / rank``
    applies. Other keywords go to ``LoraConfig`` (``lora_dropout``, ``modules_to_save``, ...)."""
    blocks, per_block = target_layers(model, targets)
    stack = blocks[0].rpartition(".")[0]
    return peft_config_from_names([list(b) for b in per_block], stack, ranks, r=r, lora_alpha=lora_alpha,
                                  keep_scaling=keep_scaling, **lora_kwargs)
