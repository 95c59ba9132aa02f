"""Runnable comparisons of TempBalance against the same training without it, on CPU-sized real problems.

Each recipe is a dataclass of hyper-parameters whose :meth:`run` trains one (method, fraction, seed) cell
through the shared loop (:func:`htsr.training.train`) and returns ``(metrics, details)``; the baseline and
TempBalance runs share data, initialisation, optimizer and base schedule and differ only by the per-layer
multipliers. ``method`` is ``"baseline"`` or ``"tb"``.

* ``digits``: image classification from scratch, small ResNet on scikit-learn's 8x8 digits; SGD + momentum,
  cosine schedule; TB as in NeurIPS'23 (linear map 0.5..1.5, alpha with median xmin, first/last layer out,
  BN follows its conv).
* ``minilm``: low-data fine-tuning of the pretrained all-MiniLM-L6-v2 + a linear head, classifying KJV verses
  by genre (8 balanced classes); AdamW with decay / no-decay groups, 6% warmup + linear decay; TB as in
  EMNLP'24 (block-averaged alpha, xmin_pos 1.5, sigmoid map, T = 10, classifier out).
* ``burgers``: a 1-D FNO learning u0 -> u(1) of viscous Burgers from solver-generated data; Adam, StepLR,
  relative-L2 loss, test nRMSE; TB as in EMNLP'24's SciML code (per layer, Linear + 1x1 Conv1d, zero
  eigenvalues filtered, >= 12 eigenvalues, sigmoid map).

Every recipe is a :class:`~htsr.config.Config` (frozen, typed, unknown keys rejected: ``--set epochs=abc`` or
``--set epoch=3`` is an error before any training). Every cell is seeded: data subset, initialisation, batch order
and dropout (the global torch RNG is forked and restored around each run, so running a cell leaves no trace on the
caller's random state). :func:`run_comparison` runs the grid through :func:`htsr.experiments.run_sweep` with the
module-level cell function :func:`recipe_cell` (plain JSON-able parameters), one configuration per directory.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from htsr.config import Config, check_choice, check_positive_int, check_range
from htsr.errors import ConfigError
from htsr.tempbalance.config import TempBalanceConfig
from htsr.tempbalance.scheduler import TempBalance, TempBalanceCallback
from htsr.training import evaluate, seeded_loader, train

log = logging.getLogger(__name__)

METHODS = ("baseline", "tb")


def epochs_for(epochs: int, min_steps: int, steps_per_epoch: int) -> int:
    """``epochs``, raised so that training takes at least ``min_steps`` optimizer steps (tiny fractions would
    otherwise stop after a handful of steps)."""
    return max(epochs, math.ceil(min_steps / max(1, steps_per_epoch)))


def _fit(model: nn.Module, loader: Any, optimizer: torch.optim.Optimizer, base: Any, *, method: str,
         epochs: int, tb_config: TempBalanceConfig, loss_fn: Any = None, grad_clip: float | None = None
         ) -> tuple[Any, TempBalance | None, float]:
    """Train with the base schedule stepped every optimizer step, plus TempBalance when ``method == "tb"``;
    returns (train result, scheduler or None, seconds spent building TempBalance)."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    t0 = time.perf_counter()
    if method == "tb":
        tb = TempBalance(model, optimizer, base_scheduler=base, config=tb_config)
        callbacks, sched = [TempBalanceCallback(tb, every="step")], None
    else:
        tb, callbacks, sched = None, [], base(optimizer)
    build = time.perf_counter() - t0
    res = train(model, loader, optimizer, loss_fn=loss_fn, epochs=epochs, scheduler=sched,
                scheduler_interval="step", callbacks=callbacks, grad_clip=grad_clip, progress=False)
    return res, tb, build


def _details(res: Any, tb: TempBalance | None) -> dict[str, Any]:
    hist = res.history.drop(columns=[c for c in ("lr",) if c in res.history.columns])
    return {"history": hist.to_dict("records"), "tb_history": tb.history.to_dict("records") if tb else [],
            "tb_excluded": dict(tb.excluded_) if tb else {}}


def _timing(res: Any, tb: TempBalance | None, build_s: float) -> dict[str, float]:
    train_s = res.state.train_time_s + build_s
    tb_s = tb.metric_time_s if tb is not None else 0.0
    return {"train_time_s": train_s, "tb_time_s": tb_s, "tb_overhead": tb_s / train_s if train_s > 0 else math.nan,
            "tb_updates": tb.n_updates if tb is not None else 0, "steps": res.state.step}


def _image_cell(r: Any, model: nn.Module, data: tuple, method: str, seed: int
                ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The image recipes' cell: SGD (the recipe's lr, momentum, weight decay) with cosine over every step, the
    baseline or TempBalance, then test accuracy and loss."""
    xtr, ytr, xte, yte = data
    loader = seeded_loader(xtr, ytr, r.batch_size, seed)
    opt = torch.optim.SGD(model.parameters(), lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay)
    epochs = epochs_for(r.epochs, r.min_steps, len(loader))
    total = epochs * len(loader)

    def base(o: torch.optim.Optimizer) -> Any:
        return torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=total)

    res, tb, build = _fit(model, loader, opt, base, method=method, epochs=epochs, tb_config=r.tb_config())
    ev = evaluate(model, [(xte, yte)])
    metrics = {"accuracy": ev["accuracy"], "test_loss": ev["loss"], "n_train": int(ytr.numel()),
               **_timing(res, tb, build)}
    return metrics, _details(res, tb)


@dataclass(frozen=True)
class Recipe(Config):
    """Base of the recipes: ``name``, ``score`` (the metric compared), ``higher_is_better``, ``fractions``; the
    fields are the recipe's hyper-parameters (their defaults the recipe's)."""

    name: ClassVar[str] = ""
    score: ClassVar[str] = ""
    higher_is_better: ClassVar[bool] = True
    fractions: ClassVar[tuple[float, ...]] = ()
    #: fields that must be integers >= 1 / numbers > 0 / numbers >= 0
    _positive_ints: ClassVar[tuple[str, ...]] = ("epochs", "batch_size", "interval")
    _positive: ClassVar[tuple[str, ...]] = ("lr",)
    _nonneg: ClassVar[tuple[str, ...]] = ("weight_decay", "min_steps")

    def config(self) -> dict[str, Any]:
        """The hyper-parameters as a JSON-able dict."""
        return self.to_dict()

    def validate(self) -> None:
        for f in self._positive_ints:
            check_positive_int(f, getattr(self, f))
        for f in self._positive:
            check_range(f, getattr(self, f), 0, lo_open=True)
        for f in self._nonneg:
            check_range(f, getattr(self, f), 0)
        self.tb_config()  # the TempBalance settings are checked now, not when the first 'tb' cell starts

    def tb_config(self) -> TempBalanceConfig:
        """The TempBalance settings of this recipe's ``tb`` cells."""
        raise NotImplementedError

    def run(self, method: str, fraction: float, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
        check_choice("method", method, METHODS)
        if not (isinstance(fraction, int | float) and 0 < fraction <= 1):
            raise ConfigError(f"fraction must be in (0, 1], got {fraction}")
        check_positive_int("seed", seed, minimum=0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed) + 7919)  # dropout and any module randomness, scoped to this cell
            return self._run(method, float(fraction), int(seed))

    def _run(self, method: str, fraction: float, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
        raise NotImplementedError


@dataclass(frozen=True)
class DigitsRecipe(Recipe):
    """Small ResNet (or VGG) from scratch on 8x8 digits. Defaults: 1,258-image pool / 539 test, 15 epochs but
    at least 200 steps, batch 32, SGD lr 0.05, momentum 0.9, wd 5e-4, cosine over all steps; TB every 40 steps
    (about one epoch on the full pool)."""

    name: ClassVar[str] = "digits"
    label: ClassVar[str] = "the digits recipe"
    score: ClassVar[str] = "accuracy"
    higher_is_better: ClassVar[bool] = True
    fractions: ClassVar[tuple[float, ...]] = (1.0, 0.2, 0.05)

    arch: str = "resnet"
    width: int = 16
    epochs: int = 15
    min_steps: int = 200
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    mapping: str = "linear"
    metric: str = "alpha"
    s1: float = 0.5
    s2: float = 1.5
    interval: int = 40
    test_size: float = 0.3

    def validate(self) -> None:
        check_choice("arch", self.arch, ("resnet", "vgg"))
        check_positive_int("width", self.width)
        check_range("test_size", self.test_size, 0, 1, lo_open=True, hi_open=True)
        super().validate()

    def tb_config(self) -> TempBalanceConfig:
        return TempBalanceConfig(mapping=self.mapping, metric=self.metric, s1=self.s1, s2=self.s2,
                                 interval=self.interval)

    def _run(self, method: str, fraction: float, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
        from htsr.data.digits import digits_split
        from htsr.models.vision import make_vision_model

        xtr, ytr, xte, yte = digits_split(fraction, seed, test_size=self.test_size)
        return _image_cell(self, make_vision_model(self.arch, width=self.width, seed=seed), (xtr, ytr, xte, yte),
                           method, seed)


@dataclass(frozen=True)
class MiniLMRecipe(Recipe):
    """Fine-tune the pretrained all-MiniLM-L6-v2 on KJV genre classification (8 classes; pool 256 verses,
    test 240, balanced). Defaults: 3 epochs but at least 24 steps, batch 8, max 64 tokens, AdamW lr 5e-5, wd
    0.01 (not on biases/LayerNorm), 6% warmup + linear decay per step; TB: blocks, sigmoid map
    s_min = s_max = 1, T = 10, alpha at xmin_pos 1.5, recomputed every 25 steps, rates re-applied every step."""

    name: ClassVar[str] = "minilm"
    label: ClassVar[str] = "the minilm recipe"
    score: ClassVar[str] = "accuracy"
    higher_is_better: ClassVar[bool] = True
    fractions: ClassVar[tuple[float, ...]] = (1.0, 0.25, 0.125)

    task: str = "genre"
    n_pool: int = 256
    n_test: int = 240
    epochs: int = 3
    min_steps: int = 24
    batch_size: int = 8
    max_length: int = 64
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    mapping: str = "sigmoid"
    metric: str = "alpha"
    unit: str = "block"
    s_min: float = 1.0
    s_max: float = 1.0
    temperature: float = 10.0
    xmin_pos: float = 1.5
    interval: int = 25
    _positive_ints: ClassVar[tuple[str, ...]] = ("epochs", "batch_size", "interval", "n_pool", "n_test",
                                                 "max_length")

    def validate(self) -> None:
        from htsr.data.text import LABELS

        check_choice("task", self.task, LABELS)
        check_range("warmup_ratio", self.warmup_ratio, 0, 1)
        check_range("xmin_pos", self.xmin_pos, 1, lo_open=True)
        super().validate()

    def tb_config(self) -> TempBalanceConfig:
        return TempBalanceConfig(mapping=self.mapping, metric=self.metric, unit=self.unit, s_min=self.s_min,
                                 s_max=self.s_max, temperature=self.temperature, interval=self.interval,
                                 exclude_first=False, exclude_last=True,
                                 analysis_options={"xmin_pos": self.xmin_pos})

    def _run(self, method: str, fraction: float, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
        from htsr.data.text import TokenizedBatches, kjv_classification_split
        from htsr.models.text import load_minilm_classifier

        tr_x, tr_y, te_x, te_y, classes = kjv_classification_split(
            fraction, seed, label=self.task, n_pool=self.n_pool, n_test=self.n_test)
        model, tok = load_minilm_classifier(len(classes), seed=seed)
        train_b = TokenizedBatches(tr_x, tr_y, tok, batch_size=self.batch_size, max_length=self.max_length,
                                   seed=seed)
        test_b = TokenizedBatches(te_x, te_y, tok, batch_size=64, max_length=self.max_length, shuffle=False)
        opt = torch.optim.AdamW(decay_groups(model, self.weight_decay), lr=self.lr)
        epochs = epochs_for(self.epochs, self.min_steps, len(train_b))
        total = epochs * len(train_b)
        warm = math.ceil(self.warmup_ratio * total)

        def base(o: torch.optim.Optimizer) -> Any:
            return linear_warmup_decay(o, warm, total)

        res, tb, build = _fit(model, train_b, opt, base, method=method, epochs=epochs, tb_config=self.tb_config())
        acc = evaluate(model, test_b)["accuracy"]
        metrics = {"accuracy": acc, "n_train": len(tr_y), **_timing(res, tb, build)}
        return metrics, _details(res, tb)


@dataclass(frozen=True)
class BurgersRecipe(Recipe):
    """1-D FNO (16 modes, width 32) on viscous Burgers (nu = 0.05, 64-point grid from a 128-point solver;
    pool 256, test 128). Defaults: 30 epochs but at least 240 steps, batch 16, Adam lr 1e-3, wd 1e-4, StepLR
    halving 4 times over training, relative-L2 loss; TB per layer, sigmoid s_min = s_max = 0.5, every 50
    steps."""

    name: ClassVar[str] = "burgers"
    label: ClassVar[str] = "the burgers recipe"
    score: ClassVar[str] = "nrmse"
    higher_is_better: ClassVar[bool] = False
    fractions: ClassVar[tuple[float, ...]] = (1.0, 0.25, 0.0625)

    n_pool: int = 256
    n_test: int = 128
    n_grid: int = 64
    solver_grid: int = 128
    nu: float = 0.05
    modes: int = 16
    width: int = 32
    epochs: int = 30
    min_steps: int = 240
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    mapping: str = "sigmoid"
    metric: str = "alpha"
    s_min: float = 0.5
    s_max: float = 0.5
    temperature: float = 10.0
    interval: int = 50
    _positive_ints: ClassVar[tuple[str, ...]] = ("epochs", "batch_size", "interval", "n_pool", "n_test", "n_grid",
                                                 "solver_grid", "modes", "width")
    _positive: ClassVar[tuple[str, ...]] = ("lr", "nu")

    def tb_config(self) -> TempBalanceConfig:
        return TempBalanceConfig(mapping=self.mapping, metric=self.metric, s_min=self.s_min, s_max=self.s_max,
                                 temperature=self.temperature, interval=self.interval,
                                 analysis_options={"kinds": ("linear", "conv1d"), "threshold": 1e-5, "min_evals": 12})

    def _run(self, method: str, fraction: float, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
        from htsr.data.burgers import burgers_split, nrmse
        from htsr.models.fno import make_fno

        xtr, ytr, xte, yte = burgers_split(fraction, seed, n_pool=self.n_pool, n_test=self.n_test,
                                           n_grid=self.n_grid, solver_grid=self.solver_grid, nu=self.nu)
        loader = seeded_loader(xtr, ytr, self.batch_size, seed)
        model = make_fno(modes=self.modes, width=self.width, seed=seed)
        opt = torch.optim.Adam(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        epochs = epochs_for(self.epochs, self.min_steps, len(loader))
        total = epochs * len(loader)

        def base(o: torch.optim.Optimizer) -> Any:
            return torch.optim.lr_scheduler.StepLR(o, step_size=max(1, total // 5), gamma=0.5)

        res, tb, build = _fit(model, loader, opt, base, method=method, epochs=epochs, tb_config=self.tb_config(),
                              loss_fn=relative_l2_loss)
        model.eval()
        with torch.no_grad():
            err = nrmse(model(xte), yte)
        metrics = {"nrmse": err, "n_train": int(xtr.shape[0]), **_timing(res, tb, build)}
        return metrics, _details(res, tb)


@dataclass(frozen=True)
class FashionRecipe(Recipe):
    """A ResNet-18-layout network (4 stages of 2 basic blocks, widths w, 2w, 4w, 8w; 3x3 stem, global average
    pool) from scratch on real Fashion-MNIST images (Debian package ``dataset-fashion-mnist``), sized for a 2-core
    CPU: a fixed stratified pool of ``n_pool`` training images (the same for every cell) of which each cell takes a
    stratified ``fraction`` (drawn with its seed), the first ``n_test`` test images. Defaults: width 8, 8 epochs
    but at least 150 steps, batch 64, SGD lr 0.05, momentum 0.9, wd 5e-4, cosine over all steps; TempBalance as
    the reference (linear map, s1 0.5, s2 1.5, BatchNorm paired with its conv by name) recomputed every 32 steps
    (one epoch of the full pool, the reference's once-per-epoch cadence)."""

    name: ClassVar[str] = "fashion"
    label: ClassVar[str] = "the fashion recipe"
    score: ClassVar[str] = "accuracy"
    higher_is_better: ClassVar[bool] = True
    fractions: ClassVar[tuple[float, ...]] = (1.0, 0.5, 0.1, 0.02)

    width: int = 8
    blocks: int = 2
    n_pool: int = 2000
    n_test: int = 2000
    epochs: int = 8
    min_steps: int = 150
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    mapping: str = "linear"
    metric: str = "alpha"
    s1: float = 0.5
    s2: float = 1.5
    interval: int = 32
    _positive_ints: ClassVar[tuple[str, ...]] = ("epochs", "batch_size", "interval", "width", "blocks", "n_pool",
                                                 "n_test")

    def validate(self) -> None:
        if self.n_pool > 60000 or self.n_test > 10000:
            raise ConfigError(f"Fashion-MNIST has 60,000 training and 10,000 test images; got n_pool={self.n_pool}, "
                              f"n_test={self.n_test}")
        super().validate()

    def tb_config(self) -> TempBalanceConfig:
        return TempBalanceConfig(mapping=self.mapping, metric=self.metric, s1=self.s1, s2=self.s2,
                                 interval=self.interval)

    def _run(self, method: str, fraction: float, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
        import numpy as np

        from htsr.data.digits import stratified_subset
        from htsr.data.fashion_mnist import fashion_mnist_split
        from htsr.models.vision import SmallResNet, seeded_init

        xtr, ytr, xte, yte = fashion_mnist_split(self.n_pool / 60000, seed=0, test_limit=self.n_test)
        if fraction < 1:
            idx = torch.from_numpy(stratified_subset(ytr.numpy(), fraction, np.random.default_rng([seed, 11])))
            xtr, ytr = xtr[idx], ytr[idx]
        w = self.width
        with seeded_init(seed):
            model = SmallResNet(1, 10, widths=(w, 2 * w, 4 * w, 8 * w), blocks=(self.blocks,) * 4)
        return _image_cell(self, model, (xtr, ytr, xte, yte), method, seed)


RECIPES: dict[str, type[Recipe]] = {r.name: r for r in (DigitsRecipe, MiniLMRecipe, BurgersRecipe, FashionRecipe)}


# ---------------------------------------------------------------------------- helpers shared by recipes
def relative_l2_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """FNO's training loss: mean over the batch of ``||pred - y|| / ||y||``."""
    x, y = batch
    pred = model(x)
    return (torch.linalg.vector_norm(pred - y, dim=-1) / torch.linalg.vector_norm(y, dim=-1).clamp_min(1e-12)).mean()


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups as Hugging Face builds them: weight decay on weight matrices, none on biases and norms."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def linear_warmup_decay(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> Any:
    """Linear warmup to the base rate over ``warmup`` steps, then linear decay to 0 at ``total`` (HF's 'linear')."""

    def f(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, f)


def get_recipe(name: str, **overrides: Any) -> Recipe:
    """A recipe by name with field overrides (unknown names and values of the wrong type are errors)."""
    check_choice("recipe", name, RECIPES)
    return RECIPES[name].from_dict(overrides)


def run_cell(recipe: str | Recipe, method: str, fraction: float, seed: int, **overrides: Any
             ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train one cell of a recipe: ``(metrics, details)``."""
    r = get_recipe(recipe, **overrides) if isinstance(recipe, str) else recipe
    return r.run(method, fraction, seed)


def recipe_cell(*, recipe: str, config: dict[str, Any], method: str, fraction: float, seed: int
                ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The sweep's cell function: module-level, plain JSON-able parameters (any executor can run it)."""
    return get_recipe(recipe, **config).run(method, fraction, seed)


def config_file(out_dir: str | Path, recipe: str) -> Path:
    """Where a comparison directory records the configuration of a recipe's rows."""
    return Path(out_dir) / f"config_{recipe}.json"


def _stored_config(out_dir: Path, recipe: str, cid: str) -> dict[str, Any] | None:
    """The configuration recorded for ``recipe`` in ``out_dir`` when it differs from ``cid`` (else None)."""
    from htsr.experiments import ResultStore
    from htsr.experiments.store import config_id

    rows = [r for r in ResultStore(out_dir).rows if r.get("recipe") == recipe]
    ids = {str(r.get("config_id")) for r in rows}
    f = config_file(out_dir, recipe)
    old: dict[str, Any] | None = None
    if f.is_file():
        try:
            old = json.loads(f.read_text()).get("config")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            old = None
        if isinstance(old, dict):
            ids.add(config_id(old))
    ids.discard(cid)
    if not ids:
        return None
    return old if isinstance(old, dict) else {}


def run_comparison(recipe: str | Recipe, out_dir: str | Path, *, fractions: tuple[float, ...] | None = None,
                   seeds: tuple[int, ...] = (0, 1, 2, 3, 4), methods: tuple[str, ...] = METHODS,
                   progress: bool | None = None, overwrite: bool = False, executor: Any = None,
                   **overrides: Any):
    """Run (or resume) the grid methods x fractions x seeds of a recipe into ``out_dir``; returns the table.

    A directory holds one configuration per recipe: re-running with the same settings resumes (finished cells are
    kept), while other settings are refused, so two configurations are never pooled as if they were seeds;
    ``overwrite=True`` replaces the directory when it is a previous htsr output (:func:`htsr.io.replace_dir`)."""
    from htsr.experiments import ResultStore, grid, run_sweep
    from htsr.experiments.store import config_id
    from htsr.io import MARKER, OutputError, replace_dir, write_json

    r = get_recipe(recipe, **overrides) if isinstance(recipe, str) else recipe
    fr = tuple(fractions) if fractions else r.fractions
    for m in methods:
        check_choice("method", m, METHODS)
    for f in fr:
        if not (isinstance(f, int | float) and 0 < f <= 1):
            raise ConfigError(f"fractions must be in (0, 1], got {f}")
    for sd in seeds:
        check_positive_int("seed", sd, minimum=0)
    out = Path(out_dir)
    cfg = r.config()
    cid = config_id(cfg)
    if out.is_symlink():
        raise OutputError(f"{out} is a symbolic link; give a real directory")
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} exists and is not a directory")
    if overwrite and out.exists() and any(out.iterdir()):
        replace_dir(out, lambda tmp: None, overwrite=True)
    elif out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file() and not (out / "results.csv").is_file():
            raise OutputError(f"{out} is not empty and is not a comparison directory written by htsr; choose a new "
                              "or empty directory")
        old = _stored_config(out, r.name, cid)
        if old is not None:
            diff = {k: (old.get(k), v) for k, v in cfg.items() if old.get(k) != v} if old else {}
            what = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in diff.items()) or "other settings"
            raise ConfigError(f"{out} holds {r.name} results of another configuration (here: {what}); pooling them "
                              "would mix configurations as if they were seeds. Use another --out-dir, or "
                              "--overwrite to replace it")
    out.mkdir(parents=True, exist_ok=True)
    if not (out / MARKER).exists():
        (out / MARKER).write_text("written by htsr; --overwrite may replace this directory\n")
    # seed-major, smallest fraction first: an interrupted comparison leaves whole seeds of every fraction,
    # cheapest cells first
    cells = grid(seed=list(seeds), fraction=sorted(fr), method=list(methods))
    store = ResultStore(out)
    write_json(config_file(out, r.name), {"recipe": r.name, "config_id": cid, "config": cfg})
    fn = functools.partial(recipe_cell, recipe=r.name, config=cfg)
    return run_sweep(fn, cells, store, executor=executor, extra={"recipe": r.name, "config_id": cid},
                     progress=progress)
