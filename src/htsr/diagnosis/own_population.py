"""Building an own population: train every configuration of a :class:`PopulationConfig` grid with the shared loop
and measure it, resumably, into a population folder.

One *configuration* is (width, batch size, data fraction) of the model family (:mod:`htsr.diagnosis.family`),
trained at every seed of the recipe with :func:`htsr.training.train` (SGD, momentum 0.9, constant learning rate,
weight decay 5e-4: the MD population's recipe, research note section 1.2) and stored as one row, the mean over
seeds (:mod:`htsr.diagnosis.features`), plus the grid (``width``, ``bs``, ``data``), ``log_data_amount`` =
ln(#training samples), ``log_para_amount`` = ln(#parameters) and ``log_bs``.

The folder: ``config.json`` (the :class:`PopulationConfig`), the :class:`htsr.experiments.ResultStore`
(``results.csv`` rewritten atomically after each configuration, per-seed details in ``cells/*.json``), the seed
models as :func:`htsr.training.save_checkpoint` folders under ``models/``, and ``population.csv`` (the finished
rows). A folder holds one configuration: rerunning with the same one resumes (finished configurations are never
retrained); another one is refused (``overwrite=True`` discards the old population instead).

Differences from the MD population (documented, deliberate at this scale): a fixed epoch budget instead of
early stopping on a training-loss plateau; the Bezier curve is trained for ``curve_epochs`` (default 10) instead
of ``5·int(10/data_fraction)`` epochs; 2 seeds instead of 5.
"""

from __future__ import annotations

import functools
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from htsr.diagnosis.config import GRIDS, PopulationConfig
from htsr.diagnosis.errors import DiagnosisError
from htsr.errors import ConfigError

__all__ = ["GRID_AXES", "population_cell", "build_population", "read_population_config", "load_population_dir"]

#: The grid columns of a population row.
GRID_AXES = ("width", "bs", "data")
CONFIG_FILE = "config.json"
#: Columns every row of a population folder's ``results.csv`` has.
STORE_COLUMNS = ("key", "status", "recipe_id", *GRID_AXES)


def _cell_key(width: int, bs: int, data: float, recipe_id: str) -> str:
    from htsr.experiments.store import cell_key

    return cell_key({"width": width, "bs": bs, "data": data, "recipe_id": recipe_id})


def population_cell(width: int, bs: int, data: float, *, config: dict[str, Any], models_dir: str | None = None
                    ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train one configuration at every seed and measure it: ``(row, details)`` for
    :func:`htsr.experiments.run_sweep`. Plain parameters only (``config`` is :meth:`PopulationConfig.to_dict`), so
    any executor can run it. With ``models_dir``, each seed's model is saved as ``models_dir/<key>/seed<k>``."""
    import torch

    from htsr.diagnosis.family import family_data, family_model
    from htsr.diagnosis.features import model_features, pair_features, seed_features
    from htsr.training import evaluate, save_checkpoint, seeded_loader, train

    cfg = PopulationConfig.from_dict(config)
    t0 = time.perf_counter()
    dev = torch.device(cfg.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DiagnosisError(f"device={cfg.device} but CUDA is not available here; use device=cpu")
    xtr, ytr, xte, yte = (t.to(dev) for t in family_data(cfg, data))
    model_dir = Path(models_dir) / _cell_key(width, bs, data, cfg.recipe_id()) if models_dir else None
    per_seed, models = [], []
    for seed in cfg.seeds:
        model = family_model(cfg, width, seed).to(dev)
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        res = train(model, seeded_loader(xtr, ytr, bs, seed), opt, epochs=cfg.epochs, progress=False)
        model.eval()  # from here on a trained model being measured
        te = evaluate(model, [(xte, yte)])
        f = model_features(model, xtr, ytr, cfg, seed=seed)
        f.update(test_loss=float(te["loss"]), test_acc=100.0 * float(te["accuracy"]),
                 test_error=100.0 * (1.0 - float(te["accuracy"])), seed=int(seed), steps=int(res.state.step))
        per_seed.append(f)
        models.append(model)
    pair = pair_features(models, xtr, ytr, cfg, seed=cfg.seeds[0])
    if model_dir is not None:  # saved from the CPU, whatever the device
        for seed, model, f in zip(cfg.seeds, models, per_seed, strict=True):
            save_checkpoint(model_dir / f"seed{seed}", model.cpu(),
                            extra={"kind": "htsr.mdtree.population_model", "arch": cfg.arch, "width": int(width),
                                   "bs": int(bs), "data": float(data), "seed": int(seed),
                                   "recipe_id": cfg.recipe_id(), **f})
    row: dict[str, Any] = seed_features(per_seed, pair, f"width={width} bs={bs} data={data}")
    n_par = int(sum(p.numel() for p in models[0].parameters()))
    row.update(data_amount=int(xtr.shape[0]), para_amount=n_par, log_data_amount=math.log(xtr.shape[0]),
               log_para_amount=math.log(n_par), log_bs=math.log(bs),
               test_acc_std=float(np.std([s["test_acc"] for s in per_seed], ddof=1)),
               train_s=time.perf_counter() - t0)
    details = {"per_seed": per_seed, "curve_t": pair["curve_t"], "curve_errors": pair["curve_errors"]}
    return row, details


# ----------------------------------------------------------------------------- the population folder

def read_population_config(folder: str | Path) -> PopulationConfig | None:
    """The :class:`PopulationConfig` of a population folder, or None when it has no ``config.json``; an
    unreadable one is an error naming the file."""
    p = Path(folder) / CONFIG_FILE
    if not p.is_file():
        return None
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DiagnosisError(f"{p}: unreadable population config ({e})") from None
    if not isinstance(data, dict):
        raise DiagnosisError(f"{p}: a population config must be a JSON object, got {type(data).__name__}")
    try:
        return PopulationConfig.from_dict(data)
    except ConfigError as e:
        raise DiagnosisError(f"{p}: {e}") from None


def _open_store(folder: Path):
    """The folder's result store; a malformed ``results.csv`` is an error naming it and what is missing."""
    from htsr.experiments import ResultStore

    path = folder / "results.csv"
    store = ResultStore(folder)  # an unreadable table is the store's one-line error
    table = store.table()
    missing = [c for c in STORE_COLUMNS if len(table) and c not in table.columns]
    if missing:
        raise DiagnosisError(f"{path}: not the results of a population (missing column(s) {missing})")
    return store


def _population_frame(table: pd.DataFrame, config: PopulationConfig) -> pd.DataFrame:
    """The finished rows of ``config`` (its recipe, its grid), sorted by the grid."""
    if table.empty:
        return pd.DataFrame()
    t = table[(table["status"] == "ok") & (table["recipe_id"] == config.recipe_id())].copy()
    t = t[t["width"].isin(config.widths) & t["bs"].isin(config.batch_sizes)
          & np.isclose(t["data"].to_numpy(dtype=float)[:, None], np.array(config.data_fractions, float)).any(1)]
    t["width"] = t["width"].astype(int)
    t["bs"] = t["bs"].astype(int)
    return t.sort_values(list(GRID_AXES), kind="mergesort").reset_index(drop=True)


def _differences(old: PopulationConfig, new: PopulationConfig) -> str:
    a, b = old.to_dict(), new.to_dict()
    return ", ".join(f"{k} {a[k]} there, {b[k]} here" for k in a if a[k] != b[k])


def _prepare_folder(out: Path, config: PopulationConfig | None, overwrite: bool) -> PopulationConfig:
    """Create the folder for ``config`` or check that it holds ``config``; returns the configuration to build.
    ``config=None`` resumes the folder's own configuration (``small`` for a new folder)."""
    from htsr.io import replace_dir, write_json

    if out.exists() and not out.is_dir():
        raise DiagnosisError(f"{out} exists and is not a folder")
    old = read_population_config(out) if out.is_dir() else None
    if old is not None and (config is None or config == old):
        return old
    config = config or GRIDS.get("small")
    if old is not None and not overwrite:
        raise DiagnosisError(f"{out} holds a population of another configuration ({_differences(old, config)}); "
                             "rerun without --grid/--set to resume it, choose a new --out-dir, or pass --overwrite "
                             "to discard it")
    if old is None and out.is_dir() and any(out.iterdir()):
        raise DiagnosisError(f"{out} is not empty and holds no population ({CONFIG_FILE} missing); choose a new or "
                             "empty --out-dir")
    replace_dir(out, lambda tmp: write_json(tmp / CONFIG_FILE, config.to_dict()), overwrite=overwrite)
    return config


def build_population(config: PopulationConfig | str | None, out_dir: str | Path, *, max_new: int | None = None,
                     save_models: bool = True, progress: bool | None = None, overwrite: bool = False,
                     executor: Any = None) -> pd.DataFrame:
    """Train and measure every configuration of ``config`` (a :class:`PopulationConfig`, a :data:`GRIDS` name, or
    None: the folder's own configuration, ``small`` for a new folder) not yet stored under ``out_dir``; returns
    the population, one row per finished configuration (grid order).

    Resumable: finished configurations are read back, never retrained; a folder of another configuration is
    refused unless ``overwrite`` (then the old population is discarded; only a previous htsr output is ever
    replaced). ``max_new`` stops after that many new configurations (a time box; rerun to continue). Writes
    ``config.json``, ``results.csv``, ``cells/``, ``population.csv`` and, with ``save_models``,
    ``models/<key>/seed<k>/``. ``executor``: where the configurations are trained
    (:func:`htsr.experiments.run_sweep`: ``None``/``"local"`` in this process, ``"ray"`` or a ``RayExecutor``;
    the workers write the models, so a multi-node cluster needs ``out_dir`` on a shared filesystem).
    ``frame.attrs``: ``n_trained`` (this call), ``n_resumed``, ``n_missing`` (not finished yet), ``failed`` (one
    line per failed configuration), ``recipe_id``, ``config``.
    """
    from htsr.experiments import grid, run_sweep
    from htsr.io import write_table

    if isinstance(config, str):
        config = GRIDS.get(config)
    out = Path(out_dir)
    from htsr.experiments.executors import LocalExecutor

    local = executor in (None, "local") or isinstance(executor, LocalExecutor)
    if isinstance(config, PopulationConfig) and config.device.startswith("cuda") and local:
        import torch

        if not torch.cuda.is_available():
            raise DiagnosisError(f"the recipe trains on device={config.device} but CUDA is not available here; pass "
                                 "--set device=cpu (or run it with --executor ray on a cluster with GPUs)")
    config = _prepare_folder(out, config, overwrite)
    store = _open_store(out)
    rid = config.recipe_id()
    cells = grid(width=[int(w) for w in config.widths], bs=[int(b) for b in config.batch_sizes],
                 data=[float(d) for d in config.data_fractions])
    fn = functools.partial(population_cell, config=config.to_dict(),
                           models_dir=str(out / "models") if save_models else None)
    table = run_sweep(fn, cells, store, executor=executor, extra={"recipe_id": rid}, progress=progress,
                      max_cells=max_new)
    frame = _population_frame(table, config)
    bad = table[(table["status"] != "ok") & (table["recipe_id"] == rid)] if len(table) else table
    failed = [f"width={r['width']} bs={r['bs']} data={r['data']}: {r.get('error', '?')}" for _, r in bad.iterrows()]
    if len(frame):
        write_table(out / "population.csv", frame)
    frame.attrs.update(n_trained=table.attrs["n_run"], n_resumed=table.attrs["n_resumed"],
                       n_missing=len(cells) - len(frame), failed=failed, recipe_id=rid, config=config)
    return frame


def load_population_dir(path: str | Path) -> tuple[pd.DataFrame, PopulationConfig]:
    """``(population, config)`` of a folder written by :func:`build_population` (finished rows only)."""
    p = Path(path)
    config = read_population_config(p)
    if config is None:
        raise DiagnosisError(f"{p} is not a population folder (no {CONFIG_FILE}); build one with "
                             "`htsr mdtree population --out-dir DIR`")
    frame = _population_frame(_open_store(p).table(), config)
    if frame.empty:
        raise DiagnosisError(f"{p} holds no finished configuration yet; run `htsr mdtree population --out-dir {p}`")
    return frame, config
