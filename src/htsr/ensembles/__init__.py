"""Ensembles that balance sharpness and diversity: SharpBalance (Lu et al., NeurIPS 2024) and its baselines (deep
ensemble, SAM ensemble) on Fashion-MNIST and its corrupted copies, with calibration and diversity measures.

* ``config``: :class:`EnsembleConfig`, presets ``cpu`` / ``paper``, the methods registered by name.
* ``split``: the per-member SAM/SGD split of the training set (top-k or bottom-k, leftover rules).
* ``optim``: :class:`MixedSAM`, the phase-2 update on mixed minibatches, driven by :func:`htsr.training.train`.
* ``corruptions``: Fashion-MNIST-C (15 CIFAR-10-C-style families x 5 severities), seeded and cached.
* ``metrics``: ECE, NLL and one report of an ensemble's outputs (diversity from :mod:`htsr.landscape.diversity`).
* ``ensemble``: train / resume / evaluate ensembles, the comparison sweep.

Importing this package is cheap: submodules (and torch) load on first use.
"""

from __future__ import annotations

from htsr._lazy import lazy_exports

_WHERE = {
    "EnsembleConfig": "config", "METHODS": "config", "PRESETS": "config", "preset_config": "config",
    "selected": "split", "sam_mask": "split", "sam_masks": "split", "split_summary": "split",
    "MixedSAM": "optim",
    "FAMILIES": "corruptions", "corrupt": "corruptions", "fashion_mnist_c": "corruptions",
    "cache_root": "corruptions",
    "expected_calibration_error": "metrics", "nll": "metrics", "outputs_report": "metrics",
    "average_reports": "metrics", "cka_matrix": "metrics",
    "EnsembleError": "model", "build_model": "model", "load_member": "model", "EpochLoader": "model",
    "train_member": "ensemble", "score_member": "ensemble", "train_ensemble": "ensemble",
    "evaluate_ensemble": "ensemble", "load_ensemble": "ensemble", "final_members": "ensemble",
    "compare": "ensemble", "compare_cell": "ensemble", "summarize_results": "ensemble",
    "member_sharpness": "ensemble", "load_data": "ensemble",
}

__all__ = sorted(_WHERE)

__getattr__ = lazy_exports(__name__, _WHERE)
