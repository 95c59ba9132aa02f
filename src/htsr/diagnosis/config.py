"""The settings of MD-tree diagnosis, each default stated once (``htsr.config.Config``):

* :class:`TreeConfig`: how an MD tree's thresholds are searched (``htsr mdtree fit --set``);
* :class:`DiagnoserConfig`: which trees are fitted on an own population, and their search bounds
  (``htsr mdtree diagnose --set``);
* :class:`PopulationConfig`: an own population's grid and its training/measurement recipe
  (``htsr mdtree population --set``), with the named grids in :data:`GRIDS`.

The task names and their label columns live here too, so the command line knows them without importing
scikit-learn.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

from htsr.config import Config, Registry, check_choice, check_positive_int, check_range
from htsr.errors import ConfigError

__all__ = ["TASK_LABELS", "TASK_NAMES", "OWN_TASKS", "BOUNDS_MODES", "DATASETS", "TreeConfig", "DiagnoserConfig",
           "PopulationConfig", "GRIDS"]

#: The label column each task predicts (as in the MD population), by task name (``--task``, JSON ``estimator``).
TASK_LABELS: dict[str, str] = {"temperature": "bs_failure", "temperature-cka": "bs_failure",
                               "width": "width_vs_batch", "data": "data_vs_batch"}
TASK_NAMES: tuple[str, ...] = tuple(sorted(TASK_LABELS))
#: The tasks diagnosed from an own population (the CKA variant is not fitted there).
OWN_TASKS: tuple[str, ...] = ("temperature", "width", "data")
#: How a diagnoser's threshold search bounds are chosen: the population's observed ranges, or the paper's units.
BOUNDS_MODES: tuple[str, ...] = ("auto", "paper")


@dataclass(frozen=True)
class TreeConfig(Config):
    """Options of the bounded scalar search that fits each MD-tree threshold (scipy's defaults, as the
    reference code): absolute tolerance ``xatol`` and at most ``maxiter`` iterations per threshold."""

    label: ClassVar[str] = "the MD-tree fit"

    xatol: float = 1e-5
    maxiter: int = 500

    def validate(self) -> None:
        check_range("xatol", self.xatol, 0.0, lo_open=True)
        check_positive_int("maxiter", self.maxiter)


@dataclass(frozen=True)
class DiagnoserConfig(TreeConfig):
    """Fitting the trees of a diagnoser on an own population: the ``tasks``, the threshold ``bounds``
    (``auto``: each threshold searched over its feature's observed range; ``paper``: the paper's units) and the
    ``score`` whose room for improvement labels the grid."""

    label: ClassVar[str] = "the diagnoser"

    tasks: tuple[str, ...] = OWN_TASKS
    bounds: str = "auto"
    score: str = "test_acc"

    def validate(self) -> None:
        super().validate()
        if not self.tasks:
            raise ConfigError(f"tasks must name at least one of {', '.join(OWN_TASKS)}")
        for t in self.tasks:
            check_choice("task", t, OWN_TASKS)
        check_choice("bounds", self.bounds, BOUNDS_MODES)
        if not self.score:
            raise ConfigError("score must name a column (e.g. test_acc)")


_GRID_AXES = ("widths", "batch_sizes", "data_fractions")
#: The data sets a population can be trained on (:mod:`htsr.diagnosis.family`).
DATASETS: tuple[str, ...] = ("digits", "fashion-mnist")
#: Recipe fields added after the first populations were stored, with the value those populations had: left out
#: of :meth:`PopulationConfig.recipe` at that value, so the stored rows of a digits population keep their key.
_LATER_FIELDS: dict[str, Any] = {"dataset": "digits", "pool": 0, "test_images": 0, "downsample": 1, "device": "cpu",
                                  "label_noise": 0.0}


@dataclass(frozen=True)
class PopulationConfig(Config):
    """An own population: the grid (widths x batch sizes x data fractions, each trained at every seed) and how
    each model is trained and measured. Everything but the grid is the *recipe* (:meth:`recipe`), whose hash
    keys the stored rows.

    ``dataset``: ``digits`` (scikit-learn's 1,797 8x8 digits; ``test_size``/``split_seed`` hold out the test
    set) or ``fashion-mnist`` (the official 60,000/10,000 split; ``pool`` > 0 first draws a stratified pool of
    that many training images with ``subset_seed``, and the data fractions are fractions of the pool;
    ``test_images`` > 0 keeps the first that many test images; ``downsample`` 2 or 4 average-pools the 28x28
    images to 14x14 or 7x7, which cuts the convolutions' cost by that factor squared). ``device``: where each
    configuration is trained and measured (``cpu``, ``cuda``, ``cuda:N``); part of the recipe, since a GPU's
    rows differ from the CPU's in the last digits. ``label_noise``: the fraction of training labels replaced by
    another class (the paper's noisy population F' uses 0.1), drawn with ``subset_seed``; test labels stay clean."""

    label: ClassVar[str] = "the population"

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
    dataset: str = "digits"
    pool: int = 0
    test_images: int = 0
    downsample: int = 1
    device: str = "cpu"
    label_noise: float = 0.0

    def validate(self) -> None:
        from htsr.models.vision import ARCHS

        for name in (*_GRID_AXES, "seeds"):
            if not getattr(self, name):
                raise ConfigError(f"{name} must be a non-empty list")
        for w in self.widths:
            check_positive_int("widths", w)
        for b in self.batch_sizes:
            check_positive_int("batch_sizes", b)
        for d in self.data_fractions:
            check_range("data_fractions", d, 0.0, 1.0, lo_open=True)
        for s in self.seeds:
            check_positive_int("seeds", s, minimum=0)
        if len(set(self.seeds)) < 2:
            raise ConfigError(f"seeds needs >= 2 distinct seeds (the Bezier curve joins the first two), got "
                              f"{list(self.seeds)}")
        check_choice("arch", self.arch, ARCHS)
        for name in ("epochs", "curve_epochs", "curve_batch_size", "hessian_samples", "hessian_iters",
                     "cka_batches", "cka_batch_size"):
            check_positive_int(name, getattr(self, name))
        check_positive_int("split_seed", self.split_seed, minimum=0)
        check_positive_int("subset_seed", self.subset_seed, minimum=0)
        for name in ("lr", "curve_lr", "hessian_tol"):
            check_range(name, getattr(self, name), 0.0, lo_open=True)
        check_range("momentum", self.momentum, 0.0, 1.0, hi_open=True)
        check_range("weight_decay", self.weight_decay, 0.0)
        check_range("test_size", self.test_size, 0.0, 1.0, lo_open=True, hi_open=True)
        check_choice("dataset", self.dataset, DATASETS)
        check_positive_int("pool", self.pool, minimum=0)
        check_positive_int("test_images", self.test_images, minimum=0)
        check_choice("downsample", self.downsample, (1, 2, 4))
        check_range("label_noise", self.label_noise, 0.0, 1.0, hi_open=True)
        if not (isinstance(self.device, str) and re.fullmatch(r"cpu|cuda(:\d+)?", self.device)):
            raise ConfigError(f"device must be cpu, cuda or cuda:N, got {self.device!r}")
        if self.dataset == "digits":
            odd = [f"{k}={getattr(self, k)}" for k in ("pool", "test_images", "downsample")
                   if getattr(self, k) != _LATER_FIELDS[k]]
            if odd:
                raise ConfigError(f"{', '.join(odd)} apply to dataset=fashion-mnist only (digits uses test_size "
                                  "and split_seed); drop them or set dataset=fashion-mnist")
        elif self.pool:
            check_positive_int("pool", self.pool, minimum=100)

    @property
    def n_configs(self) -> int:
        """Configurations in the grid (each trained at every seed)."""
        return len(self.widths) * len(self.batch_sizes) * len(self.data_fractions)

    def recipe(self) -> dict[str, Any]:
        """The training/measurement settings (everything but the grid): what a stored row depends on."""
        d = self.to_dict()
        for k in _GRID_AXES:
            d.pop(k)
        for k, first in _LATER_FIELDS.items():
            if d[k] == first:
                d.pop(k)
        return d

    def recipe_id(self) -> str:
        """A short hash of :meth:`recipe` (part of every stored row's key)."""
        from htsr.experiments.store import config_id

        return config_id(self.recipe())


#: Named grids. ``small``: 3 widths x 3 batch sizes x 2 data fractions x 2 seeds (36 trainings; about 10-15
#: minutes on 2 CPU cores; the benchmark); ``tiny``: 2 x 2 x 1 x 2 with short training (tests, smoke runs).
#: ``fashion``: 96 configurations on Fashion-MNIST at reduced scale for a 2-core CPU (a 2,000-image pool,
#: 28x28 images, 2,000 test images); ``fashion-full``: the paper-scale grid (all 60,000 images at 28x28, 144
#: configurations, 5 seeds, 40 epochs) on a GPU (``device=cuda``; ``--set device=cpu`` for a Ray cluster);
#: ``fashion-noisy``: ``fashion`` with 10 % label noise (the paper's F', for dataset transfer); ``fashion-tiny``: a
#: smoke run.
GRIDS: Registry[PopulationConfig] = Registry("population grid")
GRIDS.add("small", PopulationConfig())
GRIDS.add("tiny", PopulationConfig(widths=(1, 4), batch_sizes=(32, 256), data_fractions=(0.25,), epochs=2,
                                   curve_epochs=2, hessian_iters=20, cka_batches=2))
GRIDS.add("fashion", PopulationConfig(dataset="fashion-mnist", pool=2000, test_images=2000,
                                     widths=(1, 2, 4, 8), batch_sizes=(16, 32, 64, 128, 256, 512),
                                     data_fractions=(0.125, 0.25, 0.5, 1.0), epochs=10, curve_epochs=5,
                                     hessian_iters=50))
GRIDS.add("fashion-noisy", GRIDS.get("fashion").replace(label_noise=0.1))
GRIDS.add("fashion-full", PopulationConfig(dataset="fashion-mnist", widths=(1, 2, 4, 8, 16, 32),
                                          batch_sizes=(16, 32, 64, 128, 256, 512),
                                          data_fractions=(0.1, 0.2, 0.5, 1.0), seeds=(0, 1, 2, 3, 4), epochs=40,
                                          curve_epochs=20, device="cuda"))
GRIDS.add("fashion-tiny", PopulationConfig(dataset="fashion-mnist", pool=500, test_images=300, downsample=2,
                                          widths=(1, 2), batch_sizes=(64,), data_fractions=(1.0,), epochs=3,
                                          curve_epochs=1, hessian_iters=10, cka_batches=2))
