"""The three-regime model of pruning (Zhou, Yang, Chang, Mahoney; ICML 2023): temperature x load phase diagrams of
pruned-and-retrained networks, the regime of each cell (I / II-A / II-B) from mode connectivity and CKA between
retrained copies, and the advice it implies (raise or lower the temperature of the dense training).

* ``config``: :class:`RegimeConfig` (presets ``cpu`` / ``paper``), :class:`Cutoffs` (the classifier's thresholds).
* ``masks``: one-shot magnitude masks (uniform / global; final linear layer dense), :class:`MaskKeeper`.
* ``model``: :class:`PreResNet` (pre-activation ResNet, CIFAR layout).
* ``pipeline``: dense training per temperature, prune, retrain with the mask fixed, per-cell metrics, the sweep.
* ``classify``: mean over seeds, normalised error, regimes, advice, case study 1, the transition check.
* ``plots``: phase diagrams (PNG).

Importing this package is cheap: submodules (and torch) load on first use.
"""

from __future__ import annotations

from htsr._lazy import lazy_exports

_WHERE = {
    "RegimeConfig": "config", "Cutoffs": "config", "PRESETS": "config", "preset_config": "config", "KNOBS": "config",
    "REGIMES": "config",
    "magnitude_masks": "masks", "apply_masks": "masks", "prunable_layers": "masks", "MaskKeeper": "masks",
    "mask_stats": "masks", "check_density": "masks", "NothingPrunableError": "masks",
    "PreResNet": "model", "build_model": "model",
    "regime_cell": "pipeline", "sweep": "pipeline", "dense_model": "pipeline", "retrain": "pipeline",
    "pair_metrics": "pipeline",
    "aggregate": "classify", "classify": "classify", "advise": "classify", "case_study": "classify",
    "transition": "classify", "transition_verdict": "classify", "fit_cutoffs": "classify", "check_columns": "classify",
    "phase_diagrams": "plots",
}

__all__ = sorted(_WHERE)

__getattr__ = lazy_exports(__name__, _WHERE)
