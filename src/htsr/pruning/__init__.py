"""Layer-wise sparsity allocation (AlphaPruning, OWL, uniform) and intra-layer pruners (magnitude, Wanda, SparseGPT).

``allocation`` and ``pruners`` are pure functions; ``models`` prunes Hugging Face models block by
block and saves them; ``evaluation`` measures perplexity and draws calibration windows. Importing
this package is cheap: the submodules (and torch/transformers) load on first use.
"""

from __future__ import annotations

from htsr._lazy import lazy_exports
from htsr.pruning.errors import PruningError

__all__ = ["PruningError", "alpha_allocation", "owl_allocation", "uniform_allocation", "prune_model", "save_pruned",
           "load_model", "perplexity", "calibration_windows", "PruneReport", "prune_with_llmcompressor",
           "export_compressed_tensors"]

_WHERE = {
    "alpha_allocation": "allocation", "owl_allocation": "allocation", "uniform_allocation": "allocation",
    "prune_model": "models", "save_pruned": "models", "load_model": "models", "PruneReport": "models",
    "perplexity": "evaluation", "calibration_windows": "evaluation",
    "prune_with_llmcompressor": "backends.llmcompressor", "export_compressed_tensors": "export",
}

__getattr__ = lazy_exports(__name__, _WHERE)
