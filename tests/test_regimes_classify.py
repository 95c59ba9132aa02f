"""Phase tables, regimes, advice, case study 1, the transition check, fitted cut-offs and bad tables."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from htsr.errors import ConfigError
from htsr.regimes.classify import (
    advise,
    aggregate,
    case_study,
    classify,
    fit_cutoffs,
    heat,
    otsu,
    transition,
    transition_verdict,
)
from htsr.regimes.config import Cutoffs

# a hand-made 3 x 2 phase diagram (knob epochs: 40 epochs is coldest, 10 hottest), two seeds per cell.
# per (temperature, density): mc, cka, test error (mean over the seeds given below)
CELLS = {
    (40, 0.1): (-0.20, 0.70, 0.30),  # cold, sparse: regime I
    (20, 0.1): (-0.01, 0.60, 0.25),  # II-A
    (10, 0.1): (0.00, 0.65, 0.20),  # II-A (hottest)
    (40, 0.5): (0.00, 0.95, 0.10),  # II-B
    (20, 0.5): (0.00, 0.80, 0.12),  # II-A
    (10, 0.5): (-0.01, 0.70, 0.15),  # II-A
}


def _table() -> pd.DataFrame:
    rows = []
    for (t, d), (mc, cka, err) in CELLS.items():
        for seed, delta in ((0, -0.01), (1, 0.01)):  # means are exactly the values above
            rows.append({"seed": seed, "temperature": t, "density": d, "mc": mc + delta / 10, "cka": cka + delta,
                         "cka_softmax": cka, "test_error": err + delta, "status": "ok", "knob": "epochs"})
    rows.append({"seed": 2, "temperature": 10, "density": 0.1, "mc": 9.0, "cka": 9.0, "test_error": 9.0,
                 "status": "error", "knob": "epochs"})  # failed rows are ignored
    return pd.DataFrame(rows)


def test_heat_ranks_follow_the_knob():
    assert heat([10, 40, 20], "epochs").tolist() == [2, 0, 1]
    assert heat([16, 512, 64], "batch_size").tolist() == [2, 0, 1]
    assert heat([0.1, 0.8, 0.4], "sam_rho").tolist() == [0, 2, 1]


def test_aggregate_means_and_normalised_error():
    agg = aggregate(_table())
    assert len(agg) == 6 and (agg["n"] == 2).all()
    for (t, d), (mc, cka, err) in CELLS.items():
        r = agg[(agg["temperature"] == t) & (agg["density"] == d)].iloc[0]
        assert r["mc"] == pytest.approx(mc) and r["cka"] == pytest.approx(cka)
        assert r["test_error"] == pytest.approx(err)
        best = min(e for (t2, d2), (_, _, e) in CELLS.items() if d2 == d)
        assert r["normalised_error"] == pytest.approx(err - best)
        assert r["test_error_sd"] == pytest.approx(np.std([err - 0.01, err + 0.01], ddof=1))


def test_regimes_and_advice_by_hand():
    adv = advise(aggregate(_table()), Cutoffs(mc_threshold=-0.05, cka_threshold=0.9))
    got = {(r.temperature, r.density): (r.regime, r.advice) for r in adv.itertuples()}
    assert got[(40, 0.1)] == ("I", "raise")
    assert got[(20, 0.1)] == ("II-A", "lower")
    assert got[(10, 0.1)] == ("II-A", "lower")
    assert got[(40, 0.5)] == ("II-B", "keep")
    assert got[(20, 0.5)] == ("II-A", "lower")
    r = adv[(adv["temperature"] == 40) & (adv["density"] == 0.1)].iloc[0]
    assert r["next_temperature"] == 20 and r["error_change"] == pytest.approx(0.25 - 0.30)
    assert r["move"] == "train fewer epochs"
    # II-A at (20, 0.1) -> lower the temperature -> 40 epochs: error 0.30 vs 0.25, worse
    r = adv[(adv["temperature"] == 20) & (adv["density"] == 0.1)].iloc[0]
    assert r["next_temperature"] == 40 and r["advice_helps"] == 0.0


def test_case_study_counts_by_hand():
    adv = advise(aggregate(_table()), Cutoffs(mc_threshold=-0.05, cka_threshold=0.9))
    cs = case_study(adv)
    # checked: (40,.1) raise -> 20: -0.05 (helps); (20,.1) lower -> 40: +0.05; (10,.1) lower -> 20: +0.05;
    # (20,.5) lower -> 40: -0.02 (helps); (10,.5) lower -> 20: -0.03 (helps); (40,.5) keep: unchecked
    assert cs["n_checked"] == 5 and cs["n_lowered"] == 3
    assert cs["fraction_lowered"] == pytest.approx(0.6)
    assert cs["by_regime"]["I"] == {"n_checked": 1, "n_lowered": 1}
    # opposite moves: (40,.1) lower: none; (20,.1) raise -> 10: -0.05; (10,.1) raise: none;
    # (20,.5) raise -> 10: +0.03; (10,.5) raise: none
    assert cs["opposite_n_checked"] == 2 and cs["opposite_n_lowered"] == 1


def test_transition_check_by_hand():
    tr = transition(aggregate(_table())).set_index("density")
    assert tr.loc[0.1, "best_temperature"] == 10 and tr.loc[0.1, "best_heat"] == 2
    assert tr.loc[0.5, "best_temperature"] == 40 and tr.loc[0.5, "best_heat"] == 0
    assert tr.loc[0.1, "hot_minus_cold"] == pytest.approx(0.20 - 0.30)
    assert tr.loc[0.1, "spearman_heat_error"] == pytest.approx(-1.0)
    assert tr.loc[0.5, "spearman_heat_error"] == pytest.approx(1.0)
    v = transition_verdict(tr.reset_index())
    assert v["transition"] and v["best_heat_non_increasing_in_density"]


def test_otsu_and_fit_cutoffs():
    assert otsu([0.0, 0.01, -0.3, -0.31, 0.02]) == pytest.approx((-0.3 + 0.0) / 2)
    assert math.isnan(otsu([1.0, 1.0]))
    agg = aggregate(_table())
    cut = fit_cutoffs(agg)
    assert cut.mc_threshold == pytest.approx((-0.20 + -0.01) / 2)
    # CKA among the connected cells: 0.60 0.65 0.70 0.80 0.95 -> Otsu splits off 0.95 or 0.80/0.95
    connected = sorted(v[1] for v in CELLS.values() if v[0] >= cut.mc_threshold)
    cands = [(connected[i - 1] + connected[i]) / 2 for i in range(1, len(connected))]
    best = max(cands, key=lambda t: (len([c for c in connected if c < t]) * len([c for c in connected if c >= t])
                                     * (np.mean([c for c in connected if c < t])
                                        - np.mean([c for c in connected if c >= t])) ** 2))
    assert cut.cka_threshold == pytest.approx(best)
    assert classify(agg, cut)["regime"].tolist().count("I") == 1


def test_bad_tables():
    t = _table()
    with pytest.raises(ConfigError, match="lacks column.*cka"):
        aggregate(t.drop(columns=["cka"]))
    with pytest.raises(ConfigError, match="lacks column.*mc, cka"):
        aggregate(t.drop(columns=["mc", "cka"]))
    with pytest.raises(ConfigError, match="at least 2 temperatures"):
        aggregate(t[t["temperature"] == 40])
    with pytest.raises(ConfigError, match="densities must be in"):
        aggregate(t.assign(density=1.5))
    with pytest.raises(ConfigError, match="no successful cell"):
        aggregate(t.assign(status="error"))
    with pytest.raises(ConfigError, match="mixes temperature knobs"):
        aggregate(t.assign(knob=["epochs", "sam_rho"] * (len(t) // 2) + ["epochs"] * (len(t) % 2)))
    with pytest.raises(ConfigError, match="not numeric"):
        aggregate(t.assign(mc="x"))
    with pytest.raises(ConfigError, match="cka_threshold"):
        Cutoffs(cka_threshold=1.5)


def test_the_documented_cpu_experiment_numbers():
    """docs/regimes.md and docs/benchmarks.md quote these from benchmarks/regimes_cpu_results.csv."""
    from pathlib import Path

    t = pd.read_csv(Path(__file__).resolve().parent.parent / "benchmarks" / "regimes_cpu_results.csv")
    assert len(t) == 32 and (t["status"] == "ok").all()
    agg = aggregate(t)
    cut = fit_cutoffs(agg)
    assert cut.mc_threshold == pytest.approx(-0.073, abs=5e-4) and cut.cka_threshold == pytest.approx(0.977, abs=5e-4)
    assert Cutoffs().mc_threshold == pytest.approx(cut.mc_threshold, abs=5e-4)  # the defaults are these fitted ones
    adv = advise(agg)
    assert adv.groupby("regime").size().to_dict() == {"I": 2, "II-A": 4, "II-B": 10}
    cs = case_study(adv)
    assert (cs["n_lowered"], cs["n_checked"], cs["opposite_n_lowered"], cs["opposite_n_checked"]) == (4, 6, 1, 4)
    assert not transition_verdict(transition(agg))["transition"]
    assert transition(agg)["best_temperature"].tolist() == [12, 12, 24, 12]


def test_softmax_cka_column_is_used_when_asked():
    t = _table()
    t["cka_softmax"] = 0.0  # every cell dissimilar on softmax outputs
    got = classify(aggregate(t), Cutoffs(mc_threshold=-0.05, cka_threshold=0.5, cka_column="cka_softmax"))
    assert set(got["regime"]) == {"I", "II-A"}
    with pytest.raises(ConfigError, match="cka_column"):
        Cutoffs(cka_column="nope")
