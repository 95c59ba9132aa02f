"""Layer-wise sparsity allocation (AlphaPruning, OWL, uniform) and intra-layer pruners (magnitude, Wanda, SparseGPT).

``allocation`` and ``pruners`` are pure functions; ``config`` holds :class:`PruneConfig` (every setting, defaults
stated once); ``prune`` prunes models block by block and loads/saves Hugging Face directories; ``evaluation``
measures perplexity and draws calibration windows. Importing
this package is cheap: the submodules (and torch/transformers) load on first use.
"""

from __future__ import annotations

from htsr._lazy import lazy_exports
from htsr.pruning.errors import PruningError

__all__ = ["PruningError", "alpha_allocation", "owl_allocation", "uniform_allocation", "prune_model", "save_pruned",
           "load_model", "perplexity", "calibration_windows", "PruneReport", "prune_with_llmcompressor",
           "export_compressed_tensors", "PruneConfig"]

_WHERE = {
    "alpha_allocation": "allocation", "owl_allocation": "allocation", "uniform_allocation": "allocation",
    "prune_model": "prune", "save_pruned": "prune", "load_model": "prune", "PruneReport": "prune",
    "PruneConfig": "config",
    "perplexity": "evaluation", "calibration_windows": "evaluation",
    "prune_with_llmcompressor": "backends.llmcompressor", "export_compressed_tensors": "export",
}

__getattr__ = lazy_exports(__name__, _WHERE)
