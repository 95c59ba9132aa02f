"""Diagnosing a new configuration of an own model family: measure two of its trained models like the population,
apply the population's MD trees, and say what to change ("batch size too large: lower it")."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from htsr.diagnosis.config import OWN_TASKS, DiagnoserConfig, PopulationConfig
from htsr.diagnosis.errors import DiagnosisError

__all__ = ["ADVICE", "Diagnosis", "diagnose"]

#: (task, predicted label) -> advice
ADVICE: dict[tuple[str, str], str] = {
    ("temperature", "small"): "batch size too large (temperature too small): lower it",
    ("temperature", "large"): "batch size too small (temperature too large): raise it",
    ("width", "width"): "model too small: widen it (a bigger lever than the batch size)",
    ("width", "batch"): "the width is not the bottleneck: change the batch size first",
    ("data", "data"): "too little training data: add data (a bigger lever than the batch size)",
    ("data", "batch"): "the amount of data is not the bottleneck: change the batch size first",
}


@dataclass
class Diagnosis:
    """The measured features of a model, the predicted failure source per task, the advice, and the trees that
    gave it (``trees``: per task, training rows and training accuracy; see :meth:`Diagnoser.summary`)."""

    features: dict[str, float]
    predictions: dict[str, str]
    advice: list[str]
    notes: list[str] = field(default_factory=list)
    trees: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __str__(self) -> str:
        f = self.features
        lines = [f"{task} tree fitted on {t['n_train']} configurations: training accuracy "
                 f"{100 * t['train_accuracy']:.1f}%" for task, t in self.trees.items() if not t["constant"]]
        lines.append(f"features: train error {f['train_error']:.2f} %, connectivity peak "
                     f"{f['mode_connectivity_peak']:.2f} %, ln Hessian trace {f['hessian_t']:.3f}"
                     + (f", CKA {f['CKA']:.3f}" if "CKA" in f else ""))
        lines += [f"advice: {a}" for a in self.advice]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {"features": dict(self.features), "predictions": dict(self.predictions), "advice": list(self.advice),
                "notes": list(self.notes), "trees": {k: dict(v) for k, v in self.trees.items()}}


def diagnose(models: Sequence[Any], population: str | Path | tuple[pd.DataFrame, PopulationConfig] | None = None,
             *, diagnoser: Any = None, config: PopulationConfig | None = None,
             fit_config: DiagnoserConfig | None = None, data: float = 1.0, seed: int = 0) -> Diagnosis:
    """Diagnose a new configuration of the family from two of its trained models (modules, checkpoint
    folders or ``.safetensors`` files): measure its features, apply the trees, and say what to change.

    ``population``: a folder from :func:`~htsr.diagnosis.own_population.build_population` (or ``(frame,
    config)``); unless ``diagnoser`` is given, one is fitted on it with ``fit_config``
    (:class:`DiagnoserConfig`). ``data``: the training-data fraction the models were trained on (default 1.0).
    """
    from htsr.config import check_range
    from htsr.diagnosis.diagnoser import fit_diagnoser
    from htsr.diagnosis.features import measure
    from htsr.diagnosis.own_population import load_population_dir

    check_range("data", data, 0.0, 1.0, lo_open=True)
    if population is not None:
        frame, cfg = population if isinstance(population, tuple) else load_population_dir(population)
        config = config or cfg
        if diagnoser is None:
            diagnoser = fit_diagnoser(frame, fit_config)
    if diagnoser is None or config is None:
        raise DiagnosisError("diagnose needs a population folder, or both diagnoser= and config=")
    feats = measure(models, config, data=data, seed=seed)
    pred = {k: str(v) for k, v in diagnoser.predict(pd.DataFrame([feats])).iloc[0].items()}
    advice = []
    for task in (t for t in OWN_TASKS if t in pred):
        text = ADVICE[(task, pred[task])]
        if task in diagnoser.constant:
            text += (f" [every labelled configuration of the population had this label for {task!r}: not a "
                     "fitted decision]")
        advice.append(text)
    notes = [f"{task}: not diagnosed ({why})" for task, why in diagnoser.skipped.items()]
    return Diagnosis(feats, pred, advice, notes, diagnoser.summary())
