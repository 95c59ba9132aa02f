"""Measuring the MD-tree features of trained models of one configuration (research note section 1.3).

Per model, on its training data (:func:`model_features`): training error (%) and loss, and the Hessian trace and
top eigenvalue on one seeded batch of ``hessian_samples`` (:func:`htsr.landscape.hessian_summary`, eval mode).
Per pair of seeds (:func:`pair_features`): the Bezier connectivity peak between the first two models
(:func:`htsr.landscape.train_bezier`, :func:`htsr.landscape.evaluate_curve`, BatchNorm re-estimated at each t) and
the output CKA on mixup training inputs (TAX ``CKA.py``). :func:`seed_features` folds them into one row, the mean
over seeds (``hessian_t`` = ln of the mean trace, as MD). :func:`measure` does all of it for models given by the
user, exactly as the population's were measured.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from htsr.diagnosis.config import PopulationConfig
from htsr.diagnosis.errors import DiagnosisError

__all__ = ["model_features", "pair_features", "seed_features", "measure", "SEED_MEANS"]

#: Per-model measurements averaged over seeds (those present).
SEED_MEANS = ("train_loss", "train_error", "test_loss", "test_error", "test_acc", "trace", "top_eigenvalue")


def hessian_batch(config: PopulationConfig, x, y, seed: int):
    """The seeded batch of ``hessian_samples`` training samples the Hessian is measured on."""
    import torch

    g = torch.Generator().manual_seed(int(seed))
    idx = torch.randperm(x.shape[0], generator=g)[: config.hessian_samples]
    return x[idx], y[idx]


def mixup_batches(config: PopulationConfig, x, seed: int) -> list:
    """Mixup inputs (TAX ``CKA.py``): each batch mixed with a shuffled copy, one λ ~ Beta(16, 16) per batch."""
    import torch

    rng = np.random.default_rng([int(seed), 7])
    g = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(x.shape[0], generator=g)
    out = []
    for b in range(config.cka_batches):
        idx = order[b * config.cka_batch_size:(b + 1) * config.cka_batch_size]
        if idx.numel() < 4:
            break
        lam = float(rng.beta(16.0, 16.0))
        perm = idx[torch.randperm(idx.numel(), generator=g)]
        out.append(lam * x[idx] + (1 - lam) * x[perm])
    return out


def _softmax(name: str, t):
    return t.softmax(dim=-1)


def model_features(model, x, y, config: PopulationConfig, seed: int = 0) -> dict[str, float]:
    """Per-model measurements on training data ``(x, y)`` (and nothing about how it was trained): training
    error (%) and loss, and the Hessian trace / top eigenvalue on one seeded batch of ``hessian_samples``."""
    from htsr.landscape.hessian import hessian_summary
    from htsr.training import evaluate

    tr = evaluate(model, [(x, y)])
    h = hessian_summary(model, hessian_batch(config, x, y, seed), seed=seed, max_iter=config.hessian_iters,
                        tol=config.hessian_tol)
    return {"train_loss": float(tr["loss"]), "train_error": 100.0 * (1.0 - float(tr["accuracy"])),
            "trace": float(h["trace"]), "top_eigenvalue": float(h["top_eigenvalue"])}


def pair_features(models: Sequence[Any], x, y, config: PopulationConfig, seed: int = 0) -> dict[str, Any]:
    """Features that need two models of the same configuration: the Bezier peak between the first two
    (``mode_connectivity_peak`` in %, ``mode_connectivity`` as a fraction, ``curve_errors`` at t = 0, .25, .5,
    .75, 1) and, if ``config.cka``, the output ``CKA`` on mixup training inputs."""
    from htsr.landscape.cka import compare_models
    from htsr.landscape.paths import PEAK_T, evaluate_curve, train_bezier
    from htsr.training import seeded_loader

    if len(models) < 2:
        raise DiagnosisError(f"the connectivity feature needs two models trained the same way (two seeds); got "
                             f"{len(models)}")
    a, b = models[0], models[1]
    curve, _ = train_bezier(a, b, seeded_loader(x, y, config.curve_batch_size, seed), epochs=config.curve_epochs,
                            lr=config.curve_lr, seed=seed, progress=False)
    path = evaluate_curve(curve, (x, y), ts=(0.0, *PEAK_T, 1.0))
    m = path.metrics()
    out: dict[str, Any] = {"mode_connectivity_peak": float(m["mode_connectivity_peak"]),
                           "mode_connectivity": float(m["mode_connectivity"]),
                           "curve_t": [0.0, *PEAK_T, 1.0], "curve_errors": [float(e) for e in path.error]}
    if config.cka:
        cka = compare_models(a, b, mixup_batches(config, x, seed), estimator="biased", feature_fn=_softmax,
                             progress=False)
        out["CKA"] = float(cka.iloc[0, 0])
    return out


def _ln_positive(v: float, what: str) -> float:
    if not (math.isfinite(v) and v > 0):
        raise DiagnosisError(f"{what} is {v}; its logarithm (the MD-tree feature) needs a positive value")
    return math.log(v)


def seed_features(per_seed: Sequence[Mapping[str, float]], pair: Mapping[str, Any], what: str) -> dict[str, float]:
    """One row from the per-seed measurements and the pair features: the mean over seeds of each of
    :data:`SEED_MEANS` present, ``train_acc``, ``hessian_t`` = ln(mean trace) (an error naming ``what`` when not
    positive), ``hessian_e`` = ln(mean top eigenvalue) (NaN when not positive) and the scalar pair features."""
    row = {k: float(np.mean([s[k] for s in per_seed])) for k in SEED_MEANS if all(k in s for s in per_seed)}
    row["train_acc"] = 100.0 - row["train_error"]
    row["hessian_t"] = _ln_positive(row["trace"], f"mean Hessian trace of {what}")
    row["hessian_e"] = math.log(row["top_eigenvalue"]) if row["top_eigenvalue"] > 0 else math.nan
    for k in ("mode_connectivity_peak", "mode_connectivity", "CKA"):
        if k in pair:
            row[k] = float(pair[k])
    return row


def measure(models: Sequence[Any], config: PopulationConfig, data: float = 1.0, seed: int = 0) -> dict[str, float]:
    """The MD-tree features of a new configuration from two (or more) of its trained models (modules, checkpoint
    folders or ``.safetensors`` files), measured on the family's training data at fraction ``data`` exactly as
    the population's."""
    from htsr.diagnosis.family import family_data, load_family_model

    if len(models) < 2:
        raise DiagnosisError(f"diagnosis needs two models trained the same way with different seeds (the "
                             f"connectivity feature joins them); got {len(models)}")
    loaded = [load_family_model(m, config) for m in models]
    shapes = {tuple((k, tuple(v.shape)) for k, v in m.state_dict().items()) for m in loaded}
    if len(shapes) != 1:
        raise DiagnosisError("the models differ in architecture/width; give models of one configuration")
    xtr, ytr, _, _ = family_data(config, data)
    per = [model_features(m, xtr, ytr, config, seed=seed + i) for i, m in enumerate(loaded)]
    return seed_features(per, pair_features(loaded, xtr, ytr, config, seed=seed), "the models")
