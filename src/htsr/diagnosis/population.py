"""Read and check model populations: one row per trained configuration (MD tree's ``dataframe_*.csv``).

The MD population (YefanZhou/ModelDiagnosis, MIT; shipped as :func:`htsr.data.reference.mdtree_population`)
holds 1,690 ResNet-18 configurations (13 widths x 13 batch sizes x 10 CIFAR-10 fractions, each the mean of 5
seeds) in two collections: ``clean`` (F, ``dataframe_normal_public.csv``) and ``noisy`` (F', 10% label noise,
``dataframe_noise_public.csv``). A user's own population only needs the same column names.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from htsr.diagnosis.errors import DiagnosisError

COLLECTIONS = {"clean": "dataframe_normal_public.csv", "noisy": "dataframe_noise_public.csv"}
#: The shipped population of each collection (:func:`htsr.data.reference.mdtree_population`).
REFERENCE_KINDS = {"clean": "normal", "noisy": "noise"}
#: Grid coordinates of a configuration: batch size, width multiplier, data fraction (in tenths).
GRID_COLUMNS: tuple[str, ...] = ("bs", "width", "data")
#: Diagnosis labels of the MD population.
LABEL_COLUMNS: tuple[str, ...] = ("bs_failure", "width_vs_batch", "data_vs_batch")
#: Numeric columns of the MD population CSVs that the table reproduction uses.
MD_COLUMNS: tuple[str, ...] = (
    "bs", "width", "data", "log_data_amount", "log_para_amount", "test_acc", "train_error", "test_error",
    "train_loss", "test_loss", "hessian_t", "mode_connectivity_peak", "CKA",
    "rfi_width", "rfi_data", "rfi_inc_temp", "rfi_dec_temp")
def validate_population(frame: pd.DataFrame, columns: Iterable[str] = (), labels: Iterable[str] = (),
                        name: str = "population") -> pd.DataFrame:
    """Check that ``frame`` has the numeric, finite ``columns`` and the label ``labels``; return it unchanged.

    Errors name the missing column, or the column and rows holding NaN/inf or non-numbers.
    """
    if not isinstance(frame, pd.DataFrame):
        raise DiagnosisError(f"{name}: expected a pandas DataFrame, got {type(frame).__name__}")
    if len(frame) == 0:
        raise DiagnosisError(f"{name}: no rows")
    need = list(dict.fromkeys([*columns, *labels]))
    missing = [c for c in need if c not in frame.columns]
    if missing:
        raise DiagnosisError(f"{name}: missing column(s) {missing}; has {list(map(str, frame.columns))}")
    for c in dict.fromkeys(columns):
        col = pd.to_numeric(frame[c], errors="coerce")
        bad = ~np.isfinite(col.to_numpy(dtype=np.float64))
        if bad.any():
            rows = frame.index[bad][:3].tolist()
            raise DiagnosisError(f"{name}: column {c!r} has {int(bad.sum())} NaN/infinite/non-numeric value(s) "
                                 f"(rows {rows}{'...' if bad.sum() > 3 else ''})")
    for c in dict.fromkeys(labels):
        if frame[c].isna().any():
            rows = frame.index[frame[c].isna().to_numpy()][:3].tolist()
            raise DiagnosisError(f"{name}: label column {c!r} has missing values (rows {rows})")
    return frame


def check_grid(frame: pd.DataFrame, grid: Iterable[str] = GRID_COLUMNS, name: str = "population") -> None:
    """Each configuration (grid coordinates) must appear once."""
    grid = list(grid)
    validate_population(frame, grid, name=name)
    dup = frame.duplicated(subset=grid, keep=False)
    if dup.any():
        first = frame.loc[dup, grid].iloc[0].to_dict()
        raise DiagnosisError(f"{name}: {int(dup.sum())} rows repeat a configuration of {grid}, e.g. {first}; "
                             "average the seeds first (one row per configuration)")


def _check_records(p: Path) -> None:
    """Every record of the CSV has as many fields as its header: pandas fills the missing fields of a truncated
    or damaged row with NaN silently, and a population must not lose a measurement that way."""
    with open(p, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if not header:
            raise DiagnosisError(f"{p}: empty file; expected a CSV with a header row of column names")
        for rec in reader:
            if rec and len(rec) != len(header):
                raise DiagnosisError(f"{p}: line {reader.line_num} has {len(rec)} fields, the header {len(header)} "
                                     "(truncated or malformed file)")


def load_population(path: str | os.PathLike, columns: Iterable[str] = (), labels: Iterable[str] = (),
                    name: str | None = None) -> pd.DataFrame:
    """Read a population CSV (never modified) and validate ``columns``/``labels``. A damaged file (a truncated
    row, not UTF-8, not CSV) is an error naming the file and what is missing."""
    p = Path(path)
    if not p.is_file():
        raise DiagnosisError(f"population file not found: {p}")
    try:
        _check_records(p)
        frame = pd.read_csv(p)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, csv.Error) as e:
        why = "not UTF-8 text" if isinstance(e, UnicodeDecodeError) else (
            str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
        raise DiagnosisError(f"{p}: not a readable CSV ({why})") from None
    return validate_population(frame, columns, labels, name=name or str(p))


def load_md_collections(data_dir: str | os.PathLike | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The clean (F) and noisy (F') MD populations, validated (columns in :data:`MD_COLUMNS`, one row per cell):
    the copies shipped with htsr (:func:`htsr.data.reference.mdtree_population`), or the two CSVs in
    ``data_dir``."""
    from htsr.data.reference import mdtree_population

    out = []
    for key in ("clean", "noisy"):
        if data_dir is None:
            name = f"{key} population (htsr.data.reference, {COLLECTIONS[key]})"
            frame = validate_population(mdtree_population(REFERENCE_KINDS[key]), MD_COLUMNS, LABEL_COLUMNS, name=name)
        else:
            name = f"{key} population {Path(data_dir) / COLLECTIONS[key]}"
            frame = load_population(Path(data_dir) / COLLECTIONS[key], MD_COLUMNS, LABEL_COLUMNS, name=name)
        check_grid(frame, name=name)
        out.append(frame)
    return out[0], out[1]
