"""Model diagnosis: MD tree (Zhou et al., ICML 2024), its baselines, labels and transfer protocols.

``mdtree`` holds the fixed-structure trees (scikit-learn estimators) and the decision-tree baselines;
``labels`` the room-for-improvement labelling; ``transfer`` the dataset/scale transfer protocols;
``population`` loads and checks populations (one row per trained configuration); ``reproduce`` the
paper's Table B. Importing this package is cheap: the submodules load on first use.
"""

from __future__ import annotations

from htsr._lazy import lazy_exports
from htsr.diagnosis.errors import DiagnosisError

_WHERE = {
    "PopulationConfig": "pipeline", "GRIDS": "pipeline", "build_population": "pipeline", "fit_diagnoser": "pipeline",
    "diagnose": "pipeline", "Diagnoser": "pipeline", "Diagnosis": "pipeline", "load_population_dir": "pipeline",
    "MDTreeClassifier": "mdtree", "MDTreeTemperature": "mdtree", "MDTreeTemperatureCKA": "mdtree",
    "MDTreeWidthBatch": "mdtree", "MDTreeDataBatch": "mdtree", "FeatureTreeClassifier": "mdtree",
    "validation_tree": "mdtree", "hyperparameter_tree": "mdtree", "landscape_tree": "mdtree",
    "export_text": "mdtree", "load_tree": "mdtree", "TASKS": "mdtree", "TASK_LABELS": "mdtree",
    "VALIDATION_FEATURES": "mdtree", "HYPERPARAMETER_FEATURES": "mdtree", "LANDSCAPE_FEATURES": "mdtree",
    "room_for_improvement": "labels", "label_population": "labels", "label_batch_failure": "labels",
    "label_versus_batch": "labels", "drop_optimal": "labels",
    "prepare_task": "transfer", "sample_training_set": "transfer", "evaluate_transfer": "transfer",
    "TransferResult": "transfer", "SCHEMES": "transfer", "PAPER_SEEDS": "transfer",
    "load_population": "population", "load_md_collections": "population", "validate_population": "population",
    "default_data_dir": "population",
    "reproduce_table": "reproduce", "format_table": "reproduce", "CASES": "reproduce",
}

__all__ = ["DiagnosisError", *_WHERE]

__getattr__ = lazy_exports(__name__, _WHERE)
