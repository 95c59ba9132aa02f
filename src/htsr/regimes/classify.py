"""From a results table (one row per ``(seed, temperature, density)`` cell) to the phase diagram: the mean over
seeds per ``(temperature, density)``, the normalised test error, the regime of each cell, the advice it implies,
and two checks of the paper's claims (case study 1 and the "sharp transition").

Regimes (research notes 2.3), with the cut-offs of :class:`~htsr.regimes.config.Cutoffs`:

* **I**: ``mc < mc_threshold`` (a barrier between retrained copies sharing a mask): raise the temperature;
* **II-A**: connected, ``cka < cka_threshold`` (dissimilar outputs): lower the temperature;
* **II-B**: connected, similar outputs: keep it.

"Temperature" is the knob's heat, not its value: fewer epochs, a smaller batch or a larger SAM rho is hotter
(:data:`htsr.regimes.config.KNOBS`). All functions here are pure pandas/numpy.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from htsr.errors import ConfigError
from htsr.regimes.config import KNOBS, REGIMES, Cutoffs

#: the columns a results table must have
REQUIRED = ("temperature", "density", "mc", "cka", "test_error")
ADVICE = {"I": "raise", "II-A": "lower", "II-B": "keep"}


def check_columns(table: pd.DataFrame, required: Iterable[str] = REQUIRED, what: str = "results table") -> None:
    """:class:`~htsr.errors.ConfigError` naming every missing column."""
    if not isinstance(table, pd.DataFrame):
        raise ConfigError(f"the {what} must be a pandas DataFrame, got {type(table).__name__}")
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise ConfigError(f"the {what} lacks column(s) {', '.join(missing)}; expected {', '.join(required)} "
                          f"(a results.csv written by 'htsr regimes sweep'); it has: "
                          f"{', '.join(map(str, table.columns[:12])) or 'no columns'}")


def knob_of(table: pd.DataFrame, knob: str | None = None) -> str:
    """The temperature knob: ``knob`` if given, else the table's ``knob`` column (one value), else ``epochs``."""
    if knob is None and "knob" in table.columns:
        vals = table["knob"].dropna().unique()
        if len(vals) > 1:
            raise ConfigError(f"the table mixes temperature knobs {sorted(map(str, vals))}; pass one table per knob")
        knob = str(vals[0]) if len(vals) else None
    knob = knob or "epochs"
    if knob not in KNOBS:
        raise ConfigError(f"unknown temperature knob {knob!r}; expected one of {', '.join(KNOBS)}")
    return knob


def heat(values: Iterable[float], knob: str) -> np.ndarray:
    """The heat rank (0 = coldest) of each knob value."""
    v = np.asarray(list(values), dtype=float)
    key = -v if KNOBS[knob]["hot_when"] == "smaller" else v
    order = np.argsort(key, kind="stable")
    rank = np.empty(v.size, dtype=int)
    rank[order] = np.arange(v.size)
    return rank


def aggregate(table: pd.DataFrame, knob: str | None = None) -> pd.DataFrame:
    """Mean over seeds per ``(temperature, density)`` of every metric present (``mc``, ``mc_loss``, ``cka``,
    ``cka_softmax``, ``test_error``, ``dense_test_error`` ...), ``test_error_sd`` (over seeds), ``n`` (seeds),
    ``heat`` (rank, 0 = coldest) and ``normalised_error`` (test error minus its minimum over temperatures at the
    same density). Failed rows (``status != ok``) are left out. A table that is already aggregated (no ``seed``
    column) is accepted as it is."""
    check_columns(table)
    knob = knob_of(table, knob)
    ok = table[table["status"] == "ok"] if "status" in table.columns else table
    if ok.empty:
        raise ConfigError("the results table has no successful cell (status ok)")
    for c in REQUIRED:
        if not pd.api.types.is_numeric_dtype(ok[c]):
            raise ConfigError(f"column {c!r} of the results table is not numeric")
    temps = sorted(ok["temperature"].unique())
    if len(temps) < 2:
        raise ConfigError(f"a phase diagram needs at least 2 temperatures, the table has {[float(t) for t in temps]}")
    bad = ok[(ok["density"] <= 0) | (ok["density"] > 1)]["density"].unique()
    if len(bad):
        raise ConfigError(f"densities must be in (0, 1], the table has {sorted(bad)}")
    skip = {"temperature", "density", "seed", "wall_s", "key", "status", "config_id", "knob", "error", "n"}
    numeric = [c for c in ok.columns if c not in skip and pd.api.types.is_numeric_dtype(ok[c])]
    g = ok.groupby(["temperature", "density"])
    agg = g[numeric].mean()
    if "seed" in ok.columns:  # per-seed rows: the spread over seeds
        agg["test_error_sd"] = g["test_error"].std(ddof=1)
        agg["n"] = g.size()
    elif "n" not in ok.columns:
        agg["n"] = g.size()
    else:
        agg["n"] = g["n"].sum()
    agg = agg.reset_index()
    agg.insert(0, "knob", knob)
    agg["heat"] = _heat_column(agg["temperature"], knob)
    agg["normalised_error"] = agg["test_error"] - agg.groupby("density")["test_error"].transform("min")
    return agg.sort_values(["density", "heat"]).reset_index(drop=True)


def _heat_column(temps: pd.Series, knob: str) -> np.ndarray:
    uniq = sorted(temps.unique())
    rank = dict(zip(uniq, heat(uniq, knob), strict=True))
    return temps.map(rank).to_numpy()


def classify(agg: pd.DataFrame, cutoffs: Cutoffs | None = None) -> pd.DataFrame:
    """``agg`` with a ``regime`` column (I, II-A, II-B; empty where mc or CKA is NaN)."""
    cutoffs = cutoffs or Cutoffs()
    check_columns(agg, ("mc", cutoffs.cka_column), "phase table")
    mc, cka = agg["mc"].to_numpy(float), agg[cutoffs.cka_column].to_numpy(float)
    regime = np.where(mc < cutoffs.mc_threshold, "I", np.where(cka < cutoffs.cka_threshold, "II-A", "II-B"))
    regime = np.where(np.isnan(mc) | (np.isnan(cka) & (mc >= cutoffs.mc_threshold)), "", regime)
    out = agg.copy()
    out["regime"] = regime
    return out


def advise(agg: pd.DataFrame, cutoffs: Cutoffs | None = None, knob: str | None = None) -> pd.DataFrame:
    """Regimes plus the advice of case study 1 for each cell: ``advice`` (raise / lower / keep the temperature),
    ``move`` (what to change on the knob), ``next_temperature`` (the neighbouring grid value in the advised
    direction, NaN when there is none or the advice is keep), ``error_change`` (test error there minus here) and
    ``advice_helps`` (1.0 if the error drops, 0.0 if not, NaN when unchecked)."""
    knob = knob_of(agg, knob)
    out = classify(agg if "heat" in agg.columns else aggregate(agg, knob), cutoffs)
    out["advice"] = out["regime"].map(ADVICE).fillna("")
    out["move"] = out["advice"].map(lambda a: KNOBS[knob].get(a, "keep the temperature") if a else "")
    nxt, change = [], []
    for _, r in out.iterrows():
        step = {"raise": 1, "lower": -1}.get(r["advice"], 0)
        nb = out[(out["density"] == r["density"]) & (out["heat"] == r["heat"] + step)] if step else out.iloc[0:0]
        if nb.empty:
            nxt.append(math.nan)
            change.append(math.nan)
        else:
            nxt.append(float(nb["temperature"].iloc[0]))
            change.append(float(nb["test_error"].iloc[0] - r["test_error"]))
    out["next_temperature"] = nxt
    out["error_change"] = change
    out["advice_helps"] = np.where(np.isnan(change), np.nan, (np.asarray(change) < 0).astype(float))
    return out


def case_study(advised: pd.DataFrame) -> dict[str, Any]:
    """How often moving the temperature one grid step the advised way lowered the test error (cells that have a
    neighbour in that direction), per regime, and the same for the opposite move as a baseline."""
    check_columns(advised, ("density", "heat", "test_error", "advice", "error_change"), "advised table")
    checked = advised[advised["error_change"].notna()]
    out: dict[str, Any] = {"n_checked": int(len(checked)), "n_lowered": int((checked["error_change"] < 0).sum())}
    out["fraction_lowered"] = out["n_lowered"] / out["n_checked"] if out["n_checked"] else math.nan
    out["mean_error_change"] = float(checked["error_change"].mean()) if len(checked) else math.nan
    out["by_regime"] = {reg: {"n_checked": int(len(c)), "n_lowered": int((c["error_change"] < 0).sum())}
                        for reg, c in checked.groupby("regime")}
    opp = []
    for _, r in advised.iterrows():
        step = {"raise": -1, "lower": 1}.get(r["advice"], 0)
        if not step:
            continue
        nb = advised[(advised["density"] == r["density"]) & (advised["heat"] == r["heat"] + step)]
        if not nb.empty:
            opp.append(float(nb["test_error"].iloc[0] - r["test_error"]))
    out["opposite_n_checked"] = len(opp)
    out["opposite_n_lowered"] = int(sum(c < 0 for c in opp))
    out["opposite_fraction_lowered"] = out["opposite_n_lowered"] / len(opp) if opp else math.nan
    return out


def transition(agg: pd.DataFrame) -> pd.DataFrame:
    """Per density: the best temperature (lowest mean test error) and its heat rank, the error of the hottest minus
    the coldest temperature, and the Spearman correlation between heat and test error (negative: hotter helps)."""
    from scipy.stats import spearmanr

    check_columns(agg, ("density", "heat", "temperature", "test_error"), "phase table")
    rows = []
    for d, g in agg.groupby("density"):
        g = g.sort_values("heat")
        best = g.loc[g["test_error"].idxmin()]
        rho = spearmanr(g["heat"], g["test_error"]).statistic if g["test_error"].nunique() > 1 else math.nan
        rows.append({"density": d, "best_temperature": best["temperature"], "best_heat": int(best["heat"]),
                     "hot_minus_cold": float(g["test_error"].iloc[-1] - g["test_error"].iloc[0]),
                     "spearman_heat_error": float(rho)})
    return pd.DataFrame(rows)


def transition_verdict(trans: pd.DataFrame) -> dict[str, Any]:
    """Whether the data show the paper's sharp transition: hotter helps at the lowest density (hot minus cold < 0)
    and hurts at the highest (> 0), and the best heat does not rise with density."""
    t = trans.sort_values("density")
    low, high = t.iloc[0], t.iloc[-1]
    helps_low = bool(low["hot_minus_cold"] < 0)
    hurts_high = bool(high["hot_minus_cold"] > 0)
    monotone = bool(np.all(np.diff(t["best_heat"].to_numpy()) <= 0))
    return {"hot_helps_at_lowest_density": helps_low, "hot_hurts_at_highest_density": hurts_high,
            "best_heat_non_increasing_in_density": monotone, "transition": helps_low and hurts_high}


def otsu(values: Iterable[float]) -> float:
    """Otsu's threshold of 1-D values: the midpoint of the split that maximises the between-class variance (NaN
    for fewer than 2 distinct finite values)."""
    v = np.sort(np.asarray([x for x in values if np.isfinite(x)], dtype=float))
    if np.unique(v).size < 2:
        return math.nan
    best, thr = -1.0, math.nan
    for i in range(1, v.size):
        if v[i] == v[i - 1]:
            continue
        a, b = v[:i], v[i:]
        between = a.size * b.size * (a.mean() - b.mean()) ** 2
        if between > best:
            best, thr = between, 0.5 * (v[i - 1] + v[i])
    return float(thr)


def fit_cutoffs(agg: pd.DataFrame, cka_column: str = "cka") -> Cutoffs:
    """Cut-offs fitted to a phase table: Otsu's threshold of mc, then of CKA among the cells above it (the
    connected ones). A threshold that cannot be fitted (too few distinct values) keeps the default."""
    check_columns(agg, ("mc", cka_column), "phase table")
    base = Cutoffs(cka_column=cka_column)
    mc_t = otsu(agg["mc"])
    mc_t = base.mc_threshold if math.isnan(mc_t) or mc_t >= 0 else mc_t
    connected = agg[agg["mc"] >= mc_t]
    cka_t = otsu(connected[cka_column])
    cka_t = base.cka_threshold if math.isnan(cka_t) else cka_t
    return Cutoffs(mc_threshold=float(np.clip(mc_t, -1, 1)), cka_threshold=float(np.clip(cka_t, 0, 1)),
                   cka_column=cka_column)


def regime_counts(classified: pd.DataFrame) -> dict[str, int]:
    """How many cells fall in each regime."""
    return {r: int((classified["regime"] == r).sum()) for r in REGIMES}
