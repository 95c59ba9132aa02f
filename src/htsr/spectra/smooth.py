"""SVD smoothing / low-rank truncation of chosen weight matrices (WeightWatcher's ``SVDSmoothing``, the LASER use).

Each selected 2-D matrix W (Linear, HF Conv1D, embeddings when selected) is replaced by its rank-k truncated SVD
U_k S_k V_k^T; biases, norms and every other tensor are copied unchanged. The number k of components kept is
chosen per layer by a rule:

* ``rank``: a fixed k (``rank=``);
* ``mp``: the eigenvalues above the Marchenko-Pastur bulk edge (with WeightWatcher's Tracy-Widom margin), the
  spikes of :func:`htsr.spectra.metrics.mp_fit` (WeightWatcher's ``method='rmt'``);
* ``xmin``: the power-law tail, eigenvalues >= the fitted xmin (WeightWatcher's ``alpha_min``), with the
  analysis preset's fit;
* ``detx``: the detX / ERG tail (:mod:`htsr.spectra.detx`; WeightWatcher's default ``method='detX'``).

A layer whose k is 0 or not below its numerical rank is left unchanged, with the reason in its row (as the
reference does for k = 0). Layers are chosen with the analysis
rules (:func:`htsr.spectra.describe.describe`: kinds, size rules, ``layers``/``exclude`` patterns). The result
is written atomically as one ``.safetensors`` file or as a Hugging Face directory (the source directory's other
files copied, each shard written under its own name).
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from htsr.errors import ConfigError, SourceError

RULES = ("rank", "mp", "xmin", "detx")
#: Kinds whose weight is one 2-D matrix that smoothing can replace.
SMOOTH_KINDS = ("linear", "hf_conv1d", "embedding", "lora")


@dataclass
class SmoothResult:
    """``rows``: one per selected matrix (name, N, M, rank, k, status ``smoothed``/``unchanged``, reason,
    energy kept = sum of kept sigma^2 / sum sigma^2, rel_error = ||W - W_k||_F / ||W||_F); ``path``: the output
    (None for :func:`smooth_state_dict`)."""

    rows: list[dict]
    path: Path | None = None

    def to_pandas(self):
        import pandas as pd

        return pd.DataFrame(self.rows)

    @property
    def n_smoothed(self) -> int:
        return sum(r["status"] == "smoothed" for r in self.rows)


def choose_k(lam: np.ndarray, n: int, m: int, rule: str, rank: int | None = None, fit_options: Mapping | None = None
             ) -> tuple[int, str]:
    """Components to keep for a matrix with eigenvalues ``lam`` (sigma^2, any order) under ``rule``, and why
    when no k applies (then k = 0)."""
    lam = np.sort(np.asarray(lam, dtype=np.float64))
    if rule == "rank":
        return int(rank), ""
    if rule == "mp":
        from htsr.spectra.metrics import mp_fit

        k = mp_fit(lam, n, m)["num_spikes"]
        return (0, "MP fit failed") if not isinstance(k, int) else (k, "" if k else "no eigenvalue above the MP "
                                                                             "bulk edge")
    if rule == "xmin":
        from htsr.spectra.powerlaw import fit_power_law

        opts = dict(fit_options or {})
        xmin_rule = opts.pop("xmin_rule", "ks")
        fit = fit_power_law(lam, xmin_rule, **opts)
        if not fit.ok:
            return 0, f"power-law fit failed: {fit.reason}"
        return int((lam >= fit.xmin).sum()), ""
    if rule == "detx":
        from htsr.spectra.detx import detx

        return detx(lam)[0], ""
    raise ConfigError(f"unknown smoothing rule {rule!r}; expected one of {', '.join(RULES)}")


def smooth_state_dict(state: Mapping[str, torch.Tensor], *, rule: str = "rank", rank: int | None = None,
                      preset: str = "htsr", **options: Any) -> tuple[dict[str, torch.Tensor], SmoothResult]:
    """A copy of ``state`` with the selected matrices truncated, and one row per selected matrix.

    ``options`` are analysis options choosing the layers (``layers``, ``exclude``, ``kinds``, ``min_evals`` ...;
    see :func:`htsr.spectra.describe.describe`) and, for ``rule='xmin'``, the fit (``xmin_rule`` ...).
    Raises :class:`~htsr.errors.ConfigError` for an unknown rule, a missing or non-positive ``rank``, or when no
    selected layer could be smoothed (e.g. ``rank`` not below any selected matrix's rank).
    """
    from htsr.spectra.describe import describe

    if rule not in RULES:
        raise ConfigError(f"unknown smoothing rule {rule!r}; expected one of {', '.join(RULES)}")
    if rule == "rank" and (rank is None or isinstance(rank, bool) or int(rank) != rank or rank < 1):
        raise ConfigError(f"rule 'rank' needs rank >= 1 (an integer), got {rank!r}")
    if rule != "rank" and rank is not None:
        raise ConfigError(f"rank= is only used by rule 'rank', not {rule!r}")
    desc = describe(dict(state), preset, **options)
    cfg = desc.config
    fit_options = {"xmin_rule": cfg.xmin_rule, "threshold": cfg.threshold, "xmin_pos": cfg.xmin_pos,
                   "peak_bins": cfg.peak_bins, "peak_legacy_bound": cfg.peak_legacy_bound, "small_n": cfg.small_n}
    out = {k: v for k, v in state.items()}
    rows: list[dict] = []
    for d in desc.rows:
        if d["status"] != "analyze":
            continue
        name, N, M = d["param"], d["N"], d["M"]
        row = {"name": d["name"], "param": name, "kind": d["kind"], "N": N, "M": M, "rule": rule, "k": 0,
               "rank": math.nan, "status": "unchanged", "reason": "", "energy_kept": 1.0, "rel_error": 0.0}
        rows.append(row)
        if d["kind"] not in SMOOTH_KINDS or d["name"] != d["module"]:
            row["reason"] = f"kind {d['kind']!r} / split rows: smoothing handles whole 2-D matrices only"
            continue
        w = state[name]
        if not torch.is_floating_point(w) or not bool(torch.isfinite(w).all()):
            row["reason"] = "non-finite or non-float weights"
            continue
        u, s, vh = torch.linalg.svd(w.detach().to(torch.float64), full_matrices=False)
        lam = (s ** 2).numpy()
        tol = float(s[0]) * max(N, M) * float(torch.finfo(w.dtype).eps) if s.numel() else 0.0
        r = int((s > tol).sum())
        row["rank"] = r
        k, why = choose_k(lam, N, M, rule, rank, fit_options)
        row["k"] = k
        if why:
            row["reason"] = why + ": layer unchanged"
            continue
        if k > min(N, M):
            row["reason"] = f"rank {k} is above the matrix's dimensions {N}x{M} (rank at most {min(N, M)})"
            continue
        if k >= r:
            row["reason"] = f"k={k} is not below the matrix rank {r}: nothing to truncate"
            continue
        wk_full = (u[:, :k] * s[:k]) @ vh[:k]
        out[name] = wk_full.to(w.dtype).contiguous()
        total = float(lam.sum())
        row.update(status="smoothed", energy_kept=float(lam[:k].sum() / total) if total else 1.0,
                   rel_error=float(math.sqrt(max(total - float(lam[:k].sum()), 0.0) / total)) if total else 0.0)
    if not rows:
        raise ConfigError("no weight matrix selected for smoothing (check layers/exclude/kinds)")
    if not any(r["status"] == "smoothed" for r in rows):
        first = rows[0]
        raise ConfigError(f"no layer was smoothed ({len(rows)} selected); e.g. {first['name']}: {first['reason']}")
    return out, SmoothResult(rows)


# ------------------------------------------------------------------ reading and writing checkpoints
def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every tensor and the metadata of one file, through the one validated reader."""
    from htsr.spectra.reader import SafetensorsFile

    f = SafetensorsFile(path)
    return f.state_dict(), dict(f.metadata or {})


def _files(source: Path) -> list[Path]:
    if source.is_file():
        if source.suffix != ".safetensors":
            raise SourceError(f"{source}: smoothing reads .safetensors files or Hugging Face directories of them, "
                              f"not {source.suffix or 'a file without extension'!r}")
        return [source]
    if source.is_dir():
        files = sorted(source.glob("*.safetensors"))
        if not files:
            raise SourceError(f"{source}: no .safetensors files (smoothing reads safetensors checkpoints)")
        return files
    raise SourceError(f"{source}: no such file or directory")


def _save(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    from safetensors.torch import save_file

    seen: dict[int, str] = {}
    clean = {}
    for k, v in tensors.items():
        v = v.detach().contiguous()
        ptr = v.data_ptr()
        clean[k] = v.clone() if ptr in seen and v.numel() else v  # tied weights: separate copies
        seen.setdefault(ptr, k)
    save_file(clean, str(path), metadata=meta)
    from htsr.io import _umask

    path.chmod(0o666 & ~_umask())


def smooth(source: Any, out: str | Path, *, rule: str = "rank", rank: int | None = None, preset: str = "htsr",
           overwrite: bool = False, **options: Any) -> SmoothResult:
    """Smooth ``source`` (an ``nn.Module``, a state dict, a ``.safetensors`` file or a Hugging Face directory of
    safetensors) and write the result to ``out``: a ``.safetensors`` file, or a directory (the source
    directory's other files are copied, shards keep their names). Layers are selected across all shards at
    once. Returns :class:`SmoothResult` with ``path`` set. See :func:`smooth_state_dict` for the rules.
    """
    from htsr.io import atomic_write, check_not_input, check_replace_dir, jsonable, replace_dir

    out = Path(out)
    to_file = out.suffix == ".safetensors"
    src_path = Path(source) if isinstance(source, str | Path) else None
    if to_file:
        check_not_input(out, [source] if src_path else [])
    else:
        check_replace_dir(out, overwrite=overwrite, inputs=[source] if src_path else [])
    meta = {"format": "pt"}
    shards: dict[str, list[str]] = {}
    if isinstance(source, torch.nn.Module):
        state = dict(source.state_dict())
    elif isinstance(source, Mapping):
        state = dict(source)
    elif src_path is not None:
        state = {}
        for f in _files(src_path):
            t, m = _read_safetensors(f)
            meta.update(m)
            shards[f.name] = list(t)
            state.update(t)
    else:
        raise SourceError(f"cannot smooth a source of type {type(source).__name__}; expected an nn.Module, a state "
                          "dict, a .safetensors file or a Hugging Face directory")
    new, res = smooth_state_dict(state, rule=rule, rank=rank, preset=preset, **options)
    meta["htsr.smooth"] = json.dumps({"rule": rule, "rank": rank, "smoothed": [r["param"] for r in res.rows
                                                                               if r["status"] == "smoothed"]})
    if to_file:
        res.path = atomic_write(out, lambda tmp: _save(tmp, new, meta))
        return res

    def fill(tmp: Path) -> None:
        if src_path is not None and src_path.is_dir():
            for f in src_path.iterdir():
                if f.is_file() and f.suffix != ".safetensors" and not f.name.startswith("."):
                    shutil.copy2(f, tmp / f.name)
        if shards and len(shards) > 1:
            for fname, keys in shards.items():
                _save(tmp / fname, {k: new[k] for k in keys}, meta)
        else:
            name = next(iter(shards)) if shards else "model.safetensors"
            _save(tmp / name, new, meta)
        (tmp / "htsr_smooth.json").write_text(json.dumps(jsonable({"rule": rule, "rank": rank, "rows": res.rows}),
                                                         indent=1))

    res.path = replace_dir(out, fill, overwrite=overwrite, inputs=[source] if src_path else [])
    return res
