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

from dataclasses import dataclass
from typing import Any, ClassVar

from htsr.config import Config, Registry, check_choice, check_positive_int, check_range
from htsr.errors import ConfigError

__all__ = ["TASK_LABELS", "TASK_NAMES", "OWN_TASKS", "BOUNDS_MODES", "TreeConfig", "DiagnoserConfig",
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


@dataclass(frozen=True)
class PopulationConfig(Config):
    """An own population: the grid (widths x batch sizes x data fractions, each trained at every seed) and how
    each model is trained and measured. Everything but the grid is the *recipe* (:meth:`recipe`), whose hash
    keys the stored rows."""

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

    @property
    def n_configs(self) -> int:
        """Configurations in the grid (each trained at every seed)."""
        return len(self.widths) * len(self.batch_sizes) * len(self.data_fractions)

    def recipe(self) -> dict[str, Any]:
        """The training/measurement settings (everything but the grid): what a stored row depends on."""
        d = self.to_dict()
        for k in _GRID_AXES:
            d.pop(k)
        return d

    def recipe_id(self) -> str:
        """A short hash of :meth:`recipe` (part of every stored row's key)."""
        from htsr.experiments.store import config_id

        return config_id(self.recipe())


#: Named grids. ``small``: 3 widths x 3 batch sizes x 2 data fractions x 2 seeds (36 trainings; about 10-15
#: minutes on 2 CPU cores; the benchmark); ``tiny``: 2 x 2 x 1 x 2 with short training (tests, smoke runs).
GRIDS: Registry[PopulationConfig] = Registry("population grid")
GRIDS.add("small", PopulationConfig())
GRIDS.add("tiny", PopulationConfig(widths=(1, 4), batch_sizes=(32, 256), data_fractions=(0.25,), epochs=2,
                                   curve_epochs=2, hessian_iters=20, cka_batches=2))
