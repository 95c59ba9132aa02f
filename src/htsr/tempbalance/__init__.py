"""TempBalance (NeurIPS'23) and its low-data fine-tuning form, Model Balancing (EMNLP'24): per-layer learning
rates set from each layer's heavy-tail metric, recomputed during training.

``config`` holds :class:`TempBalanceConfig` (every setting, defaults stated once) and the EMNLP'24 recipe;
``mapping`` the pure metric -> multiplier maps; ``scheduler`` the :class:`TempBalance` scheduler and the
callback for :func:`htsr.training.train`; ``hf`` the Hugging Face Trainer integration; ``recipes`` the runnable
comparisons (digits CNN, MiniLM fine-tuning, 1-D FNO on Burgers); ``plots`` their figures. Submodules load on
first use, so importing this package is cheap.
"""

from __future__ import annotations

from htsr._lazy import lazy_exports

__all__ = ["TempBalance", "TempBalanceCallback", "TempBalanceError", "MAPPINGS", "linear_map", "rank_map",
           "sqrt_map", "log2_map", "sigmoid_map", "get_mapping", "tempbalance_optimizers", "TempBalanceHFCallback",
           "RECIPES", "run_cell", "run_comparison", "TempBalanceConfig", "EMNLP24"]

_WHERE = {
    "TempBalance": "scheduler", "TempBalanceCallback": "scheduler", "TempBalanceError": "scheduler",
    "MAPPINGS": "mapping", "linear_map": "mapping", "rank_map": "mapping", "sqrt_map": "mapping",
    "log2_map": "mapping", "sigmoid_map": "mapping", "get_mapping": "mapping",
    "tempbalance_optimizers": "hf", "TempBalanceHFCallback": "hf",
    "RECIPES": "recipes", "run_cell": "recipes", "run_comparison": "recipes",
    "TempBalanceConfig": "config", "EMNLP24": "config",
}

__getattr__ = lazy_exports(__name__, _WHERE)
