"""The three-regime pipeline on the project's training loop: dense training at a temperature, one-shot magnitude
pruning, retraining with the mask fixed, and the per-cell metrics (research notes section 2.2).

One sweep cell is ``(seed, temperature, density)``:

1. the dense model of ``seed`` at ``temperature`` (trained once per seed and knob value and cached under
   ``work_dir/dense``; for the ``epochs`` knob every temperature is a checkpoint of one run);
2. its prunable weights pruned to ``density`` (:func:`htsr.regimes.masks.magnitude_masks`);
3. one retrained copy per retraining seed (data order from ``(seed, retrain_seed)``), mask held fixed by
   :class:`~htsr.regimes.masks.MaskKeeper`;
4. metrics between the copies that share the mask, from the loss-landscape toolkit: ``mc`` on the linear path
   (:func:`htsr.landscape.linear_path`, 11 points, BatchNorm re-estimated at each, train error as a fraction;
   mean over copy pairs), biased linear CKA of the logits (``cka``) and of the softmax outputs (``cka_softmax``)
   (:func:`htsr.landscape.output_cka`), and the test error of each copy (mean over the last ``error_epochs``
   retraining epochs), averaged.

The normalised test error (per density, minus the minimum over temperatures) needs the whole grid and is
computed by :func:`htsr.regimes.classify.aggregate`.
"""

from __future__ import annotations

import copy
import functools
import itertools
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from htsr.errors import ConfigError
from htsr.regimes.config import RegimeConfig
from htsr.regimes.masks import MaskKeeper, apply_masks, magnitude_masks, mask_stats
from htsr.regimes.model import build_model

_DATA: dict[tuple, tuple[torch.Tensor, ...]] = {}


def load_data(cfg: RegimeConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train, y_train, x_test, y_test)``: the stratified Fashion-MNIST subset (the same images for every seed:
    drawn with seed 0) and the first ``test_size`` test images (cached per process)."""
    from htsr.data.fashion_mnist import fashion_mnist_split

    key = (cfg.train_size, cfg.test_size, cfg.data_dir)
    if key not in _DATA:
        frac = 1.0 if cfg.train_size in (0, 60000) else cfg.train_size / 60000
        if frac > 1:
            raise ConfigError(f"train_size must be <= 60000, got {cfg.train_size}")
        _DATA[key] = fashion_mnist_split(frac, 0, root=cfg.data_dir, test_limit=cfg.test_size or None)
    return _DATA[key]


def _batches(x: torch.Tensor, y: torch.Tensor, bs: int, device: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i:i + bs].to(device), y[i:i + bs].to(device)) for i in range(0, x.shape[0], bs)]


def _sub_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def _milestones(cfg: RegimeConfig, epochs: int) -> list[int]:
    return sorted({max(1, int(round(f * epochs))) for f in cfg.milestones})


def _sgd(cfg: RegimeConfig, model: nn.Module, lr: float, rho: float | None = None) -> torch.optim.Optimizer:
    if rho is None:
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    from htsr.landscape import SAM

    return SAM(model.parameters(), torch.optim.SGD, rho=float(rho), lr=lr, momentum=cfg.momentum,
               weight_decay=cfg.weight_decay)


def _set_threads(n: int) -> None:
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def _error(model: nn.Module, batches: list) -> float:
    from htsr.training import evaluate

    return 1.0 - float(evaluate(model, batches)["accuracy"])


# --------------------------------------------------------------------------------------- dense training
def dense_plan(cfg: RegimeConfig, temperature: float) -> dict[str, Any]:
    """How the dense model at ``temperature`` is trained: ``run`` (the cache directory name), ``epochs``,
    ``batch_size``, ``rho`` (None: plain SGD), ``max_steps`` (None: whole epochs) and ``checkpoint_epochs``."""
    n = load_data(cfg)[0].shape[0]
    if cfg.knob == "epochs":
        run_epochs = int(max(cfg.temperatures))
        return {"run": f"epochs{run_epochs}", "epochs": run_epochs, "batch_size": cfg.batch_size, "rho": None,
                "max_steps": None, "checkpoint": int(temperature),
                "checkpoint_epochs": sorted(int(t) for t in cfg.temperatures)}
    if cfg.knob == "batch_size":
        bs = int(temperature)
        if bs > n or n % bs == 1:
            raise ConfigError(f"batch size {bs} does not fit the {n} training images (larger than the set, or a "
                              "last batch of one sample, which BatchNorm cannot train on)")
        iters = cfg.iterations or cfg.dense_epochs * math.ceil(n / cfg.batch_size)
        epochs = math.ceil(iters / math.ceil(n / bs))  # the run stops at `iters` steps, inside its last epoch
        return {"run": f"batch{bs}", "epochs": epochs, "batch_size": bs, "rho": None, "max_steps": iters,
                "checkpoint": epochs, "checkpoint_epochs": [epochs]}
    return {"run": f"rho{float(temperature)!r}", "epochs": cfg.dense_epochs, "batch_size": cfg.batch_size,
            "rho": float(temperature), "max_steps": None, "checkpoint": cfg.dense_epochs,
            "checkpoint_epochs": [cfg.dense_epochs]}


def dense_model(cfg: RegimeConfig, seed: int, temperature: float, work_dir: str | Path) -> tuple[nn.Module, dict]:
    """The dense model of ``seed`` at ``temperature`` (trained now unless cached in ``work_dir/dense``), in eval
    mode on ``cfg.device``, and its metadata (``test_error``, ``epochs``, ``train_s``)."""
    from htsr.experiments.store import config_id
    from htsr.training import load_checkpoint

    plan = dense_plan(cfg, temperature)
    root = Path(work_dir) / "dense" / config_id(cfg.dense_identity()) / f"seed{seed}" / plan["run"]
    ck = root / f"epoch_{plan['checkpoint']:04d}"
    if not (ck / "checkpoint.json").is_file():
        _train_dense(cfg, seed, plan, root)
    model = build_model(cfg.depth, cfg.width, 0)
    extra = load_checkpoint(ck, model)
    return model.to(cfg.device).eval(), extra


def _train_dense(cfg: RegimeConfig, seed: int, plan: dict[str, Any], root: Path) -> None:
    from htsr.training import Callback, save_checkpoint, seeded_loader, train

    x, y, xt, yt = load_data(cfg)
    model = build_model(cfg.depth, cfg.width, seed).to(cfg.device)
    opt = _sgd(cfg, model, cfg.lr, plan["rho"])
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, _milestones(cfg, plan["epochs"]), cfg.lr_gamma)
    loader = seeded_loader(x, y, plan["batch_size"], _sub_seed(seed, 0))
    test = _batches(xt, yt, cfg.eval_batch_size, cfg.device)
    wanted = set(plan["checkpoint_epochs"])
    t0 = time.perf_counter()

    class Save(Callback):
        def on_epoch_end(self, state: Any, logs: dict[str, Any]) -> None:
            e = state.epoch + 1
            if e in wanted:
                err = _error(model, test)
                logs["test_error"] = err
                save_checkpoint(root / f"epoch_{e:04d}", model, extra={
                    "epoch": e, "test_error": err, "seed": seed, "plan": plan, "train_s": time.perf_counter() - t0})

    train(model, loader, opt, epochs=plan["epochs"], max_steps=plan["max_steps"], scheduler=sched,
          callbacks=[Save()], device=cfg.device, progress=False)


# --------------------------------------------------------------------------------------- retraining
def retrain(cfg: RegimeConfig, model: nn.Module, masks: dict[str, torch.Tensor], seed: int,
            test: list) -> tuple[nn.Module, dict[str, Any]]:
    """A copy of ``model`` retrained with ``masks`` fixed (SGD, ``retrain_lr``, the dense run's momentum, weight
    decay and milestone schedule, ``retrain_epochs``); data order from ``seed``. Returns ``(model,
    {"test_error", "history"})``, the test error averaged over the last ``error_epochs`` epochs."""
    from htsr.training import Callback, seeded_loader, train

    x, y, _, _ = load_data(cfg)
    m = copy.deepcopy(model).to(cfg.device)
    apply_masks(m, masks)
    opt = _sgd(cfg, m, cfg.retrain_lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, _milestones(cfg, cfg.retrain_epochs), cfg.lr_gamma)
    errors: list[float] = []
    first = cfg.retrain_epochs - cfg.error_epochs

    class TestError(Callback):
        def on_epoch_end(self, state: Any, logs: dict[str, Any]) -> None:
            if state.epoch >= first:
                errors.append(_error(m, test))
                logs["test_error"] = errors[-1]

    keeper = MaskKeeper(m, masks)
    try:
        res = train(m, seeded_loader(x, y, cfg.retrain_batch_size, seed), opt, epochs=cfg.retrain_epochs,
                    scheduler=sched, callbacks=[keeper, TestError()], device=cfg.device, progress=False)
    finally:
        keeper.detach()
    hist = res.history[["epoch", "train_loss"] + (["test_error"] if "test_error" in res.history else [])]
    return m.eval(), {"test_error": float(np.mean(errors)), "history": hist.to_dict("list")}


# --------------------------------------------------------------------------------------- one cell
def pair_metrics(models: list[nn.Module], metric_batches: list, cka_batches: list, mc_points: int = 11
                 ) -> dict[str, float]:
    """mc (train error, fraction), mc on the loss, CKA of logits and of softmax outputs, averaged over every pair
    of ``models``; ``path_error_mid`` (train error at t = 0.5) and ``endpoint_train_error`` too."""
    from htsr.landscape import linear_path, output_cka

    rows = []
    for a, b in itertools.combinations(models, 2):
        path = linear_path(a, b, metric_batches, num_points=mc_points)
        m = path.metrics()
        mid = int(np.argmin(np.abs(path.t - 0.5)))
        rows.append({
            "mc": m["mode_connectivity"], "mc_loss": m["mode_connectivity_loss"],
            "path_error_mid": float(path.error[mid]),
            "endpoint_train_error": 0.5 * float(path.error[0] + path.error[-1]),
            "cka": output_cka(a, b, cka_batches, estimator="biased"),
            "cka_softmax": output_cka(a, b, cka_batches, estimator="biased",
                                      feature_fn=lambda _n, t: torch.softmax(t, dim=-1)),
        })
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def regime_cell(seed: int, temperature: float, density: float, *, config: dict[str, Any],
                work_dir: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """One ``(seed, temperature, density)`` cell: dense model, prune, retrain the copies, measure. A module-level
    function of plain values (for :func:`htsr.experiments.run_sweep` and any executor)."""
    cfg = RegimeConfig.from_dict(config)
    _set_threads(cfg.threads)
    t0 = time.perf_counter()
    dense, meta = dense_model(cfg, int(seed), temperature, work_dir)
    t_dense = time.perf_counter() - t0
    masks = magnitude_masks(dense, density, cfg.scope)
    x, y, xt, yt = load_data(cfg)
    test = _batches(xt, yt, cfg.eval_batch_size, cfg.device)
    metric_batches = _batches(x[:cfg.metric_size], y[:cfg.metric_size], cfg.eval_batch_size, cfg.device)
    cka_batches = _batches(x[:cfg.cka_size], y[:cfg.cka_size], cfg.eval_batch_size, cfg.device)
    pruned = apply_masks(copy.deepcopy(dense), masks)
    from htsr.landscape import reestimate_bn

    reestimate_bn(pruned, metric_batches)
    pruned_error = _error(pruned, test)
    copies, errors, hist = [], [], {}
    t1 = time.perf_counter()
    for r in cfg.retrain_seeds:
        m, info = retrain(cfg, dense, masks, _sub_seed(seed, 1, r), test)
        copies.append(m)
        errors.append(info["test_error"])
        hist[str(r)] = info["history"]
    t_retrain = time.perf_counter() - t1
    t2 = time.perf_counter()
    pm = pair_metrics(copies, metric_batches, cka_batches, cfg.mc_points)
    st = mask_stats(copies[0], masks)
    metrics = {"knob": cfg.knob, **pm, "test_error": float(np.mean(errors)),
               "test_error_std": float(np.std(errors, ddof=1)) if len(errors) > 1 else math.nan,
               "dense_test_error": float(meta["test_error"]), "pruned_test_error": pruned_error,
               "density_actual": st["density"], "prunable": st["prunable"], "kept": st["kept"],
               "nonzero": st["nonzero"],
               "dense_s": t_dense, "retrain_s": t_retrain, "metrics_s": time.perf_counter() - t2}
    return metrics, {"test_errors": errors, "retrain_history": hist, "dense": meta}


def sweep(cfg: RegimeConfig, work_dir: str | Path, *, executor: Any = None, progress: bool | None = None,
          max_cells: int | None = None) -> Any:
    """Run (or resume) every ``(seed, temperature, density)`` cell of ``cfg`` through
    :func:`htsr.experiments.run_sweep` into ``work_dir`` (``results.csv``, ``cells/*.json``, ``dense/``); returns
    the results table (one row per cell)."""
    from htsr.experiments import ResultStore, grid, run_sweep
    from htsr.experiments.store import config_id

    fn = functools.partial(regime_cell, config=cfg.to_dict(), work_dir=str(work_dir))
    cells = grid(seed=list(cfg.seeds), temperature=list(cfg.temperatures), density=list(cfg.densities))
    return run_sweep(fn, cells, ResultStore(work_dir), executor=executor,
                     extra={"config_id": config_id(cfg.identity())}, progress=progress, max_cells=max_cells)
