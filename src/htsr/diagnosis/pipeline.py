"""MD tree for a user's own model family: train a small population, measure its loss-landscape features,
label it, fit the trees, and diagnose a new model of the family ("batch size too large: lower it").

The family here is :func:`htsr.models.vision.make_vision_model` (a small BatchNorm VGG or ResNet with a
width knob) on scikit-learn's digits (:func:`htsr.data.digits.digits_split`: a fixed stratified test set and
a stratified training fraction), trained with the shared loop :func:`htsr.training.train` (SGD, momentum 0.9,
constant learning rate, weight decay 5e-4: the MD population's recipe, research note section 1.2).

One *configuration* is (width, batch size, data fraction); it is trained at every seed of the recipe (two by
default, the least the Bezier feature needs) and stored as one row, the mean over seeds (section 1.3):

* ``train_error``/``test_error`` (%), ``train_loss``/``test_loss`` (cross-entropy), ``test_acc`` (%);
* ``hessian_t`` = ln(mean over seeds of the Hutchinson Hessian trace), ``hessian_e`` = ln(mean top eigenvalue),
  both from :func:`htsr.landscape.hessian_summary` on one batch of 200 training samples in eval mode;
* ``mode_connectivity_peak`` = −max over t ∈ {.25, .5, .75} of the training error (%) on the Bezier curve
  between seeds 0 and 1 (:func:`htsr.landscape.train_bezier`, :func:`htsr.landscape.evaluate_curve`, BatchNorm
  re-estimated on the training set at each t), and ``mode_connectivity`` (Yang et al.; fraction);
* ``CKA``: biased linear CKA between the two seeds' softmax outputs on mixup training inputs (λ ~ Beta(16, 16),
  one λ per batch of 128; TAX ``CKA.py``). With two seeds it is the one unordered pair instead of the paper's
  20 ordered pairs of 5 seeds;
* the grid (``width``, ``bs``, ``data``), ``log_data_amount`` = ln(#training samples), ``log_para_amount`` =
  ln(#parameters), ``log_bs``.

Results go into a :class:`htsr.experiments.ResultStore` under the output folder (``results.csv`` rewritten
atomically after each configuration, per-seed details in ``cells/*.json``, the seed models as
:func:`htsr.training.save_checkpoint` folders under ``models/``), keyed by the configuration and a hash of the
recipe, so an interrupted run resumes with the configurations it had not finished and a changed recipe never
reuses stale rows.

Differences from the MD population (documented, deliberate at this scale): a fixed epoch budget instead of
early stopping on a training-loss plateau; the Bezier curve is trained for ``curve_epochs`` (default 10) instead
of ``5·int(10/data_fraction)`` epochs; 2 seeds instead of 5.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from htsr.diagnosis.errors import DiagnosisError
from htsr.diagnosis.mdtree import TASK_LABELS

log = logging.getLogger(__name__)

__all__ = ["PopulationConfig", "GRIDS", "build_population", "load_population_dir", "configuration_features",
           "model_features", "fit_diagnoser", "Diagnoser", "Diagnosis", "diagnose", "ADVICE"]

GRID_AXES = ("width", "bs", "data")


@dataclass(frozen=True)
class PopulationConfig:
    """A population recipe: the grid (widths x batch sizes x data fractions x seeds) and how each model is
    trained and measured. Everything but the grid goes into the recipe hash that keys stored results."""

    widths: tuple[int, ...] = (1, 2, 4)
    batch_sizes: tuple[int, ...] = (16, 64, 256)
    data_fractions: tuple[float, ...] = (0.5, 1.0)
    seeds: tuple[int, ...] = (0, 1)
    arch: str = "vgg"
    epochs: int = 10
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    test_size: float = 0.3
    split_seed: int = 0
    subset_seed: int = 0
    curve_epochs: int = 10
    curve_batch_size: int = 64
    curve_lr: float = 0.05
    hessian_samples: int = 200
    hessian_iters: int = 100
    hessian_tol: float = 1e-3
    cka: bool = True
    cka_batches: int = 6
    cka_batch_size: int = 128

    def __post_init__(self) -> None:
        for name in ("widths", "batch_sizes", "data_fractions", "seeds"):
            v = getattr(self, name)
            if not isinstance(v, (tuple, list)) or not len(v):
                raise DiagnosisError(f"PopulationConfig.{name} must be a non-empty list, got {v!r}")
            object.__setattr__(self, name, tuple(v))
        if len(set(self.seeds)) < 2:
            raise DiagnosisError(f"PopulationConfig.seeds needs >= 2 distinct seeds (the Bezier curve joins seeds 0 "
                                 f"and 1), got {self.seeds}")
        if any(int(w) < 1 for w in self.widths) or any(int(b) < 1 for b in self.batch_sizes):
            raise DiagnosisError(f"widths and batch sizes must be >= 1, got {self.widths}, {self.batch_sizes}")
        if any(not 0 < float(d) <= 1 for d in self.data_fractions):
            raise DiagnosisError(f"data fractions must be in (0, 1], got {self.data_fractions}")
        for name in ("epochs", "curve_epochs", "curve_batch_size", "hessian_samples", "hessian_iters",
                     "cka_batches", "cka_batch_size"):
            if int(getattr(self, name)) < 1:
                raise DiagnosisError(f"PopulationConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        if not (self.lr > 0 and self.curve_lr > 0):
            raise DiagnosisError(f"learning rates must be > 0, got lr={self.lr}, curve_lr={self.curve_lr}")
        from htsr.models.vision import ARCHS

        if self.arch not in ARCHS:
            raise DiagnosisError(f"arch must be one of {ARCHS}, got {self.arch!r}")

    @property
    def n_configs(self) -> int:
        return len(self.widths) * len(self.batch_sizes) * len(self.data_fractions)

    def recipe(self) -> dict[str, Any]:
        """The training/measurement settings (not the grid): what the stored rows depend on."""
        d = asdict(self)
        for k in ("widths", "batch_sizes", "data_fractions"):
            d.pop(k)
        d["seeds"] = list(self.seeds)
        return d

    def recipe_id(self) -> str:
        from htsr.experiments.store import config_id

        return config_id(self.recipe())

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PopulationConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise DiagnosisError(f"unknown population config key(s) {unknown}; known: {sorted(known)}")
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})


#: Named grids. ``small``: 3 widths x 3 batch sizes x 2 data fractions x 2 seeds (36 trainings; about 10-15
#: minutes on 2 CPU cores; the benchmark); ``tiny``: 2 x 2 x 1 x 2 with short training (tests, smoke runs).
GRIDS: dict[str, PopulationConfig] = {
    "small": PopulationConfig(),
    "tiny": PopulationConfig(widths=(1, 4), batch_sizes=(32, 256), data_fractions=(0.25,), epochs=2,
                             curve_epochs=2, hessian_iters=20, cka_batches=2),
}


# ----------------------------------------------------------------------------- data and models

def _data(config: PopulationConfig, fraction: float):
    from htsr.data.digits import digits_split

    return digits_split(fraction=float(fraction), seed=config.subset_seed, test_size=config.test_size,
                        split_seed=config.split_seed)


def _model(config: PopulationConfig, width: int, seed: int):
    from htsr.models.vision import make_vision_model

    return make_vision_model(config.arch, width=int(width), seed=int(seed))


def _hessian_batch(config: PopulationConfig, x, y, seed: int):
    import torch

    g = torch.Generator().manual_seed(int(seed))
    idx = torch.randperm(x.shape[0], generator=g)[: config.hessian_samples]
    return x[idx], y[idx]


def _mixup_batches(config: PopulationConfig, x, seed: int) -> list:
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
    h = hessian_summary(model, _hessian_batch(config, x, y, seed), seed=seed, max_iter=config.hessian_iters,
                        tol=config.hessian_tol)
    return {"train_loss": float(tr["loss"]), "train_error": 100.0 * (1.0 - float(tr["accuracy"])),
            "trace": float(h["trace"]), "top_eigenvalue": float(h["top_eigenvalue"])}


def _ln_positive(v: float, what: str) -> float:
    if not (math.isfinite(v) and v > 0):
        raise DiagnosisError(f"{what} is {v}; its logarithm (the MD-tree feature) needs a positive value")
    return math.log(v)


def pair_features(models: Sequence[Any], x, y, config: PopulationConfig, seed: int = 0) -> dict[str, float]:
    """Features that need two models of the same configuration: the Bezier peak between the first two
    (``mode_connectivity_peak`` in %, ``mode_connectivity`` as a fraction) and, if ``config.cka``, the output
    CKA on mixup training inputs."""
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
    out = {"mode_connectivity_peak": float(m["mode_connectivity_peak"]),
           "mode_connectivity": float(m["mode_connectivity"]),
           "curve_errors": [float(e) for e in path.error]}
    if config.cka:
        batches = _mixup_batches(config, x, seed)
        cka = compare_models(a, b, batches, estimator="biased", feature_fn=_softmax, progress=False)
        out["CKA"] = float(cka.iloc[0, 0])
    return out


def _n_params(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def configuration_features(config: PopulationConfig, width: int, bs: int, data: float,
                           model_dir: str | Path | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train one configuration at every seed and measure it: ``(row, details)``; the row is the mean over
    seeds (``hessian_t`` = ln of the mean trace, as MD). With ``model_dir``, each seed's model is saved as a
    checkpoint folder ``model_dir/seed<k>``."""
    import torch

    from htsr.training import evaluate, save_checkpoint, seeded_loader, train

    t0 = time.perf_counter()
    xtr, ytr, xte, yte = _data(config, data)
    per_seed, models = [], []
    for seed in config.seeds:
        model = _model(config, width, seed)
        opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                              weight_decay=config.weight_decay)
        res = train(model, seeded_loader(xtr, ytr, bs, seed), opt, epochs=config.epochs, progress=False)
        model.eval()
        te = evaluate(model, [(xte, yte)])
        f = model_features(model, xtr, ytr, config, seed=seed)
        f.update(test_loss=float(te["loss"]), test_acc=100.0 * float(te["accuracy"]),
                 test_error=100.0 * (1.0 - float(te["accuracy"])), seed=int(seed),
                 steps=int(res.state.step))
        per_seed.append(f)
        models.append(model)
        if model_dir is not None:
            save_checkpoint(Path(model_dir) / f"seed{seed}", model,
                            extra={"kind": "htsr.mdtree.population_model", "arch": config.arch, "width": int(width),
                                   "bs": int(bs), "data": float(data), "seed": int(seed),
                                   "recipe_id": config.recipe_id(), **f})
    pair = pair_features(models, xtr, ytr, config, seed=config.seeds[0])
    mean = {k: float(np.mean([s[k] for s in per_seed])) for k in
            ("train_loss", "train_error", "test_loss", "test_error", "test_acc", "trace", "top_eigenvalue")}
    n_par = _n_params(models[0])
    row: dict[str, Any] = {
        **mean,
        "train_acc": 100.0 - mean["train_error"],
        "hessian_t": _ln_positive(mean["trace"], f"mean Hessian trace at width={width} bs={bs} data={data}"),
        "hessian_e": math.log(mean["top_eigenvalue"]) if mean["top_eigenvalue"] > 0 else math.nan,
        "mode_connectivity_peak": pair["mode_connectivity_peak"],
        "mode_connectivity": pair["mode_connectivity"],
        "data_amount": int(xtr.shape[0]), "para_amount": n_par,
        "log_data_amount": math.log(xtr.shape[0]), "log_para_amount": math.log(n_par),
        "log_bs": math.log(bs), "test_acc_std": float(np.std([s["test_acc"] for s in per_seed], ddof=1)),
        "train_s": time.perf_counter() - t0,
    }
    if "CKA" in pair:
        row["CKA"] = pair["CKA"]
    details = {"per_seed": per_seed, "curve_t": [0.0, *_peak_t(), 1.0], "curve_errors": pair["curve_errors"]}
    return row, details


# ----------------------------------------------------------------------------- the resumable population

def _check_dir_config(out: Path, config: PopulationConfig) -> None:
    p = out / "config.json"
    if p.is_file():
        try:
            old = PopulationConfig.from_dict(json.loads(p.read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as e:
            raise DiagnosisError(f"{p}: unreadable population config ({e})") from None
        if old.recipe_id() != config.recipe_id():
            raise DiagnosisError(f"{out} holds a population of another recipe ({old.recipe()}); use a new output "
                                 f"folder (or the same recipe: {config.recipe()})")


def build_population(config: PopulationConfig | str, out_dir: str | Path, *, max_new: int | None = None,
                     save_models: bool = True, progress: bool | None = None) -> pd.DataFrame:
    """Train and measure every configuration of ``config`` (a :class:`PopulationConfig` or a :data:`GRIDS` name)
    not yet stored under ``out_dir``; returns the population, one row per finished configuration (grid order).

    Resumable: finished configurations are read back, never retrained. ``max_new`` stops after that many new
    configurations (a time box; rerun to continue). Writes ``config.json``, ``results.csv`` (the store),
    ``population.csv`` (the finished rows) and, with ``save_models``, ``models/<key>/seed<k>/``.
    ``frame.attrs``: ``n_trained`` (this call), ``n_resumed``, ``n_missing`` (not finished yet), ``failed``.
    """
    from htsr.experiments import ResultStore, grid, run_sweep
    from htsr.experiments.store import cell_key
    from htsr.io import write_json, write_table

    if isinstance(config, str):
        if config not in GRIDS:
            raise DiagnosisError(f"unknown grid {config!r}; expected one of {sorted(GRIDS)}")
        config = GRIDS[config]
    if max_new is not None and max_new < 0:
        raise DiagnosisError(f"max_new must be >= 0 or None, got {max_new}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DiagnosisError(f"{out} exists and is not a folder")
    _check_dir_config(out, config)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", config.to_dict())
    store = ResultStore(out)
    rid = config.recipe_id()
    extra = {"recipe_id": rid}
    cells = grid(width=[int(w) for w in config.widths], bs=[int(b) for b in config.batch_sizes],
                 data=[float(d) for d in config.data_fractions])
    todo = [c for c in cells if not store.done(cell_key({**c.params, **extra}))]
    run = todo if max_new is None else todo[:max_new]

    def cell_fn(width: int, bs: int, data: float):
        key = cell_key({"width": width, "bs": bs, "data": data, **extra})
        mdir = out / "models" / key if save_models else None
        return configuration_features(config, width, bs, data, model_dir=mdir)

    if run:
        run_sweep(cell_fn, run, store, extra=extra, progress=progress)
    frame = _population_frame(store.table(), config)
    failed = []
    tab = store.table()
    if len(tab) and "status" in tab:
        bad = tab[(tab["status"] != "ok") & (tab.get("recipe_id") == rid)]
        failed = [f"width={r['width']} bs={r['bs']} data={r['data']}: {r.get('error', '?')}"
                  for _, r in bad.iterrows()]
    if len(frame):
        write_table(out / "population.csv", frame)
    frame.attrs.update(n_trained=len(run), n_resumed=len(cells) - len(todo), n_missing=len(cells) - len(frame),
                       failed=failed, recipe_id=rid)
    return frame


def _population_frame(table: pd.DataFrame, config: PopulationConfig) -> pd.DataFrame:
    if table.empty or "status" not in table:
        return pd.DataFrame()
    t = table[(table["status"] == "ok") & (table["recipe_id"] == config.recipe_id())].copy()
    t = t[t["width"].isin(config.widths) & t["bs"].isin(config.batch_sizes)
          & np.isclose(t["data"].to_numpy(dtype=float)[:, None], np.array(config.data_fractions, float)).any(1)]
    t["width"] = t["width"].astype(int)
    t["bs"] = t["bs"].astype(int)
    return t.sort_values(list(GRID_AXES), kind="mergesort").reset_index(drop=True)


def load_population_dir(path: str | Path) -> tuple[pd.DataFrame, PopulationConfig]:
    """``(population, config)`` of a folder written by :func:`build_population` (finished rows only)."""
    from htsr.experiments import ResultStore

    p = Path(path)
    if not (p / "config.json").is_file():
        raise DiagnosisError(f"{p} is not a population folder (no config.json); build one with "
                             "`htsr mdtree population --out DIR`")
    try:
        config = PopulationConfig.from_dict(json.loads((p / "config.json").read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as e:
        raise DiagnosisError(f"{p / 'config.json'}: unreadable population config ({e})") from None
    frame = _population_frame(ResultStore(p).table(), config)
    if frame.empty:
        raise DiagnosisError(f"{p} holds no finished configuration yet; run `htsr mdtree population --out {p}`")
    return frame, config


def _peak_t() -> tuple[float, ...]:
    from htsr.landscape.paths import PEAK_T

    return PEAK_T


# ----------------------------------------------------------------------------- fitting and diagnosing

#: task -> label column for the tasks diagnosed from an own population (the CKA variant is not fitted here)
_TASKS = {t: TASK_LABELS[t] for t in ("temperature", "width", "data")}

#: (task, predicted label) -> advice
ADVICE: dict[tuple[str, str], str] = {
    ("temperature", "small"): "batch size too large (temperature too small): lower it",
    ("temperature", "large"): "batch size too small (temperature too large): raise it",
    ("width", "width"): "model too small: widen it (a bigger lever than the batch size)",
    ("width", "batch"): "the width is not the bottleneck: change the batch size first",
    ("data", "data"): "too little training data: add data (a bigger lever than the batch size)",
    ("data", "batch"): "the amount of data is not the bottleneck: change the batch size first",
}


def auto_bounds(tree_cls: type, frame: pd.DataFrame) -> list[tuple[float, float]]:
    """Search bounds per threshold from the observed range of its feature (the paper's bounds are in its
    population's units; a small digits CNN has other ranges of ln trace and connectivity)."""
    spec = tree_cls.spec
    bounds = []
    for t in spec.thresholds:
        col = spec.features[t.feature]
        v = frame[col].to_numpy(dtype=float)
        lo, hi = float(np.min(v)), float(np.max(v))
        pad = max(0.01 * (hi - lo), 1e-6 * max(1.0, abs(lo), abs(hi)))
        bounds.append((lo - pad, hi + pad))
    return bounds


@dataclass
class Diagnoser:
    """MD trees fitted on a labelled population: ``trees`` by task, ``constant`` tasks whose population had
    one class (the advice is that class, flagged), ``skipped`` tasks with the reason."""

    trees: dict[str, Any] = field(default_factory=dict)
    constant: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    n_train: dict[str, int] = field(default_factory=dict)

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        """One column per task with the predicted label."""
        out = pd.DataFrame(index=frame.index)
        for task, tree in self.trees.items():
            out[task] = tree.predict(frame)
        for task, label in self.constant.items():
            out[task] = label
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"schema": "htsr.mdtree.diagnoser/1", "trees": {k: t.to_dict() for k, t in self.trees.items()},
                "constant": dict(self.constant), "skipped": dict(self.skipped), "n_train": dict(self.n_train)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Diagnoser:
        from htsr.diagnosis.mdtree import load_tree

        if d.get("schema") != "htsr.mdtree.diagnoser/1":
            raise DiagnosisError(f"not a saved diagnoser (schema {d.get('schema')!r})")
        return cls(trees={k: load_tree(v) for k, v in d["trees"].items()}, constant=dict(d.get("constant", {})),
                   skipped=dict(d.get("skipped", {})), n_train={k: int(v) for k, v in d.get("n_train", {}).items()})


def fit_diagnoser(population: pd.DataFrame, *, tasks: Sequence[str] = ("temperature", "width", "data"),
                  bounds: str | Mapping[str, Any] = "auto", score: str = "test_acc",
                  relabel: bool = True) -> Diagnoser:
    """Label ``population`` (room for improvement of ``score`` over the grid) and fit one MD tree per task.

    ``bounds``: ``"auto"`` (each threshold searched over its feature's observed range), ``"paper"`` (the
    paper's units: train error [0, 1] %, connectivity [−30, 0] %, ln trace [4, 9]) or ``{task: bounds}``.
    A task whose non-tied rows all have one label becomes a flagged constant; one with no row is skipped.
    ``relabel=False`` uses the label columns already in ``population`` (e.g. computed on a whole grid before
    holding part of it out).
    """
    from htsr.diagnosis.labels import drop_optimal, label_population
    from htsr.diagnosis.mdtree import TASKS
    from htsr.diagnosis.population import validate_population

    unknown = sorted(set(tasks) - set(_TASKS))
    if unknown:
        raise DiagnosisError(f"unknown task(s) {unknown}; expected some of {sorted(_TASKS)}")
    if relabel:
        validate_population(population, ["train_error", "mode_connectivity_peak", "hessian_t", score, *GRID_AXES],
                            name="fit_diagnoser population")
        labelled = label_population(population, score=score)
    else:
        validate_population(population, ["train_error", "mode_connectivity_peak", "hessian_t"],
                            name="fit_diagnoser population")
        labelled = population
    diag = Diagnoser()
    for task in tasks:
        label = _TASKS[task]
        if label not in labelled:
            diag.skipped[task] = f"the population has no {label!r} label (its grid axis is missing)"
            continue
        rows = drop_optimal(labelled, label)
        diag.n_train[task] = len(rows)
        classes = sorted(set(rows[label]))
        if not classes:
            diag.skipped[task] = "every configuration is a tie ('optimal'): nothing to learn"
        elif len(classes) == 1:
            diag.constant[task] = classes[0]
        else:
            cls = TASKS[task]
            if isinstance(bounds, str):
                if bounds not in ("auto", "paper"):
                    raise DiagnosisError(f"bounds must be 'auto', 'paper' or a mapping, got {bounds!r}")
                b = auto_bounds(cls, rows) if bounds == "auto" else None
            else:
                b = bounds.get(task)
            init = None if b is None else [0.5 * (lo + hi) for lo, hi in b]
            diag.trees[task] = cls(bounds=b, init_thresholds=init).fit(rows, rows[label])
    if not diag.trees and not diag.constant:
        raise DiagnosisError(f"no task could be fitted: {diag.skipped}")
    return diag


@dataclass
class Diagnosis:
    """The measured features of a model, the predicted failure source per task and the advice."""

    features: dict[str, float]
    predictions: dict[str, str]
    advice: list[str]
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        f = self.features
        lines = [f"features: train error {f['train_error']:.2f} %, connectivity peak "
                 f"{f['mode_connectivity_peak']:.2f} %, ln Hessian trace {f['hessian_t']:.3f}"
                 + (f", CKA {f['CKA']:.3f}" if "CKA" in f else "")]
        lines += [f"advice: {a}" for a in self.advice]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _load_model(item: Any, config: PopulationConfig):
    """A model of the family from a module, a checkpoint folder or a ``.safetensors`` file (width inferred
    from the first conv's shape)."""
    import torch

    if isinstance(item, torch.nn.Module):
        return item
    from safetensors.torch import load_file

    p = Path(item)
    f = p / "model.safetensors" if p.is_dir() else p
    if not f.is_file() or f.suffix != ".safetensors":
        raise DiagnosisError(f"{item}: expected a checkpoint folder (save_checkpoint) or a .safetensors file of the "
                             f"population's {config.arch} family")
    try:
        state = load_file(str(f))
    except Exception as e:  # safetensors raises its own error types
        raise DiagnosisError(f"{f}: not a safetensors file ({e})") from None
    first = next((k for k, v in state.items() if v.ndim == 4), None)
    if first is None:
        raise DiagnosisError(f"{f}: no convolution weight; not a model of the {config.arch} family")
    c = int(state[first].shape[0])
    width = c // 2 if config.arch == "vgg" else c
    model = _model(config, max(width, 1), 0)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise DiagnosisError(f"{f}: not weights of the {config.arch} family ({str(e).splitlines()[0]})") from None
    return model.eval()


def measure(models: Sequence[Any], config: PopulationConfig, data: float = 1.0, seed: int = 0) -> dict[str, float]:
    """The MD-tree features of a new configuration from two (or more) of its trained models, measured on the
    family's training data at fraction ``data``, exactly as the population's."""
    if len(models) < 2:
        raise DiagnosisError(f"diagnosis needs two models trained the same way with different seeds (the "
                             f"connectivity feature joins them); got {len(models)}")
    loaded = [_load_model(m, config) for m in models]
    shapes = {tuple((k, tuple(v.shape)) for k, v in m.state_dict().items()) for m in loaded}
    if len(shapes) != 1:
        raise DiagnosisError("the models differ in architecture/width; give models of one configuration")
    xtr, ytr, _, _ = _data(config, data)
    per = [model_features(m, xtr, ytr, config, seed=seed + i) for i, m in enumerate(loaded)]
    pair = pair_features(loaded, xtr, ytr, config, seed=seed)
    mean_tr = float(np.mean([p["trace"] for p in per]))
    feats = {"train_error": float(np.mean([p["train_error"] for p in per])),
             "train_loss": float(np.mean([p["train_loss"] for p in per])),
             "hessian_t": _ln_positive(mean_tr, "mean Hessian trace of the models"),
             "mode_connectivity_peak": pair["mode_connectivity_peak"],
             "mode_connectivity": pair["mode_connectivity"]}
    if "CKA" in pair:
        feats["CKA"] = pair["CKA"]
    return feats


def diagnose(models: Sequence[Any], population: str | Path | tuple[pd.DataFrame, PopulationConfig] | None = None,
             *, diagnoser: Diagnoser | None = None, config: PopulationConfig | None = None, data: float = 1.0,
             seed: int = 0) -> Diagnosis:
    """Diagnose a new configuration of the family from two of its trained models (modules, checkpoint
    folders or ``.safetensors`` files): measure its features, apply the trees, and say what to change.

    ``population``: a folder from :func:`build_population` (or ``(frame, config)``); the diagnoser is fitted
    on it unless given. ``data``: the training-data fraction the models were trained on (default 1.0).
    """
    if population is not None:
        frame, cfg = load_population_dir(population) if not isinstance(population, tuple) else population
        config = config or cfg
        if diagnoser is None:
            diagnoser = fit_diagnoser(frame)
    if diagnoser is None or config is None:
        raise DiagnosisError("diagnose needs a population folder, or both diagnoser= and config=")
    feats = measure(models, config, data=data, seed=seed)
    row = pd.DataFrame([feats])
    pred = {k: str(v) for k, v in diagnoser.predict(row).iloc[0].items()}
    advice, notes = [], []
    order = [t for t in ("temperature", "width", "data") if t in pred]
    for task in order:
        text = ADVICE[(task, pred[task])]
        if task in diagnoser.constant:
            text += (f" [every labelled configuration of the population had this label for {task!r}: not a "
                     "fitted decision]")
        advice.append(text)
    for task, why in diagnoser.skipped.items():
        notes.append(f"{task}: not diagnosed ({why})")
    return Diagnosis(feats, pred, advice, notes)


