"""``describe()``: the layer table of a weights source without any eigensolve.

It walks a source exactly as :func:`htsr.spectra.analysis.analyze` does (the same entries, the same
:func:`~htsr.spectra.matrices.plan_entry` plans, the same selection and size rules), reads only names, shapes
and dtypes (no tensor data is loaded), and says for each ESD row whether ``analyze`` would analyse it or skip
it, and why. Rows left out by ``layers``/``exclude`` patterns, which ``analyze`` drops silently, are listed
here as skipped with that reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from htsr.spectra.config import AnalysisConfig, make_config
from htsr.spectra.matrices import plan_entry, selected

#: Columns of a describe row, in order.
DESCRIBE_COLUMNS = ("name", "module", "param", "kind", "shape", "dtype", "N", "M", "rf", "Q", "num_evals",
                    "params", "status", "reason")
NOT_SELECTED = "not selected (layers/exclude patterns)"


@dataclass
class Description:
    """Result of :func:`describe`: ``rows`` (dicts with :data:`DESCRIBE_COLUMNS`), ``source``, ``config``."""

    rows: list[dict]
    source: str
    config: AnalysisConfig

    def to_pandas(self):
        import pandas as pd

        return pd.DataFrame(self.rows, columns=list(DESCRIBE_COLUMNS))

    def __len__(self) -> int:
        return len(self.rows)

    def summary(self) -> dict:
        """Counts of rows and parameters, analysed vs skipped, and the skip reasons with their counts."""
        ana = [r for r in self.rows if r["status"] == "analyze"]
        reasons: dict[str, int] = {}
        for r in self.rows:
            if r["status"] == "skip":
                key = r["reason"].split(" (")[0] if r["reason"].startswith("too") else r["reason"]
                reasons[key] = reasons.get(key, 0) + 1
        return {"n_rows": len(self.rows), "n_analyze": len(ana), "n_skip": len(self.rows) - len(ana),
                "params_analyze": int(sum(r["params"] for r in ana)),
                "params_total": int(sum(r["params"] for r in self.rows)), "skip_reasons": reasons}

    def save(self, path: str | Path) -> Path:
        """Write the table as .json (rows + summary), .csv or .parquet, by extension, atomically."""
        from htsr.io import check_suffix, write_json, write_table

        suffix = check_suffix(path, (".json", ".csv", ".parquet"), "a layer description")
        if suffix == ".json":
            return write_json(path, {"schema": "htsr.describe/1", "source": self.source, "preset": self.config.preset,
                                     "summary": self.summary(), "rows": self.rows})
        if suffix == ".parquet":
            from htsr.io import atomic_write

            return atomic_write(path, lambda tmp: self.to_pandas().to_parquet(tmp, index=False))
        return write_table(path, self.to_pandas())


def describe(source: Any, preset: str = "htsr", *, config: AnalysisConfig | None = None, base: Any = None,
             lora: bool = False, allow_pickle: bool = False, **options: Any) -> Description:
    """The rows :func:`~htsr.spectra.analysis.analyze` would produce for ``source``, with no eigensolve.

    Takes the same sources and options as ``analyze`` (an ``nn.Module``, a state dict, a safetensors file, a
    sharded or Hugging Face directory, a LoRA adapter with ``lora=True``, a pickle with ``allow_pickle=True``, a
    ``base`` for W - W_base, a GGUF file). Each row: name, module, param, kind, shape, dtype, N/M (larger/smaller
    matrix side), rf (matrices pooled), Q = N/M, num_evals, params (weights in the row), status (``analyze`` or
    ``skip``) and reason. Raises :class:`~htsr.errors.SourceError` for an unreadable source.
    """
    from htsr.spectra.analysis import _entries
    from htsr.spectra.sources import describe_source

    cfg = config if config is not None else make_config(preset, **options)
    rows: list[dict] = []
    for entry in _entries(source, base=base, lora=lora, allow_pickle=allow_pickle):
        for p in plan_entry(entry, cfg):
            reason = p.skip_reason
            if not selected(p.name, p.module, cfg.layers, cfg.exclude):
                reason = NOT_SELECTED
            params = p.N * p.M * p.rf if p.M else math.prod(p.shape)
            rows.append({
                "name": p.name, "module": p.module, "param": p.param, "kind": p.kind,
                "shape": "x".join(map(str, p.shape)), "dtype": entry.dtype, "N": p.N, "M": p.M, "rf": p.rf,
                "Q": (p.N / p.M) if p.M else math.nan, "num_evals": p.num_evals, "params": int(params),
                "status": "skip" if reason else "analyze", "reason": reason,
            })
    return Description(rows, describe_source(source), cfg)
