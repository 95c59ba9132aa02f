"""Room-for-improvement labels: a hand-made grid, and the shipped MD population's published rfi/labels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from htsr.data.reference import mdtree_population
from htsr.diagnosis import DiagnosisError
from htsr.diagnosis.labels import (
    drop_optimal,
    label_batch_failure,
    label_population,
    label_versus_batch,
    room_for_improvement,
)

LABELS = ["bs_failure", "width_vs_batch", "data_vs_batch"]
RFI = ["rfi_width", "rfi_data", "rfi_inc_temp", "rfi_dec_temp"]


def _grid() -> pd.DataFrame:
    # 3 batch sizes x 2 widths, one data fraction; accuracy peaks at bs=32 for width 2, at bs=16 for width 4
    acc = {(16, 2): 50.0, (32, 2): 60.0, (64, 2): 55.0, (16, 4): 80.0, (32, 4): 70.0, (64, 4): 65.0}
    return pd.DataFrame([{"bs": b, "width": w, "data": 10, "test_acc": a} for (b, w), a in acc.items()])


def test_rfi_on_a_small_grid():
    g = _grid()
    r = room_for_improvement(g.iloc[::-1])  # row order must not matter
    r = r.loc[g.index]
    # inc_temp: best over bs <= current; dec_temp: best over bs >= current; width: best over wider
    assert r["rfi_inc_temp"].tolist() == [0.0, 0.0, 5.0, 0.0, 10.0, 15.0]
    assert r["rfi_dec_temp"].tolist() == [10.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert r["rfi_width"].tolist() == [30.0, 10.0, 10.0, 0.0, 0.0, 0.0]
    assert r["rfi_data"].tolist() == [0.0] * 6
    lab = label_population(g)
    assert lab["bs_failure"].tolist() == ["large", "optimal", "small", "optimal", "small", "small"]
    assert lab["width_vs_batch"].tolist() == ["width", "width", "width", "optimal", "batch", "batch"]
    assert "test_acc" in lab and g.columns.tolist() == ["bs", "width", "data", "test_acc"]  # input untouched
    assert len(drop_optimal(lab, "bs_failure")) == 4


def test_missing_cell_is_unreachable_not_zero():
    g = _grid().drop(index=1)  # (bs=32, w=2) never trained
    r = room_for_improvement(g)
    assert r.loc[2, "rfi_inc_temp"] == 0.0  # bs=64 w=2: only bs=16 (50) and itself (55) remain
    assert r.loc[0, "rfi_dec_temp"] == 5.0


def test_label_functions_and_ties():
    assert list(label_batch_failure([1.0, 0.0, 2.0], [0.0, 1.0, 2.0])) == ["small", "large", "optimal"]
    assert list(label_versus_batch([3.0, 1.0, 2.0], [1.0, 2.0, 2.0], [2.0, 0.0, 1.0], "data")) == \
        ["data", "batch", "optimal"]
    assert list(label_batch_failure([1.0], [0.95], tie_tol=0.1)) == ["optimal"]
    with pytest.raises(DiagnosisError, match="same shape"):
        label_batch_failure([1.0, 2.0], [1.0])


def test_bad_grids():
    g = _grid()
    with pytest.raises(DiagnosisError, match=r"missing column\(s\) \['test_acc'\]"):
        room_for_improvement(g.drop(columns="test_acc"))
    bad = g.copy()
    bad.loc[3, "test_acc"] = np.nan
    with pytest.raises(DiagnosisError, match=r"'test_acc' has 1 NaN.*rows \[3\]"):
        room_for_improvement(bad)
    with pytest.raises(DiagnosisError, match="repeat a configuration"):
        room_for_improvement(pd.concat([g, g.iloc[:1]], ignore_index=True))
    with pytest.raises(DiagnosisError, match=r"must be \(grid column, \+1 or -1\)"):
        room_for_improvement(g, moves={"x": ("bs", 2)})


@pytest.mark.parametrize("name", ["normal", "noise"])
def test_reproduces_published_rfi_and_labels(name):
    pub = mdtree_population(name)
    raw = pub.drop(columns=RFI + LABELS).sample(frac=1.0, random_state=0)
    ours = label_population(raw).loc[pub.index]
    for c in RFI:
        np.testing.assert_array_equal(ours[c].to_numpy(), pub[c].to_numpy())
    for c in LABELS:
        assert (ours[c] == pub[c]).all(), c
    assert (ours["bs_failure"] == "optimal").sum() == 130
