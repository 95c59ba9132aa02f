"""Train, resume and evaluate ensembles: deep ensemble, SAM ensemble and SharpBalance, in one code path.

Training is organised in *lineages* of checkpoints per member, under ``ROOT/member{i}/``:

* ``sgd/``: plain SGD on all data (the deep ensemble);
* ``sam/``: SAM on all data (the SAM ensemble, and SharpBalance's phase 1: the first ``initial_epochs`` epochs
  of the two are the same computation, so SharpBalance starts from ``sam/epoch_{T0}`` when it exists);
* ``sb-{split id}/``: SharpBalance's phase 2 (:class:`~htsr.ensembles.optim.MixedSAM` on the member's split),
  from ``sam/epoch_{T0}`` to ``epochs``; the split id hashes ``k``, ``select`` and ``leftover``.

Each lineage keeps its latest ``epoch_NNNN/`` checkpoint (model, optimizer momentum, history), and ``sam/``
also keeps ``epoch_{T0}``; an interrupted run resumes from the latest one. A member's initialisation and data
order come from ``member_seed(seed, i)`` and the epoch number, so a resumed run computes the same weights as
an uninterrupted one. Per-sample scores are cached as ``sam/scores_epoch_{T0}.npy``.

Members run one after another in this process (``parallel=1``) or in ``parallel`` worker processes (spawned;
each stage -- phase 1, scoring, phase 2 -- is a barrier, as the reference's manager dictionary is).
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from htsr.ensembles.config import EnsembleConfig
from htsr.ensembles.model import (
    EnsembleError,
    EpochLoader,
    build_model,
    check_members,
    epoch_dirs,
    load_into,
    load_member,
    member_seed,
    model_spec,
    prune_checkpoints,
    read_meta,
)
from htsr.errors import ConfigError

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------- data
def load_data(cfg: EnsembleConfig, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train, y_train, x_test, y_test)``: a stratified ``train_size`` subset of Fashion-MNIST's training set
    drawn with ``seed`` (all 60,000 for 0) and the first ``test_size`` test images (all for 0)."""
    from htsr.data.fashion_mnist import fashion_mnist_split

    n_total = 60000
    if cfg.train_size > n_total:
        raise ConfigError(f"train_size must be <= {n_total} (0 = all), got {cfg.train_size}")
    frac = 1.0 if cfg.train_size in (0, n_total) else cfg.train_size / n_total
    return fashion_mnist_split(frac, seed, root=cfg.data_dir, test_limit=cfg.test_size or None)


def lr_at(cfg: EnsembleConfig, epoch: int) -> float:
    """The learning rate of (0-based) ``epoch``: multistep (x ``lr_gamma`` at each milestone fraction of
    ``epochs``, e.g. epochs 100 and 150 of 200), cosine, or constant."""
    if cfg.lr_schedule == "constant":
        return cfg.lr
    if cfg.lr_schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * epoch / cfg.epochs))
    steps = sum(1 for m in cfg.milestones if epoch >= round(m * cfg.epochs))
    return cfg.lr * cfg.lr_gamma ** steps


def split_id(cfg: EnsembleConfig) -> str:
    from htsr.experiments.store import config_id

    return config_id({"k": cfg.k, "select": cfg.select, "leftover": cfg.leftover,
                      "initial_epochs": cfg.initial_epochs})


def make_optimizer(cfg: EnsembleConfig, model: torch.nn.Module, kind: str) -> torch.optim.Optimizer:
    """``sgd``: torch SGD; ``sam``: :class:`htsr.landscape.SAM` around it; ``mixed``: SharpBalance's
    :class:`~htsr.ensembles.optim.MixedSAM`. Same lr / momentum / weight decay in all three."""
    from htsr.ensembles.optim import MixedSAM
    from htsr.landscape.sam import SAM

    kw = dict(lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if kind == "sgd":
        return torch.optim.SGD(model.parameters(), **kw)
    bn = model if cfg.freeze_bn_perturbed else None
    cls = SAM if kind == "sam" else MixedSAM
    return cls(model.parameters(), torch.optim.SGD, rho=cfg.rho, adaptive=cfg.adaptive, bn_model=bn, **kw)


# ----------------------------------------------------------------------------------- one member
def _member_dir(root: str | Path, member: int) -> Path:
    return Path(root) / f"member{member}"


def scores_path(cfg: EnsembleConfig, root: str | Path, member: int) -> Path:
    return _member_dir(root, member) / "sam" / f"scores_epoch_{cfg.initial_epochs:04d}.npy"


def _set_threads(n: int) -> None:
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def train_member(config: dict[str, Any], seed: int, member: int, root: str, lineage: str, until: int) -> dict:
    """Train member ``member`` along ``lineage`` (``sgd``, ``sam`` or ``sb-<id>``) up to epoch ``until``,
    resuming from its latest checkpoint; returns ``{"checkpoint": dir, "epoch": until, "history": [...]}``.
    A module-level function of plain values, so worker processes (and Ray) can run it."""
    from htsr.training import Callback, train

    cfg = EnsembleConfig.from_dict(config)
    _set_threads(cfg.threads)
    tid = cfg.training_id()
    mdir = _member_dir(root, member)
    ldir = mdir / lineage
    phase2 = lineage.startswith("sb-")
    kind = "sgd" if lineage == "sgd" else ("mixed" if phase2 else "sam")
    mseed = member_seed(seed, member)
    model = build_model(cfg.arch, cfg.width, mseed)
    opt = make_optimizer(cfg, model, kind)
    done = {e: p for e, p in epoch_dirs(ldir).items() if e <= until}
    history: list[dict[str, Any]] = []
    if done:
        start = max(done)
        _check_tid(read_meta(done[start]), tid, done[start])
        extra = load_into(done[start], model, opt)
        history = list(extra.get("history", []))
    elif phase2:
        src = epoch_dirs(mdir / "sam").get(cfg.initial_epochs)
        if src is None:
            raise EnsembleError(f"{mdir / 'sam'} holds no phase-1 checkpoint at epoch {cfg.initial_epochs}; "
                                "run phase 1 first")
        _check_tid(read_meta(src), tid, src)
        extra = load_into(src, model, opt)
        start = cfg.initial_epochs
        history = list(extra.get("history", []))
    else:
        start = 0
    if start >= until:
        return {"checkpoint": str(done.get(until, ldir / f"epoch_{until:04d}")), "epoch": until, "history": history}
    x_tr, y_tr, _, _ = load_data(cfg, seed)
    mask = None
    if phase2:
        masks = sam_split(cfg, root)
        mask = torch.from_numpy(masks[member])
    loader = EpochLoader(x_tr, y_tr, cfg.batch_size, mseed, mask=mask, augment=cfg.augment)
    keep_t0 = lineage == "sam"
    spec = model_spec(cfg.arch, cfg.width)

    class _Member(Callback):
        def on_epoch_begin(self, state: Any, logs: dict[str, Any]) -> None:
            e = start + state.epoch
            loader.epoch = e
            for g in state.optimizer.param_groups:
                g["lr"] = lr_at(cfg, e)

        def on_epoch_end(self, state: Any, logs: dict[str, Any]) -> None:
            from htsr.training import save_checkpoint

            e = start + state.epoch + 1
            history.append({"epoch": e, "train_loss": float(logs["train_loss"]), "lr": logs["lr"],
                            "epoch_time_s": float(logs["epoch_time_s"]), "optimizer": kind})
            extra = {"model": spec, "epoch": e, "lineage": lineage, "member": member, "seed": seed,
                     "member_seed": mseed, "training_id": tid, "method": cfg.method, "history": history}
            save_checkpoint(ldir / f"epoch_{e:04d}", model, state.optimizer, extra)
            prune_checkpoints(ldir, e, (cfg.initial_epochs,) if keep_t0 else ())

    train(model, loader, opt, loss_fn=opt.loss if phase2 else None, epochs=until - start, callbacks=[_Member()],
          device=cfg.device, progress=False)
    return {"checkpoint": str(ldir / f"epoch_{until:04d}"), "epoch": until, "history": history}


def _check_tid(extra: dict[str, Any], tid: str, path: Path) -> None:
    if extra.get("training_id") != tid:
        raise EnsembleError(f"checkpoint {path} was written with different training settings (training_id "
                            f"{extra.get('training_id')!r}, expected {tid!r}); use another directory or --overwrite")


def score_member(config: dict[str, Any], seed: int, member: int, root: str) -> dict[str, Any]:
    """SharpBalance's per-sample sharpness of member ``member`` after phase 1: ``||grad_theta l(x_i)||^2`` for
    every training sample (:func:`htsr.landscape.per_sample_grad_norms`, vmap, eval mode, no augmentation),
    cached as ``sam/scores_epoch_{T0}.npy``. Returns the path and the time it took."""
    from htsr.ensembles.corruptions import _load_npy, _save_npy
    from htsr.landscape.persample import per_sample_grad_norms

    cfg = EnsembleConfig.from_dict(config)
    _set_threads(cfg.threads)
    path = scores_path(cfg, root, member)
    x_tr, y_tr, _, _ = load_data(cfg, seed)
    if path.is_file():
        s = _load_npy(path, None)
        if s is not None and s.shape == (x_tr.shape[0],) and np.all(np.isfinite(s)):
            return {"path": str(path), "score_s": 0.0, "cached": True}
    src = epoch_dirs(_member_dir(root, member) / "sam").get(cfg.initial_epochs)
    if src is None:
        raise EnsembleError(f"no phase-1 checkpoint of member {member} at epoch {cfg.initial_epochs} under {root}")
    _check_tid(read_meta(src), cfg.training_id(), src)
    model = build_model(cfg.arch, cfg.width, 0)
    load_into(src, model)
    model.to(cfg.device)
    t = time.perf_counter()
    s = per_sample_grad_norms(model, (x_tr, y_tr), batch_size=cfg.score_batch_size)
    dt = time.perf_counter() - t
    _save_npy(path, s.astype(np.float64))
    return {"path": str(path), "score_s": dt, "cached": False}


def sam_split(cfg: EnsembleConfig, root: str | Path) -> np.ndarray:
    """(M, N) SAM masks of all members from their cached scores (:func:`htsr.ensembles.split.sam_masks`)."""
    from htsr.ensembles.corruptions import _load_npy
    from htsr.ensembles.split import sam_masks

    scores = []
    for i in range(cfg.n_members):
        p = scores_path(cfg, root, i)
        s = _load_npy(p, None) if p.is_file() else None
        if s is None:
            raise EnsembleError(f"per-sample scores of member {i} are missing or unreadable ({p}); rerun the training")
        scores.append(s)
    if len({s.shape for s in scores}) != 1:
        raise EnsembleError("members' per-sample scores have different lengths; rerun the training")
    return sam_masks(np.stack(scores), cfg.k, select=cfg.select, leftover=cfg.leftover)


# ----------------------------------------------------------------------------------- the ensemble
def _run(fn: Callable[..., Any], calls: Sequence[tuple], parallel: int) -> list[Any]:
    """``fn(*args)`` for each call: in this process, or in ``parallel`` spawned worker processes."""
    if parallel <= 1 or len(calls) <= 1:
        return [fn(*a) for a in calls]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=min(parallel, len(calls)), mp_context=mp.get_context("spawn")) as ex:
        futures = [ex.submit(fn, *a) for a in calls]
        return [f.result() for f in futures]


def lineage_of(cfg: EnsembleConfig) -> str:
    """Where the method's final members live: ``sgd``, ``sam`` or ``sb-<split id>``."""
    spec = cfg.method_spec
    if spec["phase2"]:
        return f"sb-{split_id(cfg)}"
    return spec["optimizer"]


def train_ensemble(cfg: EnsembleConfig, seed: int, root: str | Path) -> dict[str, Any]:
    """Train (or resume) all members of ``cfg.method`` under ``root``; returns the final checkpoint
    directories, each member's history, the split summary (SharpBalance) and timings."""
    root = str(root)
    Path(root).mkdir(parents=True, exist_ok=True)
    conf = cfg.to_dict()
    m = cfg.n_members
    timings: dict[str, float] = {}
    out: dict[str, Any] = {"method": cfg.method, "seed": seed, "lineage": lineage_of(cfg)}
    t = time.perf_counter()
    if not cfg.method_spec["phase2"]:
        res = _run(train_member, [(conf, seed, i, root, lineage_of(cfg), cfg.epochs) for i in range(m)],
                   cfg.parallel)
        timings["train_s"] = time.perf_counter() - t
    else:
        _run(train_member, [(conf, seed, i, root, "sam", cfg.initial_epochs) for i in range(m)], cfg.parallel)
        timings["phase1_s"] = time.perf_counter() - t
        t2 = time.perf_counter()
        sc = _run(score_member, [(conf, seed, i, root) for i in range(m)], cfg.parallel)
        timings["score_s"] = time.perf_counter() - t2
        timings["score_compute_s"] = float(sum(s["score_s"] for s in sc))
        from htsr.ensembles.split import split_summary

        out["split"] = split_summary(sam_split(cfg, root))
        t3 = time.perf_counter()
        res = _run(train_member, [(conf, seed, i, root, lineage_of(cfg), cfg.epochs) for i in range(m)],
                   cfg.parallel)
        timings["phase2_s"] = time.perf_counter() - t3
        timings["train_s"] = time.perf_counter() - t
    out["members"] = [r["checkpoint"] for r in res]
    out["histories"] = [r["history"] for r in res]
    out["timings"] = timings
    return out


def final_members(cfg: EnsembleConfig, root: str | Path) -> list[Path]:
    """The final checkpoint directory of each member of ``cfg.method`` under ``root``."""
    lin = lineage_of(cfg)
    out = []
    for i in range(cfg.n_members):
        d = epoch_dirs(_member_dir(root, i) / lin).get(cfg.epochs)
        if d is None:
            raise EnsembleError(f"member {i} of {cfg.method} has no final checkpoint (epoch {cfg.epochs}) under "
                                f"{_member_dir(root, i) / lin}; train it first")
        out.append(d)
    return out


def load_ensemble(paths: Sequence[str | Path], device: str = "cpu") -> tuple[list[torch.nn.Module], list[dict]]:
    """Members from checkpoint directories, checked to share one architecture."""
    models, metas = [], []
    for p in paths:
        mdl, extra = load_member(p, device)
        models.append(mdl)
        metas.append(extra)
    check_members(models, [str(p) for p in paths])
    return models, metas


# ----------------------------------------------------------------------------------- evaluation
def _batches(x: torch.Tensor, y: torch.Tensor, bs: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i:i + bs], y[i:i + bs]) for i in range(0, x.shape[0], bs)]


def _outputs(models: Sequence[torch.nn.Module], x: torch.Tensor, y: torch.Tensor, bs: int, device: str):
    from htsr.landscape.diversity import collect_outputs

    data = [(a.to(device), b) for a, b in _batches(x, y, bs)]
    outs, labels = collect_outputs(list(models), data)
    return outs, labels


def evaluate_ensemble(models: Sequence[torch.nn.Module], cfg: EnsembleConfig, seed: int, *,
                      data: tuple[torch.Tensor, ...] | None = None, progress: bool | None = None
                      ) -> dict[str, Any]:
    """Every measure of the issue on one ensemble: member and ensemble accuracy / NLL / ECE, disagreement,
    DER, prediction variance, KL and CKA between members, in distribution (``test_size`` test images) and
    on every corruption x severity (``corrupt_size`` images each; averaged), plus each member's worst-case
    adaptive sharpness (APGD, :func:`htsr.landscape.worst_case_sharpness`) on training batches."""
    from htsr.data.fashion_mnist import to_tensor
    from htsr.ensembles.corruptions import FAMILIES, fashion_mnist_c
    from htsr.ensembles.metrics import average_reports, outputs_report
    from htsr.progress import progress_bar

    if len(models) < 2:
        raise EnsembleError(f"an ensemble needs at least 2 members, got {len(models)}")
    x_tr, y_tr, x_te, y_te = data if data is not None else load_data(cfg, seed)
    dev = cfg.device
    for mdl in models:
        mdl.to(dev)
    t0 = time.perf_counter()
    outs, labels = _outputs(models, x_te, y_te, cfg.eval_batch_size, dev)
    clean = outputs_report(outs, labels, n_bins=cfg.ece_bins)
    families = list(cfg.corruptions) or list(FAMILIES)
    by_family: dict[str, dict[str, Any]] = {}
    reports = []
    bar = progress_bar(progress, total=len(families), desc="corruptions", leave=False)
    try:
        for fam in families:
            imgs, labs = fashion_mnist_c(fam, cfg.severities, n=cfg.corrupt_size or None, seed=0,
                                         cache_dir=cfg.cache_dir, root=cfg.data_dir)
            by_family[fam] = {}
            for si, sev in enumerate(cfg.severities):
                o, lab = _outputs(models, to_tensor(imgs[si]), torch.from_numpy(labs), cfg.eval_batch_size, dev)
                rep = outputs_report(o, lab, n_bins=cfg.ece_bins)
                reports.append(rep)
                by_family[fam][str(sev)] = {k: rep[k] for k in ("ensemble_accuracy", "ensemble_nll", "ensemble_ece",
                                                                 "mean_member_accuracy", "disagreement")}
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    ood = average_reports(reports)
    t_eval = time.perf_counter() - t0
    t1 = time.perf_counter()
    sharp = member_sharpness(models, cfg, x_tr, y_tr, seed)
    t_sharp = time.perf_counter() - t1
    summary: dict[str, Any] = {}
    for k, v in average_reports([clean]).items():
        summary[f"clean_{k}"] = v
    for k, v in ood.items():
        summary[f"ood_{k}"] = v
    for p, vals in sharp.items():
        summary[f"sharpness_p{p}"] = float(np.mean(vals)) if vals else float("nan")
    summary["eval_s"] = t_eval
    summary["sharpness_s"] = t_sharp
    return {"summary": summary, "clean": clean, "ood": {"mean": ood, "by_family": by_family,
                                                        "n_sets": len(reports)},
            "sharpness": {"rho": cfg.sharpness_rho, "batches": cfg.sharpness_batches,
                          "batch_size": cfg.sharpness_batch_size, "members": sharp}}


def member_sharpness(models: Sequence[torch.nn.Module], cfg: EnsembleConfig, x: torch.Tensor, y: torch.Tensor,
                     seed: int) -> dict[str, list[float]]:
    """Worst-case adaptive sharpness of each member for each ``p`` in ``cfg.sharpness_p``: APGD in weight space
    (:func:`htsr.landscape.worst_case_sharpness`) on ``sharpness_batches`` batches of ``sharpness_batch_size``
    training samples drawn with ``seed`` (the same batches for every member and method)."""
    from htsr.landscape.sharpness import worst_case_sharpness

    if cfg.sharpness_batches == 0:
        return {}
    g = torch.Generator().manual_seed(int(np.random.SeedSequence([int(seed), 99]).generate_state(1)[0]))
    need = cfg.sharpness_batches * cfg.sharpness_batch_size
    idx = torch.randperm(x.shape[0], generator=g)[:need]
    batches = [(x[idx[i:i + cfg.sharpness_batch_size]].to(cfg.device), y[idx[i:i + cfg.sharpness_batch_size]]
                .to(cfg.device)) for i in range(0, idx.numel(), cfg.sharpness_batch_size)]
    out: dict[str, list[float]] = {}
    for p in cfg.sharpness_p:
        out[p] = [float(worst_case_sharpness(m, batches, rho=cfg.sharpness_rho, p=2 if p == "2" else "inf",
                                             adaptive=True, max_batches=len(batches), n_iters=cfg.sharpness_iters,
                                             seed=seed).sharpness) for m in models]
    return out


# ----------------------------------------------------------------------------------- the comparison
def compare_cell(method: str, seed: int, *, config: dict[str, Any], work_dir: str) -> tuple[dict, dict]:
    """One (method, seed) cell of the comparison: train (or resume) the ensemble under
    ``work_dir/runs/seed{seed}`` and evaluate it. A module-level function of plain values (for run_sweep)."""
    cfg = EnsembleConfig.from_dict({**config, "method": method})
    root = Path(work_dir) / "runs" / f"seed{seed}"
    t = time.perf_counter()
    info = train_ensemble(cfg, seed, root)
    train_wall = time.perf_counter() - t
    models, _ = load_ensemble(final_members(cfg, root), cfg.device)
    ev = evaluate_ensemble(models, cfg, seed)
    metrics = {**ev["summary"], "train_wall_s": train_wall, **{k: v for k, v in info["timings"].items()}}
    if "split" in info:
        metrics["sam_fraction"] = float(np.mean(info["split"]["sam_fraction"]))
    return metrics, {"evaluation": ev, "training": info}


def execution_free(cfg: EnsembleConfig) -> dict[str, Any]:
    """The configuration without how it runs (parallel, threads, device): what identifies results."""
    d = cfg.to_dict()
    for k in ("parallel", "threads", "device", "method", "data_dir", "cache_dir"):
        d.pop(k, None)
    return d


def compare(cfg: EnsembleConfig, methods: Sequence[str], seeds: Sequence[int], out_dir: str | Path, *,
            progress: bool | None = None, executor: Any = None) -> Any:
    """Run (or resume) every (seed, method) cell through :func:`htsr.experiments.run_sweep` into ``out_dir``
    (``results.csv``, ``cells/*.json``, ``runs/seed*/member*/...``); returns the results table."""
    from htsr.experiments import ResultStore, grid, run_sweep
    from htsr.experiments.store import config_id

    fn = functools.partial(compare_cell, config=cfg.to_dict(), work_dir=str(out_dir))
    cells = grid(seed=list(seeds), method=list(methods))
    return run_sweep(fn, cells, ResultStore(out_dir), executor=executor,
                     extra={"config_id": config_id(execution_free(cfg))}, progress=progress)


#: the columns of the comparison's summary table, in order
SUMMARY_METRICS = ("clean_ensemble_accuracy", "ood_ensemble_accuracy", "clean_mean_member_accuracy",
                   "ood_mean_member_accuracy", "clean_ensemble_nll", "ood_ensemble_nll", "clean_ensemble_ece",
                   "ood_ensemble_ece", "clean_disagreement", "ood_disagreement", "clean_der", "ood_der",
                   "clean_prediction_variance", "ood_prediction_variance", "clean_kl", "clean_cka",
                   "sharpness_p2", "sharpness_pinf")


def summarize_results(table: Any, methods: Sequence[str] | None = None) -> Any:
    """Mean and std (ddof=1) over seeds of every summary metric, one row per method (long format:
    method, metric, mean, std, n)."""
    import pandas as pd

    from htsr.experiments.sweep import summarize

    if table is None or len(table) == 0:
        raise ConfigError("no finished cells to summarise")
    rows = []
    for metric in SUMMARY_METRICS:
        if metric not in table.columns:
            continue
        s = summarize(table, metric, by=("method",))
        for _, r in s.iterrows():
            rows.append({"method": r["method"], "metric": metric, "mean": r["mean"], "std": r["std"], "n": r["n"]})
    df = pd.DataFrame(rows)
    if methods:
        order = {m: i for i, m in enumerate(methods)}
        df = df.sort_values(by=["metric", "method"], key=lambda c: c.map(order) if c.name == "method" else c,
                            kind="stable")
    return df.reset_index(drop=True)
