"""The TempBalance scheduler: per-layer learning rates from heavy-tail metrics, recomputed during training.

``TempBalance`` wraps any ``torch.optim.Optimizer``. At construction it analyses the model with the spectral
engine (:func:`htsr.analyze`, preset ``"tempbalance"``), decides which layers (or transformer blocks) are tuned,
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
* Norm layers follow the nearest preceding Linear/Conv **with the same parent module** (``norms="order"``);
  the reference's ``layernorm=True`` paired a LayerNorm with whichever Linear came before it in module order,
  which in pre-LN transformers is the previous block's last projection. ``norms="name"`` is the reference's
  ``bn -> conv`` name rule.
* A unit whose metric is NaN (failed fit, non-finite weights) keeps the base rate and the log says so; the
  reference fed NaN into ``np.interp`` and set NaN learning rates. All-equal metrics get the map's midpoint.
* Existing parameter groups are kept: each is split by unit with its own hyper-parameters (weight decay ...)
  and its own base rate, so the Hugging Face decay / no-decay split survives.
"""

from __future__ import annotations

import fnmatch
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
from htsr.spectra.config import make_config
from htsr.tempbalance.mapping import MAPPINGS, get_mapping
from htsr.training.loop import Callback, TrainState

log = logging.getLogger(__name__)

METRICS = ("alpha", "alpha_hat", "spectral_norm", "log_spectral_norm")
UNITS = ("layer", "block")
NORMS = ("order", "name", "none")
#: Reference regex ``(.*?)\.(\d+)\.(.*)``: the block of ``encoder.layer.3.attention.self.query`` is
#: ``encoder.layer.3``; of ``layer1.0.conv1`` it is ``layer1.0``.
BLOCK_PATTERN = r"^(.*?\.\d+)\."
STATE_VERSION = 1
_DOMAIN = {"sqrt": ("alpha", "spectral_norm"), "log2": ("alpha",)}


class TempBalanceError(HtsrError):
    """TempBalance cannot run on this model/optimizer (no eligible layer, state mismatch)."""


@functools.lru_cache(maxsize=1)
def _blas_controller() -> Any:
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()  # finding the BLAS libraries costs ~0.1 s: once per process


def _is_norm(mod: nn.Module) -> bool:
    if isinstance(mod, nn.modules.batchnorm._NormBase | nn.LayerNorm | nn.GroupNorm):
        return True
    name = type(mod).__name__.lower()
    return "norm" in name and any(True for _ in mod.parameters(recurse=False))


def _parent(name: str) -> str:
    return name.rpartition(".")[0]


def _glob(patterns: Sequence[str], name: str) -> bool:
    for p in patterns:
        if p.startswith("re:"):
            if re.search(p[3:], name):
                return True
        elif fnmatch.fnmatchcase(name, p):
            return True
    return False


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
        mapping: ``linear`` (default, s1/s2), ``rank``, ``sqrt``, ``log2`` or ``sigmoid`` (s_min/s_max/temperature).
        metric: ``alpha`` (default), ``alpha_hat``, ``spectral_norm`` (lambda_max, as the reference) or
            ``log_spectral_norm``.
        unit: ``layer`` (default) or ``block`` (block-averaged metric; every parameter under the block's module
            path, norms included, gets the block's rate).
        interval: recompute the metric every ``interval`` calls of :meth:`step` (epochs or steps, whichever
            cadence the caller steps at).
        exclude_first / exclude_last: leave the first / last analysable layer (module order) at the base rate.
        exclude: globs (or ``re:REGEX``) on module names never tuned.
        norms: how norm layers follow a tuned layer with ``unit="layer"``: ``order`` (default), ``name``
            (BatchNorm ``...bnK`` follows ``...convK``), ``none``.
        preset / analysis_options: spectral-engine preset and overrides (e.g. ``xmin_pos=1.5``, ``min_evals=12``,
            ``kinds=("linear", "conv1d")``, ``threshold=1e-5``).
        update_at_init: compute the multipliers from the initial weights at construction (the reference does).
    Attributes (after construction): ``units_`` (tuned unit names), ``layers_`` (unit -> its analysed layers),
    ``excluded_`` (layer -> why not tuned), ``multipliers_``, ``values_`` (unit -> metric), ``history``
    (DataFrame: one row per unit per update), ``metric_time_s`` (total time spent in recomputation).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        base_scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
        mapping: str = "linear",
        metric: str = "alpha",
        unit: str = "layer",
        interval: int = 1,
        s1: float = 0.5,
        s2: float = 1.5,
        s_min: float = 1.0,
        s_max: float = 1.0,
        temperature: float = 10.0,
        exclude_first: bool = True,
        exclude_last: bool = True,
        exclude: Sequence[str] = (),
        norms: str = "order",
        block_pattern: str = BLOCK_PATTERN,
        preset: str = "tempbalance",
        analysis_options: dict[str, Any] | None = None,
        update_at_init: bool = True,
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ConfigError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if metric not in METRICS:
            raise ConfigError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
        if unit not in UNITS:
            raise ConfigError(f"unknown unit {unit!r}; expected 'layer' or 'block'")
        if norms not in NORMS:
            raise ConfigError(f"unknown norms option {norms!r}; expected one of {', '.join(NORMS)}")
        if mapping not in MAPPINGS:
            raise ConfigError(f"unknown mapping {mapping!r}; expected one of {', '.join(MAPPINGS)}")
        if mapping in _DOMAIN and metric not in _DOMAIN[mapping]:
            raise ConfigError(f"the {mapping} map is defined for metric {' or '.join(_DOMAIN[mapping])} only "
                              f"(got {metric!r}, which can be <= {0 if mapping == 'sqrt' else 1}); "
                              "use mapping='linear', 'rank' or 'sigmoid'")
        if not isinstance(interval, int) or interval < 1:
            raise ConfigError(f"interval must be an integer >= 1, got {interval!r}")
        if base_scheduler is not None and (not callable(base_scheduler) or hasattr(base_scheduler, "step")):
            raise ConfigError("base_scheduler must be a factory optimizer -> scheduler (e.g. "
                              "lambda opt: CosineAnnealingLR(opt, T_max=100)), not a scheduler instance: the base "
                              "schedule has to be built on the optimizer after TempBalance split its groups")
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
        self.mapping, self.metric, self.unit, self.interval = mapping, metric, unit, interval
        self.s1, self.s2, self.s_min, self.s_max, self.temperature = s1, s2, s_min, s_max, temperature
        self.exclude_first, self.exclude_last, self.exclude = exclude_first, exclude_last, tuple(exclude)
        self.norms, self.block_pattern = norms, block_pattern
        self._map = get_mapping(mapping, s1=s1, s2=s2, s_min=s_min, s_max=s_max, temperature=temperature)
        opts = dict(analysis_options or {})
        for bad in ("layers", "split_qkv", "randomize", "gof"):
            if bad in opts:
                raise ConfigError(f"analysis option {bad!r} is managed by TempBalance; remove it")
        if "device" not in opts:
            dev = next((p.device for p in model.parameters()), torch.device("cpu"))
            opts["device"] = "cuda" if dev.type == "cuda" else "cpu"
        opts.setdefault("workers", 1)
        self._preset, self._options = preset, opts
        self._config = make_config(preset, **opts)

        self.step_count = 0
        self.n_updates = 0
        self.metric_time_s = 0.0
        self.records: list[dict[str, Any]] = []
        self.excluded_: dict[str, str] = {}
        self._warned_external = False

        t0 = time.perf_counter()
        analysis = self._analyze(None)
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
        if update_at_init:
            self._update(analysis, t_analysis)
        else:
            self.metric_time_s += t_analysis
        self._apply()

    # ------------------------------------------------------------------ construction
    def _analyze(self, layers: Sequence[str] | None):
        from htsr.spectra.analysis import analyze

        cfg = self._config
        if layers is not None:
            cfg = make_config(self._preset, **self._options,
                              layers=tuple("re:^" + re.escape(n) + "$" for n in layers))
        # BLAS threads as many as torch uses: on a busy box, spin-waiting BLAS threads beside a training loop
        # made one analysis 100x slower.
        with _blas_controller().limit(limits=max(1, torch.get_num_threads()), user_api="blas"):
            return analyze(self.model, config=cfg)

    def _select(self, analysis) -> None:
        cfg = self._config
        modules = dict(self.model.named_modules())
        params = dict(self.model.named_parameters())
        rows = [r for r in analysis.rows if r["kind"] in cfg.kinds and not r["reason"].startswith("embedding")]
        in_opt = {id(p) for g in self.optimizer.param_groups for p in g["params"]}
        names = [r["module"] for r in rows]
        eligible: list[str] = []
        for i, r in enumerate(rows):
            name = r["module"]
            if r["name"] != name:
                raise ConfigError(f"row {r['name']!r}: split matrices are not supported by TempBalance")
            why = ""
            if self.exclude_first and i == 0:
                why = "first layer (exclude_first=True)"
            elif self.exclude_last and i == len(rows) - 1:
                why = "last layer (exclude_last=True)"
            elif r["status"] == "skipped":
                why = f"too small to fit: {r['reason']}"
            elif _glob(self.exclude, name):
                why = "matched exclude="
            elif r["param"] not in params or not params[r["param"]].requires_grad:
                why = "frozen (requires_grad=False)"
            elif id(params[r["param"]]) not in in_opt:
                why = "its weight is not in the optimizer"
            if why:
                self.excluded_[name] = why
            else:
                eligible.append(name)
        layer_unit: dict[str, str] = {}
        if self.unit == "block":
            pat = re.compile(self.block_pattern)
            for name in eligible:
                m = pat.match(name)
                if m is None:
                    self.excluded_[name] = f"not inside a block (block_pattern {self.block_pattern!r})"
                else:
                    layer_unit[name] = m.group(1)
        else:
            layer_unit = {n: n for n in eligible}
        if not layer_unit:
            detail = "; ".join(f"{k}: {v}" for k, v in self.excluded_.items()) or "no Linear/Conv layer found"
            raise TempBalanceError(f"no layer of the model is eligible for TempBalance ({detail}). Expected "
                                   f"trainable layers of kind {', '.join(cfg.kinds)} with >= {cfg.min_evals} "
                                   "eigenvalues; lower analysis_options['min_evals'] or set exclude_first/last")
        self.units_ = list(dict.fromkeys(layer_unit.values()))
        self.layers_ = {u: [n for n, uu in layer_unit.items() if uu == u] for u in self.units_}
        # parameter -> unit, by name
        owner: dict[int, str] = {}
        if self.unit == "block":
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
        log.info("TempBalance: %d unit(s) tuned (%s), %d layer(s) not tuned", len(self.units_), self.unit,
                 len(self.excluded_))
        for k, v in self.excluded_.items():
            log.info("TempBalance: %s keeps the base rate: %s", k, v)

    def _norm_pairs(self, modules: dict[str, nn.Module], layer_names: list[str]) -> dict[str, str]:
        if self.norms == "none":
            return {}
        layers = set(layer_names)
        out: dict[str, str] = {}
        if self.norms == "name":
            for name, mod in modules.items():
                if _is_norm(mod):
                    head, _, last = name.rpartition(".")
                    cand = (head + "." if head else "") + last.replace("bn", "conv")
                    if cand != name and cand in layers:
                        out[name] = cand
            return out
        last_in_parent: dict[str, str] = {}
        for name, mod in modules.items():
            if name in layers:
                last_in_parent[_parent(name)] = name
            elif _is_norm(mod) and _parent(name) in last_in_parent:
                out[name] = last_in_parent[_parent(name)]
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
        if self.step_count % self.interval == 0:
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

    def _layer_value(self, row: dict | None) -> tuple[float, str]:
        if row is None:
            return math.nan, "layer missing from the analysis"
        if row["status"] != "success":
            return math.nan, f"{row['status']}: {row['reason']}"
        v = row.get(self.metric)
        v = math.nan if v is None else float(v)
        return v, ("" if math.isfinite(v) else f"non-finite {self.metric}")

    def _update(self, analysis, analysis_time: float) -> None:
        t0 = time.perf_counter()
        by_name = {r["module"]: r for r in analysis.rows}
        values: dict[str, float] = {}
        reasons: dict[str, str] = {}
        layer_vals: dict[str, float] = {}
        for u in self.units_:
            vals = []
            for n in self.layers_[u]:
                v, why = self._layer_value(by_name.get(n))
                layer_vals[n] = v
                if math.isfinite(v):
                    vals.append(v)
                else:
                    reasons[n] = why
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
                            self.n_updates, u, self.metric, why)
        self.values_, self.multipliers_ = values, mult
        elapsed = analysis_time + time.perf_counter() - t0
        self.metric_time_s += elapsed
        lrs = {}
        for g in self.optimizer.param_groups:
            if g["tb_unit"] is not None:
                lrs.setdefault(g["tb_unit"], g["tb_base_lr"] * mult[g["tb_unit"]])
        for u in self.units_:
            self.records.append({"update": self.n_updates, "step": self.step_count, "unit": u,
                                 "metric": self.metric, "value": values[u], "multiplier": mult[u],
                                 "lr": lrs.get(u, math.nan), "fallback": not math.isfinite(values[u]),
                                 "time_s": elapsed})
        for u in self.units_:
            log.debug("TempBalance update %d: %s %s=%.4g multiplier=%.4g lr=%.4g", self.n_updates, u, self.metric,
                      values[u], mult[u], lrs.get(u, math.nan))
        fin = [values[u] for u in ok]
        log.info("TempBalance update %d (step %d): %d/%d units with finite %s%s, multipliers %.3g..%.3g, %.3f s",
                 self.n_updates, self.step_count, len(ok), len(self.units_), self.metric,
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
