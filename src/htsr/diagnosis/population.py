"""Load and validate model populations: one row per trained configuration (MD tree's ``dataframe_*.csv``).

The MD population (``../shared/data/mdtree``; YefanZhou/ModelDiagnosis, MIT) holds 1,690 ResNet-18
configurations (13 widths x 13 batch sizes x 10 CIFAR-10 fractions, each the mean of 5 seeds) in two
collections: ``clean`` (F, ``dataframe_normal_public.csv``) and ``noisy`` (F', 10% label noise,
``dataframe_noise_public.csv``). A user's own population only needs the same column names.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from htsr.diagnosis.errors import DiagnosisError

COLLECTIONS = {"clean": "dataframe_normal_public.csv", "noisy": "dataframe_noise_public.csv"}
#: Grid coordinates of a configuration: batch size, width multiplier, data fraction (in tenths).
GRID_COLUMNS: tuple[str, ...] = ("bs", "width", "data")
#: Diagnosis labels of the MD population.
LABEL_COLUMNS: tuple[str, ...] = ("bs_failure", "width_vs_batch", "data_vs_batch")
#: Numeric columns of the shared MD CSVs that the table reproduction uses.
MD_COLUMNS: tuple[str, ...] = (
    "bs", "width", "data", "log_data_amount", "log_para_amount", "test_acc", "train_error", "test_error",
    "train_loss", "test_loss", "hessian_t", "mode_connectivity_peak", "CKA",
    "rfi_width", "rfi_data", "rfi_inc_temp", "rfi_dec_temp")
ENV_VAR = "HTSR_MDTREE_DATA"


def default_data_dir() -> Path:
    """The shared MD-tree data folder: ``$HTSR_MDTREE_DATA``, else ``../shared/data/mdtree`` beside the repo
    (or the current directory's ``../shared/data/mdtree``)."""
    candidates = []
    if os.environ.get(ENV_VAR):
        candidates.append(Path(os.environ[ENV_VAR]))
    candidates.append(Path.cwd().parent / "shared" / "data" / "mdtree")
    candidates.append(Path(__file__).resolve().parents[3].parent / "shared" / "data" / "mdtree")
    for c in candidates:
        if (c / COLLECTIONS["clean"]).is_file():
            return c
    raise DiagnosisError("MD tree population not found; looked in "
                         f"{[str(c) for c in candidates]} for {COLLECTIONS['clean']} (pass --data-dir or set "
                         f"{ENV_VAR})")


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


def load_population(path: str | os.PathLike, columns: Iterable[str] = (), labels: Iterable[str] = (),
                    name: str | None = None) -> pd.DataFrame:
    """Read a population CSV (never modified) and validate ``columns``/``labels``."""
    p = Path(path)
    if not p.is_file():
        raise DiagnosisError(f"population file not found: {p}")
    try:
        frame = pd.read_csv(p)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DiagnosisError(f"{p}: not a readable CSV ({e})") from None
    return validate_population(frame, columns, labels, name=name or str(p))


def load_md_collections(data_dir: str | os.PathLike | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The clean (F) and noisy (F') MD populations, validated (columns in :data:`MD_COLUMNS`, one row per cell)."""
    d = Path(data_dir) if data_dir is not None else default_data_dir()
    out = []
    for key in ("clean", "noisy"):
        f = d / COLLECTIONS[key]
        frame = load_population(f, MD_COLUMNS, LABEL_COLUMNS, name=f"{key} population {f}")
        check_grid(frame, name=f"{key} population {f}")
        out.append(frame)
    return out[0], out[1]
