"""The experiment: SER against the number of poisons, secret duplication, secret length and the gap between
poisons and secrets, over seeds, as one resumable :func:`htsr.experiments.run_sweep`.

Design ``oat`` (default): one factor at a time around the base config (the other factors at their base values;
the base point is shared); ``full``: the Cartesian product. Each cell loads the pretrained model from disk (so
cells are independent and can run on Ray workers) and runs one :func:`~htsr.phishing.attack.run_phish`.
The summary pools the secrets over seeds: SER = extracted / (secrets x seeds) with a 95% Wilson interval (the
secrets of one run share a model, so the interval is optimistic when runs differ a lot).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from htsr.experiments import Cell, ResultStore, grid, run_sweep
from htsr.phishing.config import PhishConfig
from htsr.phishing.metrics import ser_summary

__all__ = ["FACTORS", "design", "phish_cell", "summarize", "summarize_points", "sweep"]

#: The swept factors (PhishConfig fields).
FACTORS = ("num_poisons", "duplication", "secret_len", "gap")
KINDS = ("exact", "random", "any")


def design(base: PhishConfig, axes: dict[str, Sequence[int]], seeds: Sequence[int], full: bool = False) -> list[Cell]:
    """The cells: ``axes`` maps factors to values (a factor left out stays at ``base``'s value)."""
    from htsr.errors import ConfigError

    bad = sorted(set(axes) - set(FACTORS))
    if bad:
        raise ConfigError(f"unknown sweep factor(s) {bad}; expected {', '.join(FACTORS)}")
    if not seeds:
        raise ConfigError("give at least one seed")
    values = {f: list(axes.get(f) or [getattr(base, f)]) for f in FACTORS}
    for f, vs in values.items():  # every value must make a valid config (errors before any training)
        for v in vs:
            base.replace(**{f: v})
    if full:
        return grid(**values, seed=list(seeds))
    points: list[dict[str, int]] = []
    for f in FACTORS:
        for v in values[f]:
            p = {g: getattr(base, g) for g in FACTORS}
            p[f] = v
            if p not in points:
                points.append(p)
    return [Cell({**p, "seed": s}) for p in points for s in seeds]


def phish_cell(model_dir: str, base: dict[str, Any], *, seed: int, **factors: Any) -> tuple[dict, dict]:
    """One cell: load the model, run the attack, return (metrics, the run's JSON)."""
    from htsr.phishing.attack import run_phish
    from htsr.phishing.model import load_model

    cfg = PhishConfig.from_dict({**base, **factors})
    model, tok = load_model(model_dir, cfg.device)
    r = run_phish(model, tok, cfg, seed)
    metrics = {k: r[k] for k in ("ser_exact", "ser_random", "ser_any", "ser_exact_last", "ser_random_last",
                                 "ser_any_last", "num_secrets", "steps", "final_loss", "train_s", "attack_s")}
    return metrics, r


def sweep(model_dir: str | Path, base: PhishConfig, cells: list[Cell], out: str | Path, *, executor: Any = None,
          progress: bool | None = None) -> pd.DataFrame:
    """Run (or resume) the cells into ``out`` (results.csv, cells/*.json)."""
    fn = functools.partial(phish_cell, str(model_dir), base.to_dict())
    return run_sweep(fn, cells, ResultStore(out), executor=executor, progress=progress)


def summarize(table: pd.DataFrame, base: PhishConfig, axes: dict[str, Sequence[int]] | None = None) -> pd.DataFrame:
    """One row per (factor, value): SER exact / randomised / either with Wilson bounds, pooled over seeds, from
    the cells where every other factor is at its base value."""
    ok = table[table["status"] == "ok"] if "status" in table.columns else table
    rows = []
    for f in FACTORS:
        others = [g for g in FACTORS if g != f]
        sel = ok
        for g in others:
            sel = sel[sel[g] == getattr(base, g)]
        values = sorted(set(sel[f])) if axes is None or not axes.get(f) else list(axes[f])
        for v in values:
            part = sel[sel[f] == v]
            if part.empty:
                continue
            n = int(part["num_secrets"].sum())
            row: dict[str, Any] = {"factor": f, "value": int(v), "seeds": int(len(part))}
            for kind in KINDS:
                k = int(round((part[f"ser_{kind}"] * part["num_secrets"]).sum()))
                s = ser_summary(k, n)
                row.update({f"ser_{kind}": s["ser"], f"ser_{kind}_lo": s["ser_lo"], f"ser_{kind}_hi": s["ser_hi"]})
                row[f"extracted_{kind}"] = k
            row["secrets"] = n
            row["ser_any_seed_sd"] = float(part["ser_any"].std(ddof=1)) if len(part) > 1 else 0.0
            rows.append(row)
    return pd.DataFrame(rows)


def summarize_points(table: pd.DataFrame) -> pd.DataFrame:
    """One row per point of the design (every factor's value), pooled over seeds, with Wilson bounds: the table
    of a ``full`` design."""
    ok = table[table["status"] == "ok"] if "status" in table.columns else table
    rows = []
    for point, part in ok.groupby(list(FACTORS), sort=True):
        n = int(part["num_secrets"].sum())
        row: dict[str, Any] = {**{f: int(v) for f, v in zip(FACTORS, point, strict=True)}, "seeds": int(len(part)),
                               "secrets": n}
        for kind in KINDS:
            k = int(round((part[f"ser_{kind}"] * part["num_secrets"]).sum()))
            s = ser_summary(k, n)
            row.update({f"ser_{kind}": s["ser"], f"ser_{kind}_lo": s["ser_lo"], f"ser_{kind}_hi": s["ser_hi"]})
        rows.append(row)
    return pd.DataFrame(rows)
