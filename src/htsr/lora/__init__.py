"""AlphaLoRA (EMNLP 2024): mixtures of LoRA experts whose experts per layer follow heavy-tail layer quality, and
the same allocation as per-layer ranks for plain PEFT LoRA.

* ``allocation``: pure functions, experts or ranks per layer from per-layer alphas (bit-exact reference
  rounding behind a flag), the MoLA baselines.
* ``layer``: :class:`MoLoraLinear`, the MoE-LoRA layer (bias-free router, top-k, batched experts).
* ``model``: inject by target names into any Hugging Face model (Linear and GPT-2 ``Conv1D``), save/load the
  adapters (safetensors + JSON, PEFT's layout), clean removal; per-layer alphas from the spectral engine; a
  PEFT ``LoraConfig`` with ``rank_pattern``/``alpha_pattern``.
* ``train``: fine-tuning on the offline text tasks and the comparison sweep.

Importing this package is cheap: submodules (and torch) load on first use.
"""

from __future__ import annotations

from htsr._lazy import lazy_exports

_WHERE = {
    "ALLOCATIONS": "allocation", "ROUNDINGS": "allocation", "MOLA_PATTERN": "allocation",
    "allocation": "allocation", "check_metrics": "allocation", "expert_counts": "allocation",
    "largest_remainder": "allocation", "mola_counts": "allocation", "rank_allocation": "allocation",
    "reference_rounding": "allocation", "top_k": "allocation", "uniform_counts": "allocation",
    "MoLoraConfig": "config", "TrainConfig": "config", "PRESETS": "config", "preset_config": "config",
    "MoLoraLinear": "layer",
    "MoLoraModel": "model", "LoraError": "model", "inject": "model", "layer_alphas": "model",
    "target_layers": "model", "peft_rank_config": "model", "load_adapters": "model", "source_alphas": "model",
    "source_layers": "model", "peft_config_from_names": "model", "name_matches": "model",
}

__all__ = sorted(_WHERE)

__getattr__ = lazy_exports(__name__, _WHERE)
