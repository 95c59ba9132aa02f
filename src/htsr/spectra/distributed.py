"""``analyze(..., executor=...)``: the tensors of a checkpoint analysed as tasks of an executor (Ray), rows gathered
into one :class:`~htsr.spectra.analysis.Analysis` identical to the local one (``time_s`` and ``elapsed_s`` aside).

The driver lists the tensors (headers only, no data), splits them into contiguous parts of about equal size (in
index order, so a part usually lies in one or two shards), and sends each part's *names* to a task; the task opens
the checkpoint where it runs (a path every node can read: a shared filesystem), loads only its tensors, and
returns their rows and eigenvalues. The driver never loads a tensor: its memory holds the rows and spectra only.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from htsr.errors import ConfigError
from htsr.experiments.sweep import Cell
from htsr.spectra.config import AnalysisConfig


def split_parts(sizes: Sequence[int], n_parts: int) -> list[slice]:
    """Contiguous slices of ``sizes`` (tensor element counts, in order) with about equal totals, at most
    ``n_parts`` of them, none empty."""
    n = len(sizes)
    if n == 0:
        return []
    n_parts = max(1, min(n_parts, n))
    total = float(sum(sizes)) or 1.0
    bounds, acc, k = [0], 0.0, 1
    for i, s in enumerate(sizes):
        acc += s
        if k < n_parts and acc >= total * k / n_parts and i + 1 < n:
            bounds.append(i + 1)
            k += 1
    bounds.append(n)
    return [slice(a, b) for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


def analyze_distributed(source: Any, cfg: AnalysisConfig, executor: Any, part_fn: Callable[..., Any], *,
                        allow_pickle: bool = False, parts: int | None = None, progress: bool = False
                        ) -> tuple[list[dict], dict, dict, int]:
    """Rows (in the local order), eigenvalue stores and the number of parts, computed on ``executor``:
    ``part_fn(source, names, config, allow_pickle)`` (:func:`htsr.spectra.analysis.analyze_part`) runs per part."""
    from htsr.progress import progress_bar
    from htsr.spectra.sources import iter_entries

    if not isinstance(source, str | os.PathLike):
        raise ConfigError("a distributed analysis needs a checkpoint path every worker can read (a .safetensors "
                          "file, a sharded index or a model directory), not an in-memory model")
    source = os.fspath(os.path.abspath(source))
    entries = list(iter_entries(source, allow_pickle=allow_pickle))
    order = {e.name: i for i, e in enumerate(entries)}
    sizes = [math.prod(e.shape) for e in entries]
    n_parts = parts or 4 * max(1, int(getattr(executor, "parallelism", lambda: 2)()))
    config = cfg.to_dict()
    cells = [Cell({"source": source, "names": [e.name for e in entries[s]], "config": config,
                   "allow_pickle": allow_pickle}) for s in split_parts(sizes, n_parts)]
    results: dict[int, list[dict]] = {}
    store: dict[str, np.ndarray] = {}
    rstore: dict[str, np.ndarray] = {}
    bar = progress_bar(progress, total=len(cells), desc="htsr analyze (parts)", unit="part")
    try:
        for cell, out in executor.map(part_fn, cells):
            first = order[cell.params["names"][0]]
            if isinstance(out, BaseException):  # one lost part never kills the analysis: its rows say why
                results[first] = [{"name": n, "module": n, "param": n, "kind": "unknown", "status": "error",
                                   "reason": f"task failed: {type(out).__name__}: {out}", "time_s": 0.0}
                                  for n in cell.params["names"]]
            else:
                rows, ev, rev = out
                results[first] = rows
                store.update({k: np.asarray(v) for k, v in ev.items()})
                rstore.update({k: np.asarray(v) for k, v in rev.items()})
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    rows = [r for k in sorted(results) for r in results[k]]
    return rows, store, rstore, len(cells)

