"""Settings of the three-regime pruning pipeline (:class:`RegimeConfig`, presets ``cpu`` / ``paper``) and of the
regime classifier (:class:`Cutoffs`).

Temperature knobs (set on the dense model before pruning; research notes section 2.1):

* ``epochs``: checkpoints of ONE dense run of ``max(temperatures)`` epochs (its LR schedule is the full run's);
  fewer epochs = hotter.
* ``batch_size``: one dense run per batch size at a fixed number of iterations
  (epochs = ceil(iterations / floor(N / B))); smaller batch = hotter.
* ``sam_rho``: one dense run per SAM radius (:class:`htsr.landscape.SAM` around SGD); larger rho = hotter.

The load knob is the density after one-shot magnitude pruning (the fraction of prunable weights kept).

Preset ``cpu`` (one core of this 2-core machine, < 35 min): PreResNet-8 width 8 (~20 k parameters) on a
stratified 2,000-image Fashion-MNIST subset; dense SGD (lr 0.1, momentum 0.9, wd 1e-4, batch 64, x0.1 at 50 %
and 75 %) for 24 epochs, checkpoints at epochs 3, 6, 12, 24 (the temperatures); densities 0.03, 0.06, 0.12, 0.4;
retraining 12 epochs with the mask fixed (lr 0.1, the same optimizer settings, its own schedule: a full
schedule as in the paper's LR-rewinding style retraining); dense seeds 0, 1 and
retraining seeds 1, 2; mc on 11 points of the linear path on 1,000 training images (BatchNorm re-estimated on
them), CKA on 1,000 training images, test error on the first 2,000 test images.

Preset ``paper`` (a GPU): PreResNet-20 width 16 on all 60,000 Fashion-MNIST images, 160 dense epochs with
checkpoints every 20 (the notes' 10, 20, ..., 160 thinned to 8), lr 0.1, momentum 0.9, wd 1e-4, batch 64,
x0.1 at epochs 80 and 120; densities 5, 6, 7, 8, 10, 14, 20, 40, 80 %; retraining 160 epochs with the same
schedule; dense seeds 1, 2, 3 and retraining seeds 1, 2, 3; test error the mean over the last 5 retraining epochs;
CKA on 101 batches of 64 training images (6,464); mc on 10,000 training images (ours: TRP's count is not in the
notes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from htsr.config import Config, Registry, check_choice, check_positive_int, check_range
from htsr.errors import ConfigError
from htsr.regimes.masks import SCOPES, check_density

#: temperature knobs: whether a *larger* knob value means a hotter (noisier) dense training
KNOBS: dict[str, dict[str, Any]] = {
    "epochs": {"hot_when": "smaller", "raise": "train fewer epochs", "lower": "train more epochs"},
    "batch_size": {"hot_when": "smaller", "raise": "use a smaller batch", "lower": "use a larger batch"},
    "sam_rho": {"hot_when": "larger", "raise": "use a larger SAM rho", "lower": "use a smaller SAM rho"},
}

REGIMES = ("I", "II-A", "II-B")


def check_temperatures(knob: str, values: Any) -> tuple[float, ...]:
    """A temperature grid: >= 2 distinct finite values, valid for the knob (integers >= 1 for epochs and batch
    size, > 0 for rho)."""
    check_choice("knob", knob, tuple(KNOBS))
    vals = tuple(values)
    if len(set(vals)) < 2:
        raise ConfigError(f"a phase diagram needs at least 2 different temperatures, got {list(vals)} "
                          f"(knob {knob})")
    if len(set(vals)) != len(vals):
        raise ConfigError(f"temperatures repeat a value: {list(vals)}")
    for v in vals:
        if knob in ("epochs", "batch_size"):
            if isinstance(v, bool) or float(v) != int(v) or int(v) < 1:
                raise ConfigError(f"{knob} temperatures must be integers >= 1, got {list(vals)}")
        else:
            check_range("sam_rho temperature", v, 0, lo_open=True)
    return vals


@dataclass(frozen=True)
class RegimeConfig(Config):
    """A three-regime sweep: temperature knob and grid, densities, seeds, model, data and optimisation
    (defaults: the ``cpu`` preset)."""

    label = "regimes config"

    knob: str = "epochs"
    temperatures: tuple[float, ...] = (3, 6, 12, 24)
    densities: tuple[float, ...] = (0.03, 0.06, 0.12, 0.4)
    seeds: tuple[int, ...] = (0, 1)  # dense training seeds (initialisation and data order)
    retrain_seeds: tuple[int, ...] = (1, 2)  # >= 2: mc and CKA are measured between these retrained copies
    scope: str = "uniform"  # uniform: one density per layer; global: one magnitude threshold
    # model
    depth: int = 8
    width: int = 8
    # data
    train_size: int = 2000  # stratified Fashion-MNIST training subset (0 = all 60,000)
    test_size: int = 2000  # first N test images (0 = all 10,000)
    metric_size: int = 1000  # training images for mc (path error and BatchNorm re-estimation)
    cka_size: int = 1000  # training images for CKA
    eval_batch_size: int = 500
    # dense training (knob epochs: its epochs are max(temperatures))
    dense_epochs: int = 24  # for knobs batch_size and sam_rho (sam_rho: also the base run's)
    iterations: int = 0  # knob batch_size: fixed number of steps (0 = dense_epochs at batch_size)
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    milestones: tuple[float, ...] = (0.5, 0.75)  # fractions of the run where the lr is multiplied by lr_gamma
    lr_gamma: float = 0.1
    # retraining with the mask fixed
    retrain_epochs: int = 12
    retrain_lr: float = 0.1
    retrain_batch_size: int = 64
    error_epochs: int = 1  # test error = mean over the last N retraining epochs
    mc_points: int = 11
    # execution
    threads: int = 1
    device: str = "cpu"
    data_dir: str | None = None

    def validate(self) -> None:
        temps = check_temperatures(self.knob, self.temperatures)
        if self.knob in ("epochs", "batch_size"):
            object.__setattr__(self, "temperatures", tuple(int(v) for v in temps))
        if not self.densities:
            raise ConfigError("densities is empty; expected values in (0, 1]")
        for d in self.densities:
            check_density(d)
        if len(set(self.densities)) != len(self.densities):
            raise ConfigError(f"densities repeat a value: {list(self.densities)}")
        if not self.seeds:
            raise ConfigError("seeds is empty; expected dense training seeds >= 0")
        for s in (*self.seeds, *self.retrain_seeds):
            check_positive_int("seed", s, 0)
        if len(set(self.retrain_seeds)) < 2:
            raise ConfigError(f"mc and CKA compare retrained copies: retrain_seeds needs >= 2 different seeds, got "
                              f"{list(self.retrain_seeds)}")
        check_choice("scope", self.scope, SCOPES)
        if isinstance(self.depth, bool) or self.depth < 8 or (self.depth - 2) % 6:
            raise ConfigError(f"depth must be 6n + 2 (8, 14, 20, ...), got {self.depth!r}")
        check_positive_int("width", self.width)
        for name in ("train_size", "test_size", "iterations"):
            check_positive_int(name, getattr(self, name), 0)
        for name in ("metric_size", "cka_size", "eval_batch_size", "dense_epochs", "batch_size", "retrain_epochs",
                     "retrain_batch_size", "error_epochs", "threads"):
            check_positive_int(name, getattr(self, name))
        if self.cka_size < 4:
            raise ConfigError(f"cka_size must be >= 4 (CKA needs samples), got {self.cka_size}")
        if self.error_epochs > self.retrain_epochs:
            raise ConfigError(f"error_epochs ({self.error_epochs}) must be <= retrain_epochs ({self.retrain_epochs})")
        check_positive_int("mc_points", self.mc_points, 3)
        check_range("lr", self.lr, 0, lo_open=True)
        check_range("retrain_lr", self.retrain_lr, 0, lo_open=True)
        check_range("momentum", self.momentum, 0, 1, hi_open=True)
        check_range("weight_decay", self.weight_decay, 0)
        for m in self.milestones:
            check_range("milestones", m, 0, 1, lo_open=True, hi_open=True)
        check_range("lr_gamma", self.lr_gamma, 0, 1, lo_open=True)
        for bs, name in ((self.batch_size, "batch_size"), (self.retrain_batch_size, "retrain_batch_size")):
            if self.train_size and self.train_size % bs == 1:
                raise ConfigError(f"train_size {self.train_size} leaves a last batch of one sample at {name} {bs} "
                                  "(BatchNorm cannot train on it); change one of them")

    def identity(self) -> dict[str, Any]:
        """What identifies results (the grid axes and the execution settings removed): a sweep resumes only
        cells of the same identity."""
        d = self.to_dict()
        for k in ("temperatures", "densities", "seeds", "threads", "device", "data_dir"):
            d.pop(k, None)
        return d

    def dense_identity(self) -> dict[str, Any]:
        """What changes a dense model: the dense run's settings, model and data."""
        keys = ("knob", "depth", "width", "train_size", "dense_epochs", "iterations", "batch_size", "lr", "momentum",
                "weight_decay", "milestones", "lr_gamma")
        d = self.to_dict()
        out = {k: d[k] for k in keys}
        if self.knob == "epochs":
            out["run_epochs"] = int(max(self.temperatures))
            out.pop("dense_epochs")
        return out


PRESETS: Registry[dict[str, Any]] = Registry("preset")
PRESETS.add("cpu", {})
PRESETS.add("paper", {
    "knob": "epochs", "temperatures": (20, 40, 60, 80, 100, 120, 140, 160),
    "densities": (0.05, 0.06, 0.07, 0.08, 0.10, 0.14, 0.20, 0.40, 0.80), "seeds": (1, 2, 3),
    "retrain_seeds": (1, 2, 3), "depth": 20, "width": 16, "train_size": 0, "test_size": 0, "metric_size": 10000,
    "cka_size": 6464, "dense_epochs": 160, "iterations": 62400, "batch_size": 64, "lr": 0.1, "momentum": 0.9,
    "weight_decay": 1e-4, "milestones": (0.5, 0.75), "lr_gamma": 0.1, "retrain_epochs": 160, "retrain_lr": 0.1,
    "retrain_batch_size": 64, "error_epochs": 5, "device": "cuda",
})


def preset_config(name: str = "cpu", overrides: dict[str, Any] | None = None, **kw: Any) -> RegimeConfig:
    """A :class:`RegimeConfig` from a preset plus field overrides (unknown keys are errors)."""
    base = dict(PRESETS.get(name))
    base.update(overrides or {})
    base.update(kw)
    return RegimeConfig.from_dict(base)


@dataclass(frozen=True)
class Cutoffs(Config):
    """The regime classifier's cut-offs (the paper does not publish numbers; research notes 2.3).

    A cell is in regime I (poorly connected) when ``mc < mc_threshold`` (mc on train error, a fraction; negative
    = barrier), else in II-A when ``cka < cka_threshold`` (dissimilar outputs), else II-B. The defaults were fitted
    by :func:`htsr.regimes.classify.fit_cutoffs` (Otsu's split of mc, then of CKA among the connected cells) on
    the ``cpu`` experiment of docs/regimes.md (``benchmarks/regimes_cpu_results.csv``): they suit that network
    and data; for another, fit them to its own table (``--fit``)."""

    label = "regime cut-offs"

    mc_threshold: float = -0.073
    cka_threshold: float = 0.977
    cka_column: str = "cka"  # cka (logits) or cka_softmax

    def validate(self) -> None:
        check_range("mc_threshold", self.mc_threshold, -1.0, 1.0)
        check_range("cka_threshold", self.cka_threshold, 0.0, 1.0)
        check_choice("cka_column", self.cka_column, ("cka", "cka_softmax"))
