"""A resumable table of finished sweep cells: ``results.csv`` (one row per cell) and ``cells/<key>.json``.

A cell is identified by its parameters (recipe, method, fraction, seed, ...) plus a ``config_id`` (a hash of
the recipe configuration), so changing a recipe's settings never resumes from stale rows. Only rows with
``status == "ok"`` count as done: a failed cell is retried on the next run.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from htsr.errors import ConfigError
from htsr.io import write_json, write_table

_SAFE = re.compile(r"[^A-Za-z0-9._=-]+")


def config_id(config: Mapping[str, Any]) -> str:
    """Short stable hash of a JSON-able configuration."""
    blob = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def cell_key(params: Mapping[str, Any]) -> str:
    """A file-name-safe key from a cell's parameters, in sorted order (``fraction=0.25__method=tb__...``)."""
    parts = []
    for k in sorted(params):
        v = params[k]
        if isinstance(v, float):
            v = repr(v)
        parts.append(f"{k}={v}")
    return _SAFE.sub("_", "__".join(parts))


class ResultStore:
    """Rows of finished cells under ``directory`` (``results.csv``, ``cells/*.json``). Re-opening a directory
    loads the existing rows, so an interrupted sweep resumes."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        if self.directory.exists() and not self.directory.is_dir():
            raise ConfigError(f"{self.directory} exists and is not a directory")
        self.path = self.directory / "results.csv"
        self.rows: list[dict[str, Any]] = []
        if self.path.is_file():
            try:
                df = pd.read_csv(self.path)
            except pd.errors.EmptyDataError:
                df = pd.DataFrame()
            except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
                raise ConfigError(f"{self.path} is not a results table written by htsr ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else ''})") from None
            if len(df.columns) and "key" not in df.columns:
                raise ConfigError(f"{self.path} is not a results table written by htsr (no 'key' column; columns: "
                                  f"{', '.join(map(str, df.columns[:8]))})")
            self.rows = [{k: v for k, v in r.items() if not (isinstance(v, float) and math.isnan(v))}
                         for r in df.to_dict("records")]

    def __len__(self) -> int:
        return len(self.rows)

    def done(self, key: str) -> bool:
        """Whether a cell with this key finished successfully."""
        return any(r.get("key") == key and r.get("status") == "ok" for r in self.rows)

    def add(self, key: str, params: Mapping[str, Any], metrics: Mapping[str, Any],
            details: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Record a cell (replacing an earlier row of the same key) and write the table atomically;
        ``details`` (JSON-able: histories, trajectories) go to ``cells/<key>.json``."""
        row = {"key": key, **params, **metrics}
        row.setdefault("status", "ok")
        self.rows = [r for r in self.rows if r.get("key") != key] + [row]
        if details is not None:
            write_json(self.directory / "cells" / f"{key}.json", {"key": key, "params": dict(params),
                                                                  "metrics": dict(metrics), **details})
        write_table(self.path, self.table())
        return row

    def table(self) -> pd.DataFrame:
        """All rows as a DataFrame."""
        return pd.DataFrame(self.rows)

    def details(self, key: str) -> dict[str, Any]:
        """The JSON side file of a cell."""
        p = self.directory / "cells" / f"{key}.json"
        if not p.is_file():
            raise ConfigError(f"no details stored for cell {key!r} ({p})")
        return json.loads(p.read_text())
