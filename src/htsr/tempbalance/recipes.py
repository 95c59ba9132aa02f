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

Every cell is seeded: data subset, initialisation, batch order and dropout (the global torch RNG is forked and
restored around each run, so running a cell leaves no trace on the caller's random state).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from htsr.errors import ConfigError
from htsr.tempbalance.scheduler import TempBalance, TempBalanceCallback
from htsr.training import evaluate, seeded_loader, train

log = logging.getLogger(__name__)

METHODS = ("baseline", "tb")


def epochs_for(epochs: int, min_steps: int, steps_per_epoch: int) -> int:
    """``epochs``, raised so that training takes at least ``min_steps`` optimizer steps (tiny fractions would
    otherwise stop after a handful of steps)."""
    return max(epochs, math.ceil(min_steps / max(1, steps_per_epoch)))


def _fit(model: nn.Module, loader: Any, optimizer: torch.optim.Optimizer, base: Any, *, method: str,
         epochs: int, tb_kwargs: dict[str, Any], loss_fn: Any = None, grad_clip: float | None = None
         ) -> tuple[Any, TempBalance | None, float]:
    """Train with the base schedule stepped every optimizer step, plus TempBalance when ``method == "tb"``;
    returns (train result, scheduler or None, seconds spent building TempBalance)."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    t0 = time.perf_counter()
    if method == "tb":
        tb = TempBalance(model, optimizer, base_scheduler=base, **tb_kwargs)
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


@dataclass
class Recipe:
    """Base of the recipes: ``name``, ``score`` (the metric compared), ``higher_is_better``, ``fractions``."""

    name: ClassVar[str] = ""
    score: ClassVar[str] = ""
    higher_is_better: ClassVar[bool] = True
    fractions: ClassVar[tuple[float, ...]] = ()

    def config(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def run(self, method: str, fraction: float, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
        if method not in METHODS:
            raise ConfigError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
        if not 0 < fraction <= 1:
            raise ConfigError(f"fraction must be in (0, 1], got {fraction}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed) + 7919)  # dropout and any module randomness, scoped to this cell
            return self._run(method, float(fraction), int(seed))

    def _run(self, method: str, fraction: float, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
        raise NotImplementedError


@dataclass
class DigitsRecipe(Recipe):
    """Small ResNet (or VGG) from scratch on 8x8 digits. Defaults: 1,258-image pool / 539 test, 15 epochs but
    at least 200 steps, batch 32, SGD lr 0.05, momentum 0.9, wd 5e-4, cosine over all steps; TB every 40 steps
    (about one epoch on the full pool)."""

    name: ClassVar[str] = "digits"
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

    def _run(self, method: str, fraction: float, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
        from htsr.data.digits import digits_split
        from htsr.models.vision import make_vision_model

        xtr, ytr, xte, yte = digits_split(fraction, seed, test_size=self.test_size)
        loader = seeded_loader(xtr, ytr, self.batch_size, seed)
        model = make_vision_model(self.arch, width=self.width, seed=seed)
        opt = torch.optim.SGD(model.parameters(), lr=self.lr, momentum=self.momentum,
                              weight_decay=self.weight_decay)
        epochs = epochs_for(self.epochs, self.min_steps, len(loader))
        total = epochs * len(loader)

        def base(o: torch.optim.Optimizer) -> Any:
            return torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=total)

        tbk = dict(mapping=self.mapping, metric=self.metric, s1=self.s1, s2=self.s2, interval=self.interval)
        res, tb, build = _fit(model, loader, opt, base, method=method, epochs=epochs, tb_kwargs=tbk)
        ev = evaluate(model, [(xte, yte)])
        metrics = {"accuracy": ev["accuracy"], "test_loss": ev["loss"], "n_train": int(ytr.numel()),
                   **_timing(res, tb, build)}
        return metrics, _details(res, tb)


@dataclass
class MiniLMRecipe(Recipe):
    """Fine-tune the pretrained all-MiniLM-L6-v2 on KJV genre classification (8 classes; pool 256 verses,
    test 240, balanced). Defaults: 3 epochs but at least 24 steps, batch 8, max 64 tokens, AdamW lr 5e-5, wd
    0.01 (not on biases/LayerNorm), 6% warmup + linear decay per step; TB: blocks, sigmoid map
    s_min = s_max = 1, T = 10, alpha at xmin_pos 1.5, recomputed every 25 steps, rates re-applied every step."""

    name: ClassVar[str] = "minilm"
    score: ClassVar[str] = "accuracy"
    higher_is_better: ClassVar[bool] = True
    fractions: ClassVar[tuple[float, ...]] = (1.0, 0.25, 0.125)

    label: str = "genre"
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

    def _run(self, method: str, fraction: float, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
        from htsr.data.text import TokenizedBatches, kjv_classification_split
        from htsr.models.text import load_minilm_classifier

        tr_x, tr_y, te_x, te_y, classes = kjv_classification_split(
            fraction, seed, label=self.label, n_pool=self.n_pool, n_test=self.n_test)
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

        tbk = dict(mapping=self.mapping, metric=self.metric, unit=self.unit, s_min=self.s_min, s_max=self.s_max,
                   temperature=self.temperature, interval=self.interval, exclude_first=False, exclude_last=True,
                   analysis_options={"xmin_pos": self.xmin_pos})
        res, tb, build = _fit(model, train_b, opt, base, method=method, epochs=epochs, tb_kwargs=tbk)
        acc = evaluate(model, test_b)["accuracy"]
        metrics = {"accuracy": acc, "n_train": len(tr_y), **_timing(res, tb, build)}
        return metrics, _details(res, tb)


@dataclass
class BurgersRecipe(Recipe):
    """1-D FNO (16 modes, width 32) on viscous Burgers (nu = 0.05, 64-point grid from a 128-point solver;
    pool 256, test 128). Defaults: 30 epochs but at least 240 steps, batch 16, Adam lr 1e-3, wd 1e-4, StepLR
    halving 4 times over training, relative-L2 loss; TB per layer, sigmoid s_min = s_max = 0.5, every 50
    steps."""

    name: ClassVar[str] = "burgers"
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

        tbk = dict(mapping=self.mapping, metric=self.metric, s_min=self.s_min, s_max=self.s_max,
                   temperature=self.temperature, interval=self.interval,
                   analysis_options={"kinds": ("linear", "conv1d"), "threshold": 1e-5, "min_evals": 12})
        res, tb, build = _fit(model, loader, opt, base, method=method, epochs=epochs, tb_kwargs=tbk,
                              loss_fn=relative_l2_loss)
        model.eval()
        with torch.no_grad():
            err = nrmse(model(xte), yte)
        metrics = {"nrmse": err, "n_train": int(xtr.shape[0]), **_timing(res, tb, build)}
        return metrics, _details(res, tb)


RECIPES: dict[str, type[Recipe]] = {r.name: r for r in (DigitsRecipe, MiniLMRecipe, BurgersRecipe)}


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
    """A recipe by name with field overrides (unknown names are errors)."""
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; expected one of {', '.join(RECIPES)}")
    cls = RECIPES[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    bad = sorted(set(overrides) - fields)
    if bad:
        raise ConfigError(f"unknown option(s) for recipe {name!r}: {', '.join(bad)}; "
                          f"valid: {', '.join(sorted(fields))}")
    return cls(**overrides)


def run_cell(recipe: str | Recipe, method: str, fraction: float, seed: int, **overrides: Any
             ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train one cell of a recipe: ``(metrics, details)``."""
    r = get_recipe(recipe, **overrides) if isinstance(recipe, str) else recipe
    return r.run(method, fraction, seed)


def run_comparison(recipe: str | Recipe, out_dir: str, *, fractions: tuple[float, ...] | None = None,
                   seeds: tuple[int, ...] = (0, 1, 2, 3, 4), methods: tuple[str, ...] = METHODS,
                   progress: bool | None = None, **overrides: Any):
    """Run (or resume) the grid methods x fractions x seeds of a recipe into ``out_dir``; returns the table."""
    from htsr.experiments import ResultStore, grid, run_sweep
    from htsr.experiments.store import config_id

    r = get_recipe(recipe, **overrides) if isinstance(recipe, str) else recipe
    fr = tuple(fractions) if fractions else r.fractions
    for m in methods:
        if m not in METHODS:
            raise ConfigError(f"unknown method {m!r}; expected one of {', '.join(METHODS)}")
    # seed-major, smallest fraction first: an interrupted comparison leaves whole seeds of every fraction,
    # cheapest cells first
    cells = grid(seed=list(seeds), fraction=sorted(fr), method=list(methods))
    store = ResultStore(out_dir)
    from htsr.io import write_json

    write_json(f"{out_dir}/config_{r.name}.json", {"recipe": r.name, "config": r.config()})
    return run_sweep(lambda fraction, seed, method: r.run(method, fraction, seed), cells, store,
                     extra={"recipe": r.name, "config_id": config_id(r.config())}, progress=progress)
