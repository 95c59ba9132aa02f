"""Failure-source labels from the room for improvement (RFI) over a configuration grid.

For a configuration and a move ``op`` along one grid axis (MD ``model_diagnosis_dataset/generate_data.py``):

    RFI(op) = max of the score over the cells reachable by moving only along op's axis in op's direction
              (the current cell included) - score(current)

with the score the test accuracy (mean over seeds). The moves are ``inc_temp`` (smaller batches),
``dec_temp`` (larger batches), ``width`` (wider models) and ``data`` (more data). Labels:

* ``bs_failure``: ``small`` if RFI(inc_temp) > RFI(dec_temp) (temperature too small = batch too large),
  ``large`` if smaller, ``optimal`` on a tie;
* ``width_vs_batch``: ``width`` if RFI(width) > max(RFI(inc_temp), RFI(dec_temp)), ``batch`` if smaller,
  ``optimal`` on a tie; ``data_vs_batch`` the same with RFI(data).

The paper drops ``optimal`` rows before fitting and testing (:func:`drop_optimal`).

Fixed from the reference: a configuration missing from the grid was stored as accuracy 0 (the grid is
``np.zeros`` and missing checkpoints are only printed), which gives it a spurious RFI equal to the best
accuracy on its line. Here a missing cell is simply not reachable, and a NaN score is an error.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from htsr.diagnosis.errors import DiagnosisError
from htsr.diagnosis.population import check_grid, validate_population

#: move name -> (grid column, direction): +1 towards larger values, -1 towards smaller ones.
MOVES: dict[str, tuple[str, int]] = {
    "inc_temp": ("bs", -1),   # increase temperature = decrease batch size
    "dec_temp": ("bs", +1),   # decrease temperature = increase batch size
    "width": ("width", +1),
    "data": ("data", +1),
}
OPTIMAL = "optimal"


def room_for_improvement(frame: pd.DataFrame, score: str = "test_acc",
                         moves: Mapping[str, tuple[str, int]] | None = None,
                         grid: tuple[str, ...] | None = None) -> pd.DataFrame:
    """A DataFrame (same index as ``frame``) with one column ``rfi_<move>`` per move.

    ``frame`` has one row per configuration: the grid columns (by default those the moves use; every
    column in ``grid`` identifies a configuration) and the ``score`` column (higher is better).
    Moves whose column is absent are an error; pass ``moves`` to restrict them.
    """
    moves = dict(MOVES if moves is None else moves)
    if not moves:
        raise DiagnosisError("room_for_improvement: no moves given")
    for name, mv in moves.items():
        if not (isinstance(mv, tuple) and len(mv) == 2 and mv[1] in (-1, 1)):
            raise DiagnosisError(f"move {name!r} must be (grid column, +1 or -1), got {mv!r}")
    axes = list(dict.fromkeys(c for c, _ in moves.values()))
    grid = tuple(dict.fromkeys([*(grid or ()), *axes]))
    validate_population(frame, [*grid, score], name="room_for_improvement")
    check_grid(frame, grid, name="room_for_improvement")
    out = pd.DataFrame(index=frame.index)
    s = frame[score].astype(np.float64)
    for name, (axis, direction) in moves.items():
        others = [c for c in grid if c != axis]
        order = frame.sort_values(axis, ascending=direction < 0, kind="mergesort")
        # best score from the far end of the line up to and including each cell, then back to frame order
        if others:
            best = s.loc[order.index].groupby([order[c] for c in others], sort=False).cummax()
        else:
            best = s.loc[order.index].cummax()
        out[f"rfi_{name}"] = best.reindex(frame.index) - s
    return out


def _check_same_length(*arrays: np.ndarray) -> None:
    if len({a.shape for a in arrays}) != 1:
        raise DiagnosisError(f"RFI arrays must have the same shape, got {[a.shape for a in arrays]}")


def label_batch_failure(rfi_inc_temp: np.ndarray, rfi_dec_temp: np.ndarray, tie_tol: float = 0.0) -> np.ndarray:
    """``small``/``large``/``optimal`` (Q1) from the two temperature RFIs; ``tie_tol`` 0 = exact ties only."""
    inc = np.asarray(rfi_inc_temp, dtype=np.float64)
    dec = np.asarray(rfi_dec_temp, dtype=np.float64)
    _check_same_length(inc, dec)
    d = inc - dec
    return np.where(d > tie_tol, "small", np.where(d < -tie_tol, "large", OPTIMAL)).astype(object)


def label_versus_batch(rfi_other: np.ndarray, rfi_inc_temp: np.ndarray, rfi_dec_temp: np.ndarray, other: str,
                       tie_tol: float = 0.0) -> np.ndarray:
    """``other``/``batch``/``optimal`` (Q2): is the best move along ``other``'s axis better than any batch move?"""
    o = np.asarray(rfi_other, dtype=np.float64)
    b = np.maximum(np.asarray(rfi_inc_temp, dtype=np.float64), np.asarray(rfi_dec_temp, dtype=np.float64))
    _check_same_length(o, b)
    d = o - b
    return np.where(d > tie_tol, other, np.where(d < -tie_tol, "batch", OPTIMAL)).astype(object)


def label_population(frame: pd.DataFrame, score: str = "test_acc", tie_tol: float = 0.0) -> pd.DataFrame:
    """A copy of ``frame`` with ``rfi_*`` columns and the labels the grid allows.

    Needs ``bs`` and ``score``; adds ``bs_failure`` always, ``width_vs_batch`` when ``width`` is a column and
    ``data_vs_batch`` when ``data`` is. Columns of those names already in ``frame`` are replaced.
    """
    moves = {k: v for k, v in MOVES.items() if v[0] in frame.columns or v[0] == "bs"}
    rfi = room_for_improvement(frame, score, moves)
    out = frame.copy()
    for c in rfi.columns:
        out[c] = rfi[c]
    inc, dec = out["rfi_inc_temp"].to_numpy(), out["rfi_dec_temp"].to_numpy()
    out["bs_failure"] = label_batch_failure(inc, dec, tie_tol)
    if "rfi_width" in out:
        out["width_vs_batch"] = label_versus_batch(out["rfi_width"].to_numpy(), inc, dec, "width", tie_tol)
    if "rfi_data" in out:
        out["data_vs_batch"] = label_versus_batch(out["rfi_data"].to_numpy(), inc, dec, "data", tie_tol)
    return out


def drop_optimal(frame: pd.DataFrame, label: str) -> pd.DataFrame:
    """Rows of ``frame`` whose ``label`` is not ``optimal`` (ties have no failure source to diagnose)."""
    if label not in frame.columns:
        raise DiagnosisError(f"drop_optimal: missing label column {label!r}; has {list(map(str, frame.columns))}")
    return frame[frame[label] != OPTIMAL]
