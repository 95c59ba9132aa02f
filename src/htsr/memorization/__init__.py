"""TinyMem (Sakarvadia et al., ICLR 2025): a memorization test-bed, its metrics and 17 mitigations.

Settings (:mod:`.config`: one config class per mitigation, registered by name, defaults stated once), data
(:mod:`.data`), the test-bed model and its checkpoints (:mod:`.testbed`), the MLP adapter for any Hugging Face
causal LM (:mod:`.mlp`), training on the one loop (:mod:`.training`), metrics (:mod:`.metrics`), regularizers
(:mod:`.regularizers`), fine-tuning (:mod:`.finetune`), unlearning (:mod:`.unlearning`) and the comparison
(:mod:`.compare`). Imports are lazy: ``import htsr.memorization`` is cheap.
"""

from __future__ import annotations

from htsr._lazy import lazy_exports

_EXPORTS = {
    "TinyMemConfig": "config", "TrainConfig": "config", "UNLEARNING": "config", "REGULARIZERS": "config",
    "FINETUNING": "config", "UnlearnConfig": "config", "RegularizerConfig": "config", "FinetuneConfig": "config",
    "COMPARISON_OVERRIDES": "config", "mitigation_config": "config",
    "TinyMemData": "data", "make_math_data": "data", "make_language_data": "data", "preset_config": "data",
    "PRESETS": "data",
    "make_model": "testbed", "save_testbed": "testbed", "load_testbed": "testbed",
    "find_mlps": "mlp", "MLP": "mlp",
    "train_testbed": "training",
    "measure": "metrics", "forget_set": "metrics", "Measurement": "metrics", "greedy_generate": "metrics",
    "make_regularizer": "regularizers", "finetune": "finetune",
    "unlearn": "unlearning", "UnlearnReport": "unlearning", "METHODS": "unlearning",
    "run_comparison": "compare", "train_base": "compare", "apply_method": "compare", "ALL_METHODS": "compare",
    "ComparisonFailed": "compare",
    "MemorizationError": "errors",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
