"""TinyMem (Sakarvadia et al., ICLR 2025): a memorization test-bed, its metrics and 17 mitigations.

Data (:mod:`.data`), models and checkpoints (:mod:`.models`), training on the one loop (:mod:`.training`),
metrics (:mod:`.metrics`), regularizers (:mod:`.regularizers`), fine-tuning (:mod:`.finetune`), unlearning
(:mod:`.unlearning`) and the comparison (:mod:`.compare`). Imports are lazy: ``import htsr.memorization`` is cheap.
"""

from __future__ import annotations

from htsr._lazy import lazy_exports

_EXPORTS = {
    "TinyMemConfig": "data", "TinyMemData": "data", "make_math_data": "data", "make_language_data": "data",
    "preset_config": "data", "PRESETS": "data",
    "make_model": "models", "find_mlps": "models", "save_testbed": "models", "load_testbed": "models",
    "train_testbed": "training",
    "measure": "metrics", "forget_set": "metrics", "Measurement": "metrics", "greedy_generate": "metrics",
    "make_regularizer": "regularizers", "finetune": "finetune",
    "unlearn": "unlearning", "UnlearnReport": "unlearning", "METHODS": "unlearning",
    "run_comparison": "compare", "train_base": "compare", "apply_method": "compare", "ALL_METHODS": "compare",
    "MemorizationError": "errors",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
