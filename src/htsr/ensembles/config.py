"""Settings of SharpBalance and its two baselines (deep ensemble, SAM ensemble): one :class:`EnsembleConfig`
whose field defaults are the ``cpu`` preset, a ``paper`` preset with the notes' hyper-parameters, and the
three methods registered by name.

Preset ``cpu`` (this 2-core machine, the whole comparison of 3 methods x 3 seeds x 3 members in < 45 min on
one thread): a stratified 8,000-image subset of the Fashion-MNIST training set, a small ResNet (widths 8-16-32,
one block per stage, 19,810 parameters), 8 epochs with phase 1 = 4 epochs, batch 128, SGD lr 0.05 with a
x0.1 step at 50 % and 75 % of training, SAM radius rho 0.05 (chosen on 5,000 held-out training images, see
docs/sharpbalance.md: the paper's 0.2 costs this small, briefly trained net ~4 points), no augmentation;
evaluation on 2,000 clean test images and 500 test images per corruption x severity; worst-case sharpness on 20
batches of 5 training samples.

Preset ``paper`` (a GPU): ResNet-18 width 64, all 60,000 training images, 200 epochs with phase 1 = 100,
SGD lr 0.1, momentum 0.9, wd 5e-4, batch 128, lr x0.1 at epochs 100 and 150, rho 0.2, k 0.5, random crop
(pad 4) + horizontal flip, the full test set, sharpness on 100 batches of 5 samples with p = 2 and inf.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from htsr.config import Config, Registry, check_choice, check_positive_int, check_range
from htsr.ensembles.split import LEFTOVERS, SELECTS
from htsr.errors import ConfigError

#: the ensemble methods, by name (values: the lineage of phase-1 training and whether phase 2 exists)
METHODS: Registry[dict[str, Any]] = Registry("ensemble method")
METHODS.add("deep_ensemble", {"optimizer": "sgd", "phase2": False,
                              "doc": "each member trained with plain SGD on all data (Lakshminarayanan et al.)"})
METHODS.add("sam_ensemble", {"optimizer": "sam", "phase2": False,
                             "doc": "each member trained with SAM on all data (deep ensemble + SAM)"})
METHODS.add("sharpbalance", {"optimizer": "sam", "phase2": True,
                             "doc": "SAM on all data for initial_epochs, then SAM on the samples the other members "
                                    "find sharpest and SGD on the rest (Lu et al. 2024)"})

ARCHS = ("resnet", "resnet18")
SCHEDULES = ("multistep", "cosine", "constant")
SHARPNESS_P = ("2", "inf")


@dataclass(frozen=True)
class EnsembleConfig(Config):
    """One ensemble's training and evaluation settings (defaults: the ``cpu`` preset)."""

    label = "sharpbalance config"

    method: str = "sharpbalance"
    n_members: int = 3
    # model
    arch: str = "resnet"  # resnet: widths (w, 2w, 4w), 1 block each; resnet18: (w, 2w, 4w, 8w), 2 blocks each
    width: int = 8
    # data
    train_size: int = 8000  # stratified subset of the 60,000 training images (0 = all)
    test_size: int = 2000  # first N test images for in-distribution metrics (0 = all 10,000)
    corrupt_size: int = 500  # first N test images for each corruption x severity (0 = all)
    corruptions: tuple[str, ...] = ()  # () = every family in htsr.ensembles.corruptions.FAMILIES
    severities: tuple[int, ...] = (1, 2, 3, 4, 5)
    augment: bool = False  # random crop (pad 4) + horizontal flip
    # optimisation
    epochs: int = 8
    initial_epochs: int = 4  # T0: SharpBalance's phase 1 (SAM on all data)
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_schedule: str = "multistep"
    milestones: tuple[float, ...] = (0.5, 0.75)  # fractions of `epochs` where the lr is multiplied by lr_gamma
    lr_gamma: float = 0.1
    rho: float = 0.05  # SAM radius (SAM ensemble, phase 1 and the SAM part of phase 2)
    adaptive: bool = False  # ASAM-style adaptive perturbation
    freeze_bn_perturbed: bool = False  # keep BN running stats out of the perturbed pass (the reference does not)
    # SharpBalance split
    k: float = 0.5  # flat_ratio: the fraction of samples each member marks as sharp
    select: str = "top"  # top = the paper (highest scores); bottom = the public code (lowest scores)
    leftover: str = "stride"  # samples nobody marked: stride R[i::M] / complement R minus R[i::M] / none
    score_batch_size: int = 64  # chunk size of the vmap per-sample scorer (the result does not depend on it)
    # evaluation
    ece_bins: int = 15
    sharpness_rho: float = 0.5
    sharpness_p: tuple[str, ...] = ("2",)
    sharpness_batches: int = 20
    sharpness_batch_size: int = 5
    sharpness_iters: int = 20
    eval_batch_size: int = 500
    # execution
    parallel: int = 1  # members trained in this many processes (1 = sequentially, in this process)
    threads: int = 1  # torch threads per member process
    device: str = "cpu"
    data_dir: str | None = None  # Fashion-MNIST files (default: $HTSR_FASHION_MNIST or the Debian package's)
    cache_dir: str | None = None  # corrupted test sets (default: $HTSR_CACHE_DIR or ~/.cache/htsr)

    def validate(self) -> None:
        check_choice("method", self.method, METHODS.names())
        check_positive_int("n_members", self.n_members, 1)
        if self.n_members < 2:
            raise ConfigError(f"an ensemble needs at least 2 members, got n_members={self.n_members}")
        check_choice("arch", self.arch, ARCHS)
        check_positive_int("width", self.width)
        for name in ("train_size", "test_size", "corrupt_size"):
            check_positive_int(name, getattr(self, name), 0)
        for s in self.severities:
            if not isinstance(s, int) or not 1 <= s <= 5:
                raise ConfigError(f"severities must be integers in 1..5, got {list(self.severities)}")
        if not self.severities:
            raise ConfigError("severities is empty; expected some of 1..5")
        check_positive_int("epochs", self.epochs)
        check_positive_int("initial_epochs", self.initial_epochs)
        if self.method == "sharpbalance" and self.initial_epochs >= self.epochs:
            raise ConfigError(f"initial_epochs (phase 1) must be < epochs, got {self.initial_epochs} >= {self.epochs}")
        check_positive_int("batch_size", self.batch_size)
        check_range("lr", self.lr, 0, lo_open=True)
        check_range("momentum", self.momentum, 0, 1, hi_open=True)
        check_range("weight_decay", self.weight_decay, 0)
        check_choice("lr_schedule", self.lr_schedule, SCHEDULES)
        for m in self.milestones:
            check_range("milestones", m, 0, 1, lo_open=True, hi_open=True)
        check_range("lr_gamma", self.lr_gamma, 0, 1, lo_open=True)
        if not (isinstance(self.rho, int | float) and self.rho > 0):
            raise ConfigError(f"rho must be > 0, got {self.rho!r}")
        check_range("rho", self.rho, 0, lo_open=True)  # also rejects inf
        if not (isinstance(self.k, int | float) and 0 < self.k < 1):
            raise ConfigError(f"k must be in the open interval (0, 1), got {self.k!r}")
        check_choice("select", self.select, SELECTS)
        check_choice("leftover", self.leftover, LEFTOVERS)
        check_positive_int("score_batch_size", self.score_batch_size)
        check_positive_int("ece_bins", self.ece_bins)
        check_range("sharpness_rho", self.sharpness_rho, 0, lo_open=True)
        for p in self.sharpness_p:
            check_choice("sharpness_p", p, SHARPNESS_P)
        check_positive_int("sharpness_batches", self.sharpness_batches, 0)
        check_positive_int("sharpness_batch_size", self.sharpness_batch_size)
        check_positive_int("sharpness_iters", self.sharpness_iters)
        check_positive_int("eval_batch_size", self.eval_batch_size)
        check_positive_int("parallel", self.parallel)
        check_positive_int("threads", self.threads)
        if self.corruptions:
            from htsr.ensembles.corruptions import FAMILIES

            for c in self.corruptions:
                check_choice("corruption", c, FAMILIES)

    @property
    def method_spec(self) -> dict[str, Any]:
        return METHODS.get(self.method)

    def training_id(self) -> str:
        """A hash of everything that changes a member's trained weights (not the method: the lineages
        ``sgd``/``sam``/``sharpbalance`` are kept apart by directory, so SharpBalance's phase 1 can reuse
        the SAM ensemble's first ``initial_epochs`` epochs, which are the same computation)."""
        from htsr.experiments.store import config_id

        keys = ("n_members", "arch", "width", "train_size", "augment", "epochs", "batch_size", "lr", "momentum",
                "weight_decay", "lr_schedule", "milestones", "lr_gamma", "rho", "adaptive", "freeze_bn_perturbed")
        d = self.to_dict()
        return config_id({k: d[k] for k in keys})


PRESETS: Registry[dict[str, Any]] = Registry("preset")
PRESETS.add("cpu", {})
PRESETS.add("paper", {
    "arch": "resnet18", "width": 64, "train_size": 0, "test_size": 0, "corrupt_size": 0, "augment": True,
    "epochs": 200, "initial_epochs": 100, "batch_size": 128, "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4,
    "lr_schedule": "multistep", "milestones": (0.5, 0.75), "lr_gamma": 0.1, "rho": 0.2, "k": 0.5,
    "score_batch_size": 16, "sharpness_p": ("2", "inf"), "sharpness_batches": 100, "device": "cuda",
})


def preset_config(name: str = "cpu", overrides: dict[str, Any] | None = None, **kw: Any) -> EnsembleConfig:
    """An :class:`EnsembleConfig` from a preset name plus field overrides (unknown keys are errors)."""
    base = dict(PRESETS.get(name))
    base.update(overrides or {})
    base.update(kw)
    return EnsembleConfig.from_dict(base)
