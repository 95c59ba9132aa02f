"""The TempBalance scheduler: per-layer learning rates from heavy-tail metrics, recomputed during training.

``TempBalance`` wraps any ``torch.optim.Optimizer``. Its settings are one
:class:`~htsr.tempbalance.config.TempBalanceConfig` (``config=`` or keyword settings). At construction it takes the
``analysis=`` the caller already has or analyses the model with the spectral engine (:func:`htsr.analyze`, preset
``"tempbalance"``), reads each layer's metric through :meth:`htsr.Analysis.metric` (NaN policy ``"nan"``), decides
which layers (or transformer blocks, :func:`htsr.nn.block_of`) are tuned,
and splits the optimizer's parameter groups so that each tuned unit has its own group, **matched by module
name**. Each :meth:`TempBalance.step` then

1. restores every group's *base* rate (the multiplier removed),
2. steps the user's base schedule (``base_scheduler``, any ``torch.optim.lr_scheduler`` built by a factory on the
   regrouped optimizer) or takes ``step(base_lr=...)``,
3. every ``interval`` calls, reruns the analysis on the tuned layers and maps the metric to multipliers,
4. sets each group's ``lr = base_rate * multiplier`` (untuned groups: multiplier 1).

Fixes of the reference code (``YefanZhou/TempBalance``, ``ZihangHLiu/ModelBalancing``), each documented here:

* Parameter groups are matched to layers by module name (group key ``tb_unit``), never by position; the
  reference rewrote ``param_groups[i]`` assuming an order that any other group layout breaks.
* Norm layers follow their layer by the reference's name rule (``norms="name"``: ``...bnK`` gets the rate of
  ``...convK``), so a ResNet's shortcut BatchNorm and its stem BatchNorm, whose convs are not tuned, keep the base
  rate as in the reference. ``norms="order"`` pairs a norm with the nearest preceding tuned layer *with the same
  parent module* (the reference's ``layernorm=True`` paired a LayerNorm with whichever Linear came before it in
  module order, which in pre-LN transformers is the previous block's last projection).
* A unit whose metric is NaN (failed fit, non-finite weights) keeps the base rate and the log says so; the
  reference fed NaN into ``np.interp`` and set NaN learning rates. All-equal metrics get the map's midpoint.
* Existing parameter groups are kept: each is split by unit with its own hyper-parameters (weight decay ...)
  and its own base rate, so the Hugging Face decay / no-decay split survives.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from htsr.errors import ConfigError, HtsrError
from htsr.nn import Patterns, block_of, is_norm, parent
from htsr.tempbalance.config import TempBalanceConfig, resolve
from htsr.tempbalance.mapping import get_mapping
from htsr.training.loop import Callback, TrainState

log = logging.getLogger(__name__)

STATE_VERSION = 1


class TempBalanceError(HtsrError):
    """TempBalance cannot run on this model/optimizer (no eligible layer, state mismatch)."""


@functools.lru_cache(maxsize=1)
def _blas_controller() -> Any:
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()  # finding the BLAS libraries costs ~0.1 s: once per process


class TempBalance:
    """Per-layer learning rates from each layer's heavy-tail metric (TempBalance, NeurIPS'23; Model Balancing,
    EMNLP'24). Feels like a ``torch.optim.lr_scheduler``: ``step()``, ``get_last_lr()``, ``state_dict()``,
    ``load_state_dict()``.

    Args:
        model: the network being trained.
        optimizer: any torch optimizer over (some of) the model's parameters, not yet wrapped by an LR scheduler.
            Its groups are split by unit in place; each group keeps its hyper-parameters.
        base_scheduler: a factory ``optimizer -> scheduler`` for the global schedule (cosine, warmup + linear,
            StepLR ...), called on the regrouped optimizer; ``None``: constant base rate (or ``step(base_lr=)``).
        config: a :class:`~htsr.tempbalance.config.TempBalanceConfig` (or a dict of its fields); default: the
            NeurIPS'23 recipe.
        analysis: an :class:`htsr.Analysis` of ``model`` the caller already has, used for the initial selection
            and multipliers instead of analysing the model again (its rows decide which layers are analysable);
            recomputations during training use ``config.preset``.
        **settings: any :class:`~htsr.tempbalance.config.TempBalanceConfig` field, applied over ``config``
            (``mapping="rank"``, ``unit="block"``, ``interval=10``, ``exclude=["*.shortcut.*"]`` ...).
    Attributes (after construction): ``config``, ``units_`` (tuned unit names), ``layers_`` (unit -> its analysed
    layers), ``excluded_`` (layer -> why not tuned), ``multipliers_``, ``values_`` (unit -> metric), ``history``
    (DataFrame: one row per unit per update), ``metric_time_s`` (total time spent in recomputation).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        base_scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
        config: TempBalanceConfig | dict[str, Any] | None = None,
        analysis: Any = None,
        **settings: Any,
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ConfigError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        cfg = resolve(config, settings)
        if base_scheduler is not None and (not callable(base_scheduler) or hasattr(base_scheduler, "step")):
            raise ConfigError("base_scheduler must be a factory optimizer -> scheduler (e.g. "
                              "lambda opt: CosineAnnealingLR(opt, T_max=100)), not a scheduler instance: the base "
                              "schedule has to be built on the optimizer after TempBalance split its groups")
        if analysis is not None and not hasattr(analysis, "metric"):
            raise ConfigError(f"analysis must be an htsr.Analysis, got {type(analysis).__name__}")
        for g in optimizer.param_groups:
            if "initial_lr" in g:
                raise ConfigError("the optimizer is already driven by an LR scheduler (its groups have "
                                  "'initial_lr'); build TempBalance first and pass the schedule as "
                                  "base_scheduler=lambda opt: Scheduler(opt, ...)")
            if "tb_unit" in g:
                raise ConfigError("the optimizer's groups were already split by a TempBalance instance")
            if "lr" not in g:
                raise ConfigError("every optimizer parameter group needs an 'lr'")
        self.model = model
        self.optimizer = optimizer
        self.config = cfg
        self._map = get_mapping(cfg.mapping, s1=cfg.s1, s2=cfg.s2, s_min=cfg.s_min, s_max=cfg.s_max,
                                temperature=cfg.temperature)
        dev = {}
        if "device" not in cfg.analysis_options:
            p0 = next((p.device for p in model.parameters()), torch.device("cpu"))
            dev["device"] = "cuda" if p0.type == "cuda" else "cpu"
        self._device = dev
        self._analysis_config = cfg.analysis_config(**dev)

        self.step_count = 0
        self.n_updates = 0
        self.metric_time_s = 0.0
        self.records: list[dict[str, Any]] = []
        self.excluded_: dict[str, str] = {}
        self._warned_external = False

        t0 = time.perf_counter()
        if analysis is None:
            analysis = self._analyze(None)
        else:
            given = (getattr(analysis, "metadata", None) or {}).get("preset")
            if given is not None and given != cfg.preset:
                log.warning("TempBalance: the analysis given was computed with preset %r; recomputations during "
                            "training use preset %r", given, cfg.preset)
        t_analysis = time.perf_counter() - t0
        t1 = time.perf_counter()
        self._select(analysis)
        self._regroup()
        self.metric_time_s += time.perf_counter() - t1
        # the base schedule sees every group at its base rate (torch schedulers record initial_lr here)
        self.base_scheduler = base_scheduler(optimizer) if base_scheduler is not None else None
        self._read_base()
        self.multipliers_ = {u: 1.0 for u in self.units_}
        self.values_ = {u: math.nan for u in self.units_}
        if cfg.update_at_init:
            self._update(analysis, t_analysis)
        else:
            self.metric_time_s += t_analysis
        self._apply()

    # ------------------------------------------------------------------ construction
    def _analyze(self, layers: Sequence[str] | None):
        from htsr.spectra.analysis import analyze

        cfg = self._analysis_config
        if layers is not None:
            cfg = self.config.analysis_config(**self._device,
                                              layers=tuple("re:^" + re.escape(n) + "$" for n in layers))
        # BLAS threads as many as torch uses: on a busy box, spin-waiting BLAS threads beside a training loop
        # made one analysis 100x slower.
        with _blas_controller().limit(limits=max(1, torch.get_num_threads()), user_api="blas"):
            return analyze(self.model, config=cfg)

    def _select(self, analysis) -> None:
        cfg = self.config
        kinds = self._analysis_config.kinds
        modules = dict(self.model.named_modules())
        params = dict(self.model.named_parameters())
        rows = [r for r in analysis.rows if r["kind"] in kinds and not r["reason"].startswith("embedding")]
        in_opt = {id(p) for g in self.optimizer.param_groups for p in g["params"]}
        names = [r["module"] for r in rows]
        exclude = Patterns(cfg.exclude)
        eligible: list[str] = []
        for i, r in enumerate(rows):
            name = r["module"]
            if r["name"] != name:
                raise ConfigError(f"row {r['name']!r}: split matrices are not supported by TempBalance")
            why = ""
            if cfg.exclude_first and i == 0:
                why = "first layer (exclude_first=True)"
            elif cfg.exclude_last and i == len(rows) - 1:
                why = "last layer (exclude_last=True)"
            elif r["status"] == "skipped":
                why = f"too small to fit: {r['reason']}"
            elif exclude.match(name):
                why = "matched exclude="
            elif r["param"] not in params or not params[r["param"]].requires_grad:
                why = "frozen (requires_grad=False)" if r["param"] in params else "not a parameter of the model"
            elif id(params[r["param"]]) not in in_opt:
                why = "its weight is not in the optimizer"
            if why:
                self.excluded_[name] = why
            else:
                eligible.append(name)
        layer_unit: dict[str, str] = {}
        if cfg.unit == "block":
            for name in eligible:
                blk = block_of(name, cfg.block_pattern)
                if blk is None:
                    self.excluded_[name] = f"not inside a block (block_pattern {cfg.block_pattern!r})"
                else:
                    layer_unit[name] = blk
        else:
            layer_unit = {n: n for n in eligible}
        if not layer_unit:
            detail = "; ".join(f"{k}: {v}" for k, v in self.excluded_.items()) or "no Linear/Conv layer found"
            raise TempBalanceError(f"no layer of the model is eligible for TempBalance ({detail}). Expected "
                                   f"trainable layers of kind {', '.join(kinds)} with >= "
                                   f"{self._analysis_config.min_evals} eigenvalues; lower "
                                   "analysis_options['min_evals'] or set exclude_first/last")
        self.units_ = list(dict.fromkeys(layer_unit.values()))
        self.layers_ = {u: [n for n, uu in layer_unit.items() if uu == u] for u in self.units_}
        # parameter -> unit, by name
        owner: dict[int, str] = {}
        if cfg.unit == "block":
            for u in self.units_:
                for pname, p in params.items():
                    if pname.startswith(u + "."):
                        owner.setdefault(id(p), u)
        else:
            for name in eligible:
                for p in modules[name].parameters():
                    owner.setdefault(id(p), name)
            for norm, layer in self._norm_pairs(modules, names).items():
                if layer in layer_unit:
                    for p in modules[norm].parameters(recurse=False):
                        owner.setdefault(id(p), layer)
                    log.debug("norm %s follows %s", norm, layer)
        self._owner = owner
        log.info("TempBalance: %d unit(s) tuned (%s), %d layer(s) not tuned", len(self.units_), cfg.unit,
                 len(self.excluded_))
        for k, v in self.excluded_.items():
            log.info("TempBalance: %s keeps the base rate: %s", k, v)

    def _norm_pairs(self, modules: dict[str, nn.Module], layer_names: list[str]) -> dict[str, str]:
        """norm module -> the analysed layer whose rate it takes (``norms`` rule of the config)."""
        rule = self.config.norms
        if rule == "none":
            return {}
        layers = set(layer_names)
        out: dict[str, str] = {}
        if rule == "name":  # the reference: a BatchNorm "...bnK" follows "...convK" (name.replace("bn", "conv"))
            for name, mod in modules.items():
                if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                    cand = name.replace("bn", "conv")
                    if cand != name and cand in layers:
                        out[name] = cand
            return out
        last_in_parent: dict[str, str] = {}
        for name, mod in modules.items():
            if name in layers:
                last_in_parent[parent(name)] = name
            elif is_norm(mod) and parent(name) in last_in_parent:
                out[name] = last_in_parent[parent(name)]
        return out

    def _regroup(self) -> None:
        old = list(self.optimizer.param_groups)
        new: list[dict[str, Any]] = []
        tuned: list[dict[str, Any]] = []
        for gi, g in enumerate(old):
            hyper = {k: v for k, v in g.items() if k != "params"}
            rest = [p for p in g["params"] if id(p) not in self._owner]
            if rest:
                new.append({**hyper, "params": rest, "tb_unit": None, "tb_base_lr": float(g["lr"]),
                            "tb_multiplier": 1.0, "tb_source_group": gi})
            for u in self.units_:
                ps = [p for p in g["params"] if self._owner.get(id(p)) == u]
                if ps:
                    tuned.append({**hyper, "params": ps, "tb_unit": u, "tb_base_lr": float(g["lr"]),
                                  "tb_multiplier": 1.0, "tb_source_group": gi})
        self.optimizer.param_groups.clear()
        for g in new + tuned:
            self.optimizer.add_param_group(g)

    # ------------------------------------------------------------------ schedule
    def _read_base(self) -> None:
        for g in self.optimizer.param_groups:
            g["tb_base_lr"] = float(g["lr"])

    def _apply(self) -> None:
        for g in self.optimizer.param_groups:
            m = self.multipliers_.get(g["tb_unit"], 1.0) if g["tb_unit"] is not None else 1.0
            g["tb_multiplier"] = m
            g["lr"] = g["tb_base_lr"] * m

    def summary(self) -> dict[str, float]:
        """What the training callbacks log: ``tb_mean_value`` (mean metric over the tuned units, NaN if none is
        finite), ``tb_min_mult``/``tb_max_mult`` and ``tb_time_s`` (time spent recomputing the metric)."""
        vals = [v for v in self.values_.values() if math.isfinite(v)]
        return {"tb_mean_value": float(np.mean(vals)) if vals else math.nan,
                "tb_min_mult": min(self.multipliers_.values()), "tb_max_mult": max(self.multipliers_.values()),
                "tb_time_s": self.metric_time_s}

    def step(self, base_lr: float | None = None) -> None:
        """One scheduling period (an epoch or a step): advance the base schedule, recompute the metric every
        ``interval`` calls, set each group's rate to base rate x multiplier. ``base_lr`` (without a
        base_scheduler): the new global rate for every group, as the reference's ``step(optimizer, lr)``."""
        groups = self.optimizer.param_groups
        if not self._warned_external and any(not math.isclose(g["lr"], g["tb_base_lr"] * g["tb_multiplier"],
                                                              rel_tol=1e-9, abs_tol=0.0) for g in groups):
            self._warned_external = True
            log.warning("TempBalance: a group's lr was changed outside TempBalance; it is overwritten. Give the "
                        "global schedule as base_scheduler= or step(base_lr=)")
        for g in groups:
            g["lr"] = g["tb_base_lr"]
        if self.base_scheduler is not None:
            if base_lr is not None:
                raise ConfigError("step(base_lr=) and a base_scheduler are exclusive")
            self.base_scheduler.step()
        elif base_lr is not None:
            if not (isinstance(base_lr, int | float) and math.isfinite(base_lr) and base_lr >= 0):
                raise ConfigError(f"base_lr must be a finite number >= 0, got {base_lr!r}")
            for g in groups:
                g["lr"] = float(base_lr)
        self._read_base()
        self.step_count += 1
        if self.step_count % self.config.interval == 0:
            t0 = time.perf_counter()
            analysis = self._analyze([n for u in self.units_ for n in self.layers_[u]])
            self._update(analysis, time.perf_counter() - t0)
        self._apply()

    def update_metrics(self) -> None:
        """Recompute the metric and multipliers now (outside the ``interval`` cadence) and apply them."""
        t0 = time.perf_counter()
        analysis = self._analyze([n for u in self.units_ for n in self.layers_[u]])
        self._update(analysis, time.perf_counter() - t0)
        self._apply()

    def _update(self, analysis, analysis_time: float) -> None:
        t0 = time.perf_counter()
        layers = [n for u in self.units_ for n in self.layers_[u]]
        # NaN policy "nan": a layer whose fit failed or is missing stays NaN, and a unit with no finite layer keeps
        # the base rate (below); only successful fits count (a failed fit keeps its norms but not its metric)
        vec = analysis.metric(self.config.metric, layers, policy="nan", statuses=("success",))
        layer_vals = dict(zip(vec.names, vec.values.tolist(), strict=True))
        values: dict[str, float] = {}
        reasons = vec.reasons
        for u in self.units_:
            vals = [layer_vals[n] for n in self.layers_[u] if math.isfinite(layer_vals[n])]
            values[u] = float(np.mean(vals)) if vals else math.nan
        ok = [u for u in self.units_ if math.isfinite(values[u])]
        mult = {u: 1.0 for u in self.units_}
        if ok:
            for u, m in zip(ok, self._map(np.array([values[u] for u in ok])), strict=True):
                mult[u] = float(m)
        for u in self.units_:
            if not math.isfinite(values[u]):
                why = "; ".join(f"{n}: {reasons.get(n, '?')}" for n in self.layers_[u])
                log.warning("TempBalance update %d: %s has no finite %s (%s); it keeps the base learning rate",
                            self.n_updates, u, self.config.metric, why)
        self.values_, self.multipliers_ = values, mult
        elapsed = analysis_time + time.perf_counter() - t0
        self.metric_time_s += elapsed
        lrs = {}
        for g in self.optimizer.param_groups:
            if g["tb_unit"] is not None:
                lrs.setdefault(g["tb_unit"], g["tb_base_lr"] * mult[g["tb_unit"]])
        for u in self.units_:
            self.records.append({"update": self.n_updates, "step": self.step_count, "unit": u,
                                 "metric": self.config.metric, "value": values[u], "multiplier": mult[u],
                                 "lr": lrs.get(u, math.nan), "fallback": not math.isfinite(values[u]),
                                 "time_s": elapsed})
        for u in self.units_:
            log.debug("TempBalance update %d: %s %s=%.4g multiplier=%.4g lr=%.4g", self.n_updates, u,
                      self.config.metric, values[u], mult[u], lrs.get(u, math.nan))
        fin = [values[u] for u in ok]
        log.info("TempBalance update %d (step %d): %d/%d units with finite %s%s, multipliers %.3g..%.3g, %.3f s",
                 self.n_updates, self.step_count, len(ok), len(self.units_), self.config.metric,
                 f" in [{min(fin):.3g}, {max(fin):.3g}]" if fin else "", min(mult.values()), max(mult.values()),
                 elapsed)
        self.n_updates += 1

    # ------------------------------------------------------------------ torch scheduler protocol
    def get_last_lr(self) -> list[float]:
        """Current learning rate of every parameter group (group 0 is the untuned group when there is one)."""
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    @property
    def history(self) -> pd.DataFrame:
        """One row per tuned unit per update: update, step, unit, metric, value, multiplier, lr, fallback, time_s."""
        return pd.DataFrame(self.records, columns=["update", "step", "unit", "metric", "value", "multiplier", "lr",
                                                   "fallback", "time_s"])

    def group_of(self, unit: str) -> list[dict[str, Any]]:
        """The optimizer groups of a tuned unit (one per source group holding its parameters)."""
        if unit not in self.units_:
            raise KeyError(f"{unit!r} is not a tuned unit; tuned: {self.units_}")
        return [g for g in self.optimizer.param_groups if g["tb_unit"] == unit]

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: counters, multipliers, base rates, the log and the base schedule."""
        return {
            "version": STATE_VERSION,
            "units": list(self.units_),
            "group_units": [g["tb_unit"] for g in self.optimizer.param_groups],
            "step_count": self.step_count,
            "n_updates": self.n_updates,
            "multipliers": dict(self.multipliers_),
            "values": dict(self.values_),
            "base_lrs": [float(g["tb_base_lr"]) for g in self.optimizer.param_groups],
            "metric_time_s": self.metric_time_s,
            "records": [dict(r) for r in self.records],
            "base_scheduler": self.base_scheduler.state_dict() if self.base_scheduler is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output; the model/optimizer must have the same tuned units and groups."""
        if state.get("version") != STATE_VERSION:
            raise TempBalanceError(f"unsupported TempBalance state version {state.get('version')!r}")
        if list(state["units"]) != self.units_ or list(state["group_units"]) != [
                g["tb_unit"] for g in self.optimizer.param_groups]:
            raise TempBalanceError("the saved TempBalance state has different tuned units or groups than this "
                                   f"one (saved {state['units']}, here {self.units_})")
        if (state["base_scheduler"] is None) != (self.base_scheduler is None):
            raise TempBalanceError("the saved state and this TempBalance differ in having a base_scheduler")
        self.step_count = int(state["step_count"])
        self.n_updates = int(state["n_updates"])
        self.multipliers_ = {u: float(state["multipliers"][u]) for u in self.units_}
        self.values_ = {u: float(state["values"][u]) for u in self.units_}
        self.metric_time_s = float(state["metric_time_s"])
        self.records = [dict(r) for r in state["records"]]
        if self.base_scheduler is not None:
            self.base_scheduler.load_state_dict(state["base_scheduler"])
        for g, b in zip(self.optimizer.param_groups, state["base_lrs"], strict=True):
            g["tb_base_lr"] = float(b)
        self._apply()


class TempBalanceCallback(Callback):
    """Drives a :class:`TempBalance` from :func:`htsr.training.train`: ``tb.step()`` after every epoch
    (``every="epoch"``) or optimizer step (``every="step"``). Adds ``tb_mean_value``, ``tb_min_mult``,
    ``tb_max_mult`` and ``tb_time_s`` (cumulative recomputation time) to each epoch's history row."""

    def __init__(self, tb: TempBalance, every: str = "epoch") -> None:
        if every not in ("epoch", "step"):
            raise ConfigError(f"every must be 'epoch' or 'step', got {every!r}")
        self.tb, self.every = tb, every

    def on_step_end(self, state: TrainState, logs: dict[str, Any]) -> None:
        if self.every == "step":
            self.tb.step()

    def on_epoch_end(self, state: TrainState, logs: dict[str, Any]) -> None:
        if self.every == "epoch":
            self.tb.step()
        logs.update(self.tb.summary())
