"""Model diagnosis: MD tree (Zhou et al., ICML 2024), its baselines, labels and transfer protocols, and the whole
method on a model family of one's own.

By role: ``config`` the settings (``TreeConfig``, ``DiagnoserConfig``, ``PopulationConfig``, ``GRIDS``);
``population`` reading and checking population tables (one row per trained configuration; the paper's, shipped);
``family`` the own model family (data, models, reading a trained model back); ``features`` measuring the MD
features of trained models; ``own_population`` building (training and measuring) a resumable own population;
``labels`` the room-for-improvement labels; ``mdtree`` the fixed-structure trees (scikit-learn estimators) and
the decision-tree baselines; ``diagnoser`` fitting the trees of an own population; ``advice`` diagnosing a new
model; ``transfer`` the dataset/scale transfer protocols; ``reproduce`` the paper's Table B. Importing this
package is cheap: the submodules load on first use.
"""

from __future__ import annotations

from htsr._lazy import lazy_exports
from htsr.diagnosis.errors import DiagnosisError

_WHERE = {
    "TreeConfig": "config", "DiagnoserConfig": "config", "PopulationConfig": "config", "GRIDS": "config",
    "TASK_LABELS": "config", "TASK_NAMES": "config", "OWN_TASKS": "config",
    "build_population": "own_population", "load_population_dir": "own_population",
    "population_cell": "own_population", "measure": "features",
    "fit_diagnoser": "diagnoser", "Diagnoser": "diagnoser", "diagnose": "advice", "Diagnosis": "advice",
    "ADVICE": "advice",
    "MDTreeClassifier": "mdtree", "MDTreeTemperature": "mdtree", "MDTreeTemperatureCKA": "mdtree",
    "MDTreeWidthBatch": "mdtree", "MDTreeDataBatch": "mdtree", "FeatureTreeClassifier": "mdtree",
    "validation_tree": "mdtree", "hyperparameter_tree": "mdtree", "landscape_tree": "mdtree",
    "export_text": "mdtree", "load_tree": "mdtree", "read_tree": "mdtree", "TASKS": "mdtree",
    "VALIDATION_FEATURES": "mdtree", "HYPERPARAMETER_FEATURES": "mdtree", "LANDSCAPE_FEATURES": "mdtree",
    "room_for_improvement": "labels", "label_population": "labels", "label_batch_failure": "labels",
    "label_versus_batch": "labels", "drop_optimal": "labels",
    "prepare_task": "transfer", "sample_training_set": "transfer", "evaluate_transfer": "transfer",
    "TransferResult": "transfer", "SCHEMES": "transfer", "PAPER_SEEDS": "transfer",
    "load_population": "population", "load_md_collections": "population", "validate_population": "population",
    "reproduce_table": "reproduce", "format_table": "reproduce", "CASES": "reproduce",
}

__all__ = ["DiagnosisError", *_WHERE]

__getattr__ = lazy_exports(__name__, _WHERE)
