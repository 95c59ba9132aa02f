"""The one results writer: atomic JSON / CSV / Parquet output of tables and analyses."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from htsr.spectra.analysis import Analysis

FORMATS = (".json", ".csv", ".parquet")


def atomic_write(path: str | os.PathLike, writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp)`` on a temporary file beside ``path``, then rename it into place.

    A crash or error leaves any existing file at ``path`` untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        writer(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_png(fig: Any, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Write a matplotlib ``Figure`` as a PNG atomically and clear it. An Agg canvas is attached explicitly:
    no pyplot, no global backend, no figure left registered anywhere."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
    finally:
        fig.clear()


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return f if math.isfinite(f) else None  # JSON has no NaN: null means "not available"
    if isinstance(v, np.ndarray):
        return _jsonable(v.tolist())
    return v


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as JSON atomically (NaN/Inf become null)."""

    def w(tmp: Path) -> None:
        tmp.write_text(json.dumps(_jsonable(obj), indent=2, allow_nan=False))

    return atomic_write(path, w)


def write_table(path: str | os.PathLike, df) -> Path:
    """Write a DataFrame as .csv or .parquet (by extension) atomically."""
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        return atomic_write(path, lambda tmp: df.to_csv(tmp, index=False))
    if suffix == ".parquet":
        return atomic_write(path, lambda tmp: df.to_parquet(tmp, index=False))
    raise ValueError(f"unsupported table format {suffix!r}; expected .csv or .parquet")


def write_analysis(analysis: Analysis, path: str | os.PathLike) -> Path:
    """An Analysis as JSON (schema ``htsr.analysis/1``: metadata, summary, rows), CSV or Parquet."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"unsupported output format {suffix!r}; expected one of {', '.join(FORMATS)}")
    if suffix == ".json":
        return write_json(path, {"schema": analysis.metadata["schema"], "metadata": analysis.metadata,
                                 "summary": analysis.summary(), "rows": analysis.rows})
    return write_table(path, analysis.to_pandas())


def read_analysis_json(path: str | os.PathLike) -> dict:
    """Read back a JSON analysis, checking its schema version."""
    data = json.loads(Path(path).read_text())
    if not str(data.get("schema", "")).startswith("htsr.analysis/"):
        raise ValueError(f"{path}: not an htsr analysis file (schema={data.get('schema')!r})")
    return data
