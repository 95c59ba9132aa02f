"""``analyze()``: weights source -> per-matrix spectra, fits and metrics -> :class:`Analysis`."""

from __future__ import annotations

import logging
import math
import os
import time
import zlib
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from htsr._version import __version__
from htsr.errors import ConfigError, SourceError
from htsr.spectra import metrics as M
from htsr.spectra import powerlaw as PL
from htsr.spectra.config import AnalysisConfig, make_config
from htsr.spectra.eigen import (
    NonFiniteError,
    TailTooSmallError,
    eigenvalues,
    resolve_device,
    solver_eps,
    top_eigenvalues,
)
from htsr.spectra.matrices import MatrixPlan, plan_entry, selected
from htsr.spectra.sources import (
    TensorEntry,
    delta_entries,
    describe_source,
    iter_entries,
    lora_adapter_config,
    lora_entries,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = "htsr.analysis/1"
SAVE_FORMATS = (".json", ".csv", ".parquet")
NAN_POLICIES = ("nan", "mean", "drop", "raise")

#: Tensors with at least this many elements are analysed one at a time with all BLAS threads
#: (bounded memory); smaller ones are spread over ``workers`` threads.
LARGE_TENSOR = 2048 * 2048

#: tail_only gives up on a matrix (full solve) once a first, 2-block Rayleigh-Ritz step leaves more than this
#: share of ||W||_F^2 outside the top k: a full-rank matrix, whose uncomputed eigenvalues cannot all be tiny.
TAIL_GIVE_UP = 1e-3

#: Columns averaged by :meth:`Analysis.summary` (over successful rows only).
SUMMARY_METRICS = (
    "alpha", "alpha_hat", "log_norm", "log_spectral_norm", "log_alpha_norm", "stable_rank", "entropy",
    "mp_softrank", "rand_distance",
)

CONVENTIONS = {
    "eigenvalues": "lambda = sigma^2 of W (eigenvalues of the smaller Gram matrix), no 1/N normalisation",
    "conv": "one matrix per kernel position, pooled; eigenvalues times conv_scale",
    "logs": "log10 for norms and alpha_hat",
    "alpha": "continuous Hill/MLE exponent of the density p(lambda) ~ lambda^-alpha above xmin",
    "D": "one-sided KS distance max|F_pl - k/n| over the tail (WeightWatcher's)",
    "failed_fit": "NaN with status 'failed' and a reason; never -1",
}


@dataclass
class Analysis:
    """Result of :func:`analyze`: one row per matrix (ESD), with status and metrics.

    ``rows`` are plain dicts; ``evals`` maps row name -> pooled eigenvalues (ascending)
    for analysed rows; ``metadata`` records the preset, every option and conventions.
    """

    rows: list[dict]
    evals: dict[str, np.ndarray]
    metadata: dict
    config: AnalysisConfig
    randomized_evals: dict[str, np.ndarray] = field(default_factory=dict)

    def to_pandas(self):
        """A pandas DataFrame, one row per matrix, indexed 0..n-1 with a ``name`` column."""
        import pandas as pd

        return pd.DataFrame(self.rows)

    to_dataframe = to_pandas

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, name: str) -> dict:
        for r in self.rows:
            if r["name"] == name:
                return r
        raise KeyError(name)

    @property
    def ok_rows(self) -> list[dict]:
        return [r for r in self.rows if r["status"] == "success"]

    def summary(self) -> dict:
        """Means of the main metrics over successful fits, and how many rows were left out."""
        out: dict[str, Any] = {
            "n_rows": len(self.rows),
            "n_success": sum(r["status"] == "success" for r in self.rows),
            "n_failed": sum(r["status"] == "failed" for r in self.rows),
            "n_skipped": sum(r["status"] == "skipped" for r in self.rows),
            "n_error": sum(r["status"] == "error" for r in self.rows),
        }
        ok = self.ok_rows
        for k in SUMMARY_METRICS:
            vals = [r.get(k) for r in ok]
            vals = [float(v) for v in vals if v is not None and np.isfinite(v)]
            if vals:
                out[k] = float(np.mean(vals))
        return out

    def alphas(self) -> dict[str, float]:
        """Row name -> alpha (NaN for rows without a successful fit)."""
        return {r["name"]: (r.get("alpha", math.nan) if r["status"] == "success" else math.nan) for r in self.rows}

    def metric(self, column: str = "alpha", names: Iterable[str] | None = None, *, policy: str = "nan",
               statuses: Sequence[str] = ("success", "failed")) -> MetricVector:
        """One metric per layer, with a reason for every value that is not finite, and a named NaN policy.

        Args:
            column: a row column (``alpha``, ``alpha_hat``, ``stable_rank``, ``log_spectral_norm`` ...).
            names: the rows wanted, in the order wanted, by row name or module path (a module path with several
                rows, e.g. split QKV, is an error); default: every row, in analysis order.
            policy: what a non-finite value becomes: ``nan`` (kept; the caller decides), ``mean`` (the mean of
                the finite values, listed in ``imputed``), ``drop`` (left out), ``raise`` (a
                :class:`~htsr.errors.ConfigError` naming the layers and why).
            statuses: row statuses whose value is used (a failed fit keeps its rank/norm metrics; its alpha is
                NaN anyway).
        """
        return metric_vector(self.rows, column, names, policy=policy, statuses=statuses)

    def save(self, path: str | Path, *, include_evals: bool = False) -> Path:
        """Write JSON (schema ``htsr.analysis/1``: metadata, summary, rows; with ``include_evals`` also each
        analysed row's eigenvalues), CSV or Parquet (the metadata in the file's key-value metadata), by
        extension, atomically."""
        from htsr.io import check_suffix, write_json, write_table

        suffix = check_suffix(path, SAVE_FORMATS, "an analysis")
        if suffix == ".json":
            data = {"schema": self.metadata["schema"], "metadata": self.metadata, "summary": self.summary(),
                    "rows": self.rows}
            if include_evals:
                data["evals"] = {k: v.tolist() for k, v in self.evals.items()}
            return write_json(path, data)
        if suffix == ".parquet":
            from htsr.io import atomic_write, jsonable

            def w(tmp: Path) -> None:
                import json

                import pyarrow as pa
                import pyarrow.parquet as pq

                table = pa.Table.from_pandas(self.to_pandas(), preserve_index=False)
                meta = dict(table.schema.metadata or {})
                meta[b"htsr.analysis"] = json.dumps(jsonable(self.metadata)).encode()
                pq.write_table(table.replace_schema_metadata(meta), tmp)

            return atomic_write(path, w)
        return write_table(path, self.to_pandas())

    @classmethod
    def load(cls, path: str | Path) -> Analysis:
        """Read back an analysis saved as JSON or Parquet (rows, metadata and, when saved, eigenvalues).

        Raises :class:`~htsr.errors.SourceError` for a file of another schema or version."""
        return load_analysis(path)

    def plot(self, directory: str | Path, layers: Iterable[str] | None = None) -> list[Path]:
        """PNG per analysed layer (log-log ESD + fit) and a per-layer alpha chart."""
        from htsr.spectra.plots import plot_analysis

        return plot_analysis(self, directory, layers)


def _row_seed(seed: int, name: str) -> int:
    """A per-row seed from the global seed and the row name: independent of row order."""
    return int(np.random.default_rng([seed, zlib.crc32(name.encode())]).integers(2**62))


def _base_row(p: MatrixPlan, dtype: str) -> dict:
    return {
        "name": p.name, "module": p.module, "param": p.param, "kind": p.kind, "shape": "x".join(map(str, p.shape)),
        "dtype": dtype, "N": p.N, "M": p.M, "rf": p.rf, "Q": (p.N / p.M) if p.M else math.nan,
        "num_evals": p.num_evals, "status": "skipped", "reason": p.skip_reason,
    }


def _analyse_matrix(p: MatrixPlan, mats: torch.Tensor, cfg: AnalysisConfig, row: dict,
                    store: dict, rstore: dict) -> None:
    """Fill ``row`` for one plan whose matrices are loaded (B, n, m)."""
    if mats.numel() == 0:
        row.update(status="skipped", reason=f"empty tensor of shape {p.shape}")
        return
    if not torch.is_floating_point(mats):
        mats = mats.to(torch.float32)
    if cfg.tail_only and _tail_only(p, mats, cfg, row, store):
        return
    try:
        lam = eigenvalues(mats, device=cfg.device, precision=cfg.precision, method=cfg.eig_method)
    except NonFiniteError:
        bad = int((~torch.isfinite(mats)).sum())
        reason = (f"{bad} non-finite value(s) (NaN/Inf) in weights" if bad else
                  "Gram matrix overflows in this precision; use precision='float64'")
        row.update(status="error", reason=reason)
        return
    lam = np.sort(lam.ravel()) * p.scale
    if not lam.size or lam[-1] == 0.0:
        row.update(status="failed", reason="all-zero matrix: no spectrum to fit")
        return
    store[p.name] = lam
    # the rank tolerance is that of the arithmetic (float32 at least), not of the storage: bf16/f16 weights are
    # exact float32 values, and their rank and entropy must be those of the same values stored in float32
    compute = torch.promote_types(mats.dtype, torch.float32) if mats.dtype.is_floating_point else torch.float32
    eps = float(torch.finfo(compute).eps)
    eig_eps = solver_eps(p.M, cfg.precision, cfg.eig_method, cfg.device)
    row.update(M.rank_metrics(lam, p.N, p.M, eps, eig_eps=eig_eps))
    floor = M.noise_floor(float(lam[-1]), p.N, p.M, eps, eig_eps)
    if mats.dtype.is_floating_point:  # rounding of the stored values (bf16: eps 2^-7) is a noise floor too
        floor = max(floor, M.storage_noise_floor(lam, p.N, p.M, float(torch.finfo(mats.dtype).eps)))
    fit_kw = dict(threshold=cfg.threshold, xmin_pos=cfg.xmin_pos, peak_bins=cfg.peak_bins,
                  peak_legacy_bound=cfg.peak_legacy_bound, small_n=cfg.small_n)
    full_lam = lam
    if cfg.estimator == "farms":
        from htsr.spectra.farms import farms_eigenvalues

        lam, n_win, (wr, wc) = farms_eigenvalues(mats, r=cfg.farms_rows, q=cfg.farms_q, windows=cfg.farms_windows,
                                                 stride=cfg.farms_stride, device=cfg.device,
                                                 precision=cfg.precision, method=cfg.eig_method)
        lam = lam * p.scale
        store[p.name] = lam  # the ESD that was fitted (plots draw the fit over it)
        row.update(farms_windows=n_win, farms_window=f"{wr}x{wc}")
    if cfg.fingers == "clip_xmax":
        fit = PL.fit_with_fingers_clipped(lam, cfg.xmin_rule, max_fingers=cfg.max_fingers,
                                          finger_thresh=cfg.finger_thresh, **fit_kw)
    else:
        fit = PL.fit_power_law(lam, cfg.xmin_rule, **fit_kw)
    if fit.ok and fit.xmin <= floor:
        fit = PL._failed(fit.xmin_rule, fit.n_total, f"power-law tail at rounding-noise level (xmin {fit.xmin:.3g} <= "
                         f"noise floor {floor:.3g} of the stored values' rounding and the eigensolver; matrix_rank "
                         f"{row['matrix_rank']})", fit.xmax)
    row.update(alpha=fit.alpha, xmin=fit.xmin, xmax=fit.xmax, D=fit.D, sigma=fit.sigma, n_tail=fit.n_tail,
               status=fit.status, reason=fit.reason)
    if cfg.fingers == "clip_xmax":
        row.update(num_fingers=fit.num_fingers, raw_alpha=fit.raw_alpha)
    row.update(M.norm_metrics(full_lam, fit.alpha, rank=row.get("matrix_rank")))
    if cfg.detx:
        from htsr.spectra.detx import detx_columns

        row.update(detx_columns(full_lam, fit.xmin))
    if cfg.mp_fit:
        row.update(M.mp_fit(full_lam, p.N, p.M))
    if cfg.randomize:
        gen = torch.Generator().manual_seed(_row_seed(cfg.seed, p.name))
        flat = mats.reshape(mats.shape[0], -1)
        # torch.randperm is ~2.5x faster than numpy's permutation for 45M entries; seeded per row
        perm = torch.randperm(flat.shape[1], generator=gen).to(flat.device)
        shuffled = flat[:, perm].reshape(mats.shape)
        rlam = np.sort(eigenvalues(shuffled, device=cfg.device, precision=cfg.precision,
                                   method=cfg.eig_method).ravel()) * p.scale
        rstore[p.name] = rlam
        row.update(M.random_esd_metrics(full_lam, rlam, p.N, p.M))
    _fit_extras(lam, fit, fit_kw, cfg, row)


def _fit_extras(lam: np.ndarray, fit: Any, fit_kw: dict, cfg: AnalysisConfig, row: dict) -> None:
    """The optional columns of a successful fit: truncated power law (``tpl``) and goodness of fit (``gof``:
    bootstrap p-value, likelihood ratios against lognormal and exponential), for full and tail-only spectra alike."""
    if cfg.tpl and fit.ok:
        t = PL.fit_truncated_power_law(lam, fit.xmin, threshold=cfg.threshold)
        row.update(tpl_alpha=t["alpha"], Lambda=t["Lambda"])
    if cfg.gof and fit.ok:
        row["gof_p"] = PL.bootstrap_pvalue(lam, fit, n_boot=cfg.n_boot, seed=cfg.seed, **fit_kw)
        for alt in ("lognormal", "exponential"):
            R, pv = PL.likelihood_ratio(lam, fit, alt)
            row[f"lr_{alt}"] = R
            row[f"lr_{alt}_p"] = pv


def _tail_only(p: MatrixPlan, mats: torch.Tensor, cfg: AnalysisConfig, row: dict, store: dict) -> bool:
    """Try the tail-only spectrum of one plan; True when ``row`` is complete.

    The top k eigenvalues are kept only with a proof that they are all the eigenvalues above
    ``threshold``: the trace (= ||W||_F^2, exact) minus their sum bounds every other eigenvalue
    (Ritz values are lower bounds, so the bound is safe). Every fit then sees exactly the
    eigenvalues the full solve's fit sees (the threshold drops the rest), whatever the xmin rule.
    False (``row["spectrum_note"]`` says why) when the caller must solve the whole spectrum.

    Metrics: everything from the fit, lambda_max, norm (the trace) and stable rank are the full
    computation's; log_alpha_norm too when the rest's bound (m - k) * threshold^alpha is below 1e-12
    of it; entropy and the rank metrics (which count the tiny eigenvalues) are NaN.
    """
    row.update(spectrum="full", spectrum_k=p.num_evals, spectrum_note="")
    if mats.ndim != 3 or mats.shape[0] != 1:
        row["spectrum_note"] = f"{mats.shape[0]} pooled matrices: tail-only takes one matrix"
        return False
    side = min(mats.shape[-2:])
    if side < cfg.tail_min_side:
        row["spectrum_note"] = f"smaller side {side} < tail_min_side {cfg.tail_min_side}"
        return False
    if not cfg.threshold > 0:
        row["spectrum_note"] = "threshold 0: the uncomputed eigenvalues cannot be shown to be dropped"
        return False
    k = math.ceil(cfg.tail_fraction * side)
    try:
        top = top_eigenvalues(mats[0], k, device=cfg.device, seed=_row_seed(cfg.seed, p.name),
                              floor=cfg.threshold / p.scale, max_rest_share=TAIL_GIVE_UP)
    except (TailTooSmallError, NonFiniteError) as e:
        row["spectrum_note"] = str(e)
        return False
    if not top.converged:
        row["spectrum_note"] = f"{top.stopped}; full solve"
        return False
    lam = np.sort(top.values) * p.scale
    rest = top.trace * p.scale - float(lam.sum())
    if rest > cfg.threshold:
        row["spectrum_note"] = (f"the {side - k} uncomputed eigenvalues sum to {rest:.3g} > threshold "
                                f"{cfg.threshold:g}: some may be fitted; full solve")
        return False
    store[p.name] = lam
    row.update(spectrum="tail", spectrum_k=k)
    row.update(matrix_rank=math.nan, rank_loss=math.nan, weak_rank_loss=math.nan,
               sv_max=float(np.sqrt(lam[-1] / p.scale)), sv_min=math.nan)
    fit_kw = dict(threshold=cfg.threshold, xmin_pos=cfg.xmin_pos, peak_bins=cfg.peak_bins,
                  peak_legacy_bound=cfg.peak_legacy_bound, small_n=cfg.small_n)
    if cfg.fingers == "clip_xmax":
        fit = PL.fit_with_fingers_clipped(lam, cfg.xmin_rule, max_fingers=cfg.max_fingers,
                                          finger_thresh=cfg.finger_thresh, **fit_kw)
        row.update(num_fingers=fit.num_fingers, raw_alpha=fit.raw_alpha)
    else:
        fit = PL.fit_power_law(lam, cfg.xmin_rule, **fit_kw)
    row.update(alpha=fit.alpha, xmin=fit.xmin, xmax=fit.xmax, D=fit.D, sigma=fit.sigma, n_tail=fit.n_tail,
               status=fit.status, reason=fit.reason)
    row.update(M.norm_metrics(lam, fit.alpha))
    total = top.trace * p.scale
    lmax = float(lam[-1])
    row.update(norm=total, log_norm=math.log10(total) if total > 0 else math.nan,
               stable_rank=total / lmax if lmax > 0 else math.nan, entropy=math.nan)
    if np.isfinite(row["log_alpha_norm"]):
        # log10 of a bound on the uncomputed eigenvalues' share of sum(lambda^alpha)
        bound = math.log10(max(side - k, 1)) + fit.alpha * math.log10(cfg.threshold)
        if bound > row["log_alpha_norm"] - 12:
            row["log_alpha_norm"] = math.nan
    _fit_extras(lam, fit, fit_kw, cfg, row)
    return True


def _entries(source: Any, *, base: Any, lora: bool, allow_pickle: bool) -> Iterable[TensorEntry]:
    entries = iter_entries(source, allow_pickle=allow_pickle)
    if lora:
        cfg = lora_adapter_config(Path(source)) if isinstance(source, (str, Path)) else None
        entries = lora_entries(entries, cfg)
    if base is not None:
        entries = delta_entries(entries, list(iter_entries(base, allow_pickle=allow_pickle)))
    return entries


def _process_entry(entry: TensorEntry, cfg: AnalysisConfig, store: dict, rstore: dict) -> list[dict]:
    """All rows of one tensor: load it once, analyse each of its plans, never raise."""
    plans = [p for p in plan_entry(entry, cfg) if selected(p.name, p.module, cfg.layers, cfg.exclude)]
    if not plans:
        return []
    todo = [p for p in plans if not p.skip_reason]
    tensor = None
    load_error = ""
    if todo:
        try:
            tensor = entry.load()
        except SourceError as e:
            load_error = str(e)
        except Exception as e:  # a bad tensor must not kill the analysis
            load_error = f"cannot load tensor: {e.__class__.__name__}: {e}"
    rows = []
    for p in plans:
        row = _base_row(p, entry.dtype)
        t1 = time.perf_counter()
        if not p.skip_reason:
            if load_error:
                row.update(status="error", reason=load_error)
            else:
                try:
                    _analyse_matrix(p, p.extract(tensor), cfg, row, store, rstore)
                except Exception as e:  # keep going: one bad layer never kills the run
                    log.warning("layer %s failed: %s", p.name, e)
                    row.update(status="error", reason=f"{e.__class__.__name__}: {e}")
        row["time_s"] = time.perf_counter() - t1
        rows.append(row)
    if tensor is not None and entry.release is not None:
        del tensor
        try:
            entry.release()
        except Exception as e:  # memory advice only; never fails a row
            log.debug("release of %s failed: %s", entry.name, e)
    return rows


def analyze(
    source: Any,
    preset: str = "htsr",
    *,
    config: AnalysisConfig | None = None,
    base: Any = None,
    lora: bool = False,
    allow_pickle: bool = False,
    progress: bool = False,
    executor: Any = None,
    **options: Any,
) -> Analysis:
    """Analyse the spectra of every weight matrix in ``source``.

    Args:
        source: an ``nn.Module``, a state dict, a ``.safetensors`` file, a sharded or Hugging
            Face model directory, a LoRA adapter directory (with ``lora=True``), or a pickle
            checkpoint (only with ``allow_pickle=True``).
        preset: "htsr" (default), "weightwatcher", "tempbalance" or "alphapruning".
        config: a ready :class:`AnalysisConfig` (then ``preset``/``options`` are ignored).
        base: a second source; rows then describe W - W_base matched by name.
        progress: show a progress bar with per-layer timing (stderr).
        executor: ``None``/``"local"`` (this process), ``"ray"`` or an executor object
            (:class:`~htsr.experiments.executors.RayExecutor`): the tensors of a checkpoint path analysed as
            tasks, rows gathered in the local order (:mod:`htsr.spectra.distributed`).
        **options: any :class:`AnalysisConfig` field, e.g. ``layers=["*.attn.*"]``,
            ``mp_fit=True``, ``randomize=True``, ``device="cuda"``.
    Returns:
        :class:`Analysis`. Errors in one layer become that row's status; only an
        unreadable source raises (:class:`htsr.errors.SourceError`).
    """
    cfg = config if config is not None else make_config(preset, **options)
    dev = resolve_device(cfg.device)  # fail early on an unavailable device
    t0 = time.perf_counter()
    if executor is not None and getattr(executor, "name", executor) != "local":
        if base is not None or lora:
            raise ConfigError("base= and lora= analyses run locally only (executor='local')")
        from htsr.experiments.executors import make_executor
        from htsr.spectra.distributed import analyze_distributed

        own = isinstance(executor, str)
        ex = make_executor(executor) if own else executor
        try:
            rows, store, rstore, n_parts = analyze_distributed(source, cfg, ex, analyze_part,
                                                               allow_pickle=allow_pickle, progress=progress)
        finally:
            if own:
                ex.close()
        meta = _metadata(source, None, False, cfg, t0)
        meta.update(executor=ex.name, parts=n_parts)
        return Analysis(rows, store, meta, cfg, rstore)
    store: dict[str, np.ndarray] = {}
    rstore: dict[str, np.ndarray] = {}
    entries = _entries(source, base=base, lora=lora, allow_pickle=allow_pickle)
    workers = cfg.workers or min(os.cpu_count() or 1, 4)
    if dev.type != "cpu":
        workers = 1
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(desc="htsr analyze", unit="layer", leave=True)
    results: list[list[dict]] = []

    def done(rows: list[dict]) -> None:
        if bar is not None:
            for row in rows:
                bar.set_postfix_str(f"{row['name']} {row['time_s']:.2f}s", refresh=False)
                bar.update(1)

    if workers <= 1:
        for entry in entries:
            rows = _process_entry(entry, cfg, store, rstore)
            results.append(rows)
            done(rows)
    else:
        # Small layers run concurrently, each with single-threaded BLAS (LAPACK releases the
        # GIL); at most 2 * workers of them are in flight. Large tensors (>= LARGE_TENSOR
        # elements) run one at a time with all BLAS threads, so peak memory stays ~1 tensor.
        from concurrent.futures import ThreadPoolExecutor

        from threadpoolctl import threadpool_limits

        pending: deque = deque()
        limiter = None

        def drain(keep: int) -> None:
            while len(pending) > keep:
                rows = pending.popleft().result()
                results.append(rows)
                done(rows)

        try:
            with ThreadPoolExecutor(workers) as pool:
                for entry in entries:
                    if math.prod(entry.shape) >= LARGE_TENSOR:
                        drain(0)
                        if limiter is not None:
                            limiter.restore_original_limits()
                            limiter = None
                        rows = _process_entry(entry, cfg, store, rstore)
                        results.append(rows)
                        done(rows)
                        continue
                    if limiter is None:
                        limiter = threadpool_limits(limits=1, user_api="blas")
                    pending.append(pool.submit(_process_entry, entry, cfg, store, rstore))
                    drain(2 * workers - 1)
                drain(0)
        finally:
            if limiter is not None:
                limiter.restore_original_limits()
    if bar is not None:
        bar.close()
    rows = [r for rs in results for r in rs]
    meta = _metadata(source, base, lora, cfg, t0)
    meta["workers"] = workers
    return Analysis(rows, store, meta, cfg, rstore)


def analyze_part(source: str, names: Sequence[str], config: dict[str, Any], allow_pickle: bool = False,
                 ) -> tuple[list[dict], dict[str, list[float]], dict[str, list[float]]]:
    """Rows, eigenvalues and randomized eigenvalues of the tensors ``names`` of ``source`` (a task's work)."""
    cfg = AnalysisConfig.from_dict(config)
    wanted = set(names)
    store: dict[str, np.ndarray] = {}
    rstore: dict[str, np.ndarray] = {}
    rows: list[dict] = []
    for entry in iter_entries(source, allow_pickle=allow_pickle):
        if entry.name in wanted:
            rows.extend(_process_entry(entry, cfg, store, rstore))
    return rows, {k: v.tolist() for k, v in store.items()}, {k: v.tolist() for k, v in rstore.items()}


def _part_cell(source: str, names: list[str], config: dict[str, Any], allow_pickle: bool) -> Any:
    return analyze_part(source, names, config, allow_pickle)


def _metadata(source: Any, base: Any, lora: bool, cfg: AnalysisConfig, t0: float) -> dict:
    return {
        "schema": SCHEMA_VERSION,
        "htsr_version": __version__,
        "torch_version": torch.__version__,
        "source": describe_source(source),
        "base": describe_source(base) if base is not None else None,
        "lora": lora,
        "preset": cfg.preset,
        "config": cfg.as_dict(),
        "conventions": CONVENTIONS,
        "elapsed_s": time.perf_counter() - t0,
    }


@dataclass
class MetricVector:
    """Per-layer values of one metric: ``names`` and ``values`` (aligned), ``reasons`` (name -> why the value was
    not finite), ``imputed`` (names whose value the policy replaced), ``dropped`` (names the policy left out)."""

    column: str
    names: list[str]
    values: np.ndarray
    reasons: dict[str, str]
    policy: str
    imputed: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, float]:
        return dict(zip(self.names, self.values.tolist(), strict=True))

    def __len__(self) -> int:
        return len(self.names)


def metric_vector(rows: Sequence[dict], column: str, names: Iterable[str] | None = None, *, policy: str = "nan",
                  statuses: Sequence[str] = ("success", "failed")) -> MetricVector:
    """:meth:`Analysis.metric` on plain rows (see there)."""
    from htsr.errors import ConfigError

    if policy not in NAN_POLICIES:
        raise ConfigError(f"unknown NaN policy {policy!r}; expected one of {', '.join(NAN_POLICIES)}")
    if rows and not any(column in r for r in rows):
        cols = sorted({k for r in rows for k, v in r.items() if isinstance(v, int | float) and not isinstance(v, bool)})
        raise ConfigError(f"the analysis has no column {column!r}; numeric columns: {', '.join(cols)}")
    by_name = {r["name"]: r for r in rows}
    by_module: dict[str, list[dict]] = {}
    for r in rows:
        by_module.setdefault(r["module"], []).append(r)
    wanted = [r["name"] for r in rows] if names is None else list(names)
    vals = np.full(len(wanted), math.nan)
    reasons: dict[str, str] = {}
    for i, n in enumerate(wanted):
        r = by_name.get(n)
        if r is None:
            cands = by_module.get(n, [])
            if len(cands) > 1:
                raise ConfigError(f"{n!r} has {len(cands)} rows ({', '.join(c['name'] for c in cands)}); ask for "
                                  "one of them by row name")
            r = cands[0] if cands else None
        if r is None:
            reasons[n] = "not in the analysis"
            continue
        v = r.get(column)
        if r["status"] not in statuses:
            reasons[n] = f"{r['status']}: {r['reason']}"
        elif v is None or not isinstance(v, int | float) or not math.isfinite(float(v)):
            reasons[n] = f"{r['status']}: {r['reason']}" if r["reason"] else f"non-finite {column}"
        else:
            vals[i] = float(v)
    out = MetricVector(column, wanted, vals, reasons, policy)
    bad = ~np.isfinite(vals)
    if not bad.any():
        return out
    if policy == "raise" or (policy == "mean" and bad.all()):
        listed = "; ".join(f"{n}: {reasons[n]}" for n in np.array(wanted)[bad][:5])
        more = f" (and {int(bad.sum()) - 5} more)" if bad.sum() > 5 else ""
        raise ConfigError(f"{column} is not available for {int(bad.sum())} of {len(wanted)} layer(s): {listed}{more}")
    if policy == "mean":
        vals[bad] = float(np.mean(vals[~bad]))
        out.imputed = [n for n, b in zip(wanted, bad, strict=True) if b]
        log.warning("%s is not available for %d layer(s); the mean of the others is used for them", column,
                    len(out.imputed))
    elif policy == "drop":
        out.dropped = [n for n, b in zip(wanted, bad, strict=True) if b]
        out.names = [n for n, b in zip(wanted, bad, strict=True) if not b]
        out.values = vals[~bad]
    return out


def load_analysis(path: str | Path) -> Analysis:
    """An :class:`Analysis` from a saved JSON or Parquet file (see :meth:`Analysis.load`)."""
    import json

    from htsr.errors import SourceError

    p = Path(path)
    if not p.is_file():
        raise SourceError(f"{p}: no such file")
    suffix = p.suffix.lower()
    if suffix == ".json":
        try:
            data = json.loads(p.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SourceError(f"{p}: not a JSON file ({e})") from None
        if not isinstance(data, dict):
            raise SourceError(f"{p}: not an htsr analysis file (expected a JSON object)")
        meta, rows = data.get("metadata"), data.get("rows")
        evals = {k: np.asarray(v, dtype=np.float64) for k, v in (data.get("evals") or {}).items()}
    elif suffix == ".parquet":
        try:
            import pyarrow.parquet as pq

            table = pq.read_table(p)
        except Exception as e:  # pyarrow raises its own types for corrupt files
            raise SourceError(f"{p}: cannot read Parquet file ({e})") from None
        raw = (table.schema.metadata or {}).get(b"htsr.analysis")
        meta = json.loads(raw) if raw else None
        df = table.to_pandas()
        rows = df.to_dict("records")
        evals = {}
    else:
        raise SourceError(f"{p}: cannot load an analysis from {suffix or 'a file without extension'!r}; expected "
                          ".json or .parquet (CSV files carry no metadata)")
    schema = (meta or {}).get("schema") if isinstance(meta, dict) else None
    if not isinstance(schema, str) or not schema.startswith("htsr.analysis/"):
        raise SourceError(f"{p}: not an htsr analysis file (schema {schema!r}; expected {SCHEMA_VERSION})")
    if schema != SCHEMA_VERSION:
        raise SourceError(f"{p}: analysis schema {schema} is not supported by htsr {__version__} "
                          f"(expected {SCHEMA_VERSION})")
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "name" in r and "status" in r for r in rows):
        raise SourceError(f"{p}: malformed analysis rows (expected a list of objects with name and status)")
    for r in rows:
        for k, v in list(r.items()):
            if v is None and k not in ("reason",):
                r[k] = math.nan
        r.setdefault("module", r["name"])
        r["reason"] = r.get("reason") or ""
    cfg_opts = {k: v for k, v in (meta.get("config") or {}).items() if k != "preset"}
    try:
        cfg = make_config(meta.get("preset", "htsr"), **cfg_opts)
    except Exception:
        cfg = make_config("htsr")
    return Analysis(rows, evals, meta, cfg)

