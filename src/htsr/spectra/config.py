"""Analysis options as one validated dataclass, and the presets that name whole conventions."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from htsr.config import Config, check_keys
from htsr.errors import ConfigError
from htsr.spectra.powerlaw import EVALS_THRESH, XMIN_RULES

ESTIMATORS = ("plain", "farms")
KINDS = ("linear", "hf_conv1d", "conv1d", "conv2d", "embedding", "moe_expert", "lora")


@dataclass(frozen=True)
class AnalysisConfig(Config):
    """Every option of an analysis. Build one with :func:`make_config` (preset + overrides).

    Fit: ``xmin_rule`` (ks | median | fraction | peak), ``xmin_pos`` (median/fraction: xmin
    at sorted index N / xmin_pos), ``threshold`` (eigenvalues <= it are dropped before the
    fit), ``peak_bins``/``peak_legacy_bound`` (peak rule), ``fingers`` (None | "clip_xmax"),
    ``small_n`` (WeightWatcher 0.7.7's small-sample fit below this many eigenvalues),
    ``tpl`` (also fit a truncated power law), ``gof`` (bootstrap p-value and likelihood
    ratios, ``n_boot`` samples).
    Extra metrics: ``mp_fit`` (Marchenko-Pastur bulk), ``randomize`` (compare with the ESD
    of the element-shuffled matrix), ``seed`` for every random step.
    Layers: ``kinds`` to analyse, ``include_embeddings`` (opt-in), ``split_qkv``,
    ``min_evals``/``max_evals``/``max_N`` size rules, ``conv_scale`` (eigenvalue factor for
    convolution kernels; 0.5 as WeightWatcher's conv2d_norm and TempBalance's conv_norm),
    ``conv_groups`` ("blockdiag": each group's block separately, the true operator's
    spectrum; "stacked": groups stacked as the references do).
    Estimator: ``estimator`` ("plain": the ESD of each whole matrix; "farms": the pooled ESD of fixed-aspect-ratio
    windows, :mod:`htsr.spectra.farms`, with ``farms_rows`` (window rows; None: half the smaller side),
    ``farms_q`` (window columns / rows; 1 = square), ``farms_windows`` (windows per side) or ``farms_stride``).
    The fit (alpha, xmin, D, ...) uses the FARMS ESD (also what ``Analysis.evals`` holds and plots draw); norms,
    ranks, MP fit and detX stay those of the whole matrix.
    ``detx`` adds WeightWatcher's detX / SETOL ERG condition columns (:func:`htsr.spectra.detx.detx`).
    Compute: ``device`` (cpu | cuda | auto), ``precision`` (auto | float32 | float64),
    ``eig_method`` (gram | svd), ``workers`` (layers processed concurrently on CPU, each
    with single-threaded BLAS; 0 = one per core, at most 4). Results do not depend on it.
    Tail-only spectrum (off by default): ``tail_only`` computes only the top ``tail_fraction``
    of the eigenvalues of matrices whose smaller side is at least ``tail_min_side`` (float64
    block Krylov, :func:`htsr.spectra.eigen.top_eigenvalues`) and keeps them when the exact
    trace proves that every other eigenvalue is at most ``threshold`` (numerically low-rank
    matrices: LoRA products, deltas); the fit is then the full spectrum's. Otherwise the row is
    solved in full. Rows then carry ``spectrum`` (tail | full), ``spectrum_k`` and
    ``spectrum_note`` (why a row was solved in full).
    """

    preset: str = "htsr"
    xmin_rule: str = "ks"
    xmin_pos: float = 2.0
    threshold: float = EVALS_THRESH
    peak_bins: int = 100
    peak_legacy_bound: bool = False
    fingers: str | None = None
    max_fingers: int = 10
    finger_thresh: float = 1.0
    small_n: int = 0
    tpl: bool = False
    gof: bool = False
    n_boot: int = 100
    mp_fit: bool = False
    randomize: bool = False
    seed: int = 0
    kinds: tuple[str, ...] = ("linear", "hf_conv1d", "conv1d", "conv2d", "embedding", "moe_expert", "lora")
    include_embeddings: bool = False
    split_qkv: bool = False
    min_evals: int = 10
    max_evals: int | None = None
    max_N: int | None = None
    conv_scale: float = 0.5
    conv_groups: str = "blockdiag"
    device: str = "cpu"
    precision: str = "auto"
    eig_method: str = "gram"
    workers: int = 0
    tail_only: bool = False
    tail_min_side: int = 2048
    tail_fraction: float = 0.125
    layers: tuple[str, ...] = field(default_factory=tuple)
    exclude: tuple[str, ...] = field(default_factory=tuple)
    estimator: str = "plain"
    farms_rows: int | None = None
    farms_q: float = 1.0
    farms_windows: int = 10
    farms_stride: int | None = None
    detx: bool = False

    def validate(self) -> None:
        if self.xmin_rule not in XMIN_RULES or self.xmin_rule == "fixed":
            raise ConfigError(f"unknown xmin_rule {self.xmin_rule!r}; expected ks, median, fraction or peak")
        if self.fingers not in (None, "clip_xmax"):
            raise ConfigError(f"unknown fingers option {self.fingers!r}; expected None or 'clip_xmax'")
        bad = [k for k in self.kinds if k not in KINDS]
        if bad:
            raise ConfigError(f"unknown layer kind(s) {bad}; expected some of {', '.join(KINDS)}")
        if self.conv_groups not in ("blockdiag", "stacked"):
            raise ConfigError(f"unknown conv_groups {self.conv_groups!r}; expected 'blockdiag' or 'stacked'")
        _check_device(self.device)
        if self.precision not in ("auto", "float32", "float64"):
            raise ConfigError(f"unknown precision {self.precision!r}; expected auto, float32 or float64")
        if self.eig_method not in ("gram", "svd"):
            raise ConfigError(f"unknown eig_method {self.eig_method!r}; expected 'gram' or 'svd'")
        if not self.xmin_pos > 1:
            raise ConfigError(f"xmin_pos must be > 1 (xmin at sorted index N / xmin_pos must leave a tail; 2 is the "
                              f"median), got {self.xmin_pos}")
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")
        if not self.threshold >= 0:
            raise ConfigError(f"threshold must be >= 0, got {self.threshold}")
        if self.peak_bins < 2 or self.max_fingers < 0 or self.small_n < 0:
            raise ConfigError("peak_bins must be >= 2, max_fingers and small_n >= 0")
        if not self.conv_scale > 0:
            raise ConfigError(f"conv_scale must be > 0, got {self.conv_scale}")
        if self.max_evals is not None and self.max_evals < 1 or self.max_N is not None and self.max_N < 1:
            raise ConfigError("max_evals and max_N must be >= 1 (or None)")
        from htsr.nn import Patterns

        Patterns(self.layers)
        Patterns(self.exclude)
        if self.workers < 0:
            raise ConfigError(f"workers must be >= 0 (0 = automatic), got {self.workers}")
        if self.estimator not in ESTIMATORS:
            raise ConfigError(f"unknown estimator {self.estimator!r}; expected one of {', '.join(ESTIMATORS)}")
        from htsr.spectra.farms import check_params

        why = check_params(self.farms_rows, self.farms_q, self.farms_windows, self.farms_stride)
        if why:
            raise ConfigError(why)
        if self.min_evals < 0 or self.n_boot < 1:
            raise ConfigError("min_evals must be >= 0 and n_boot >= 1")
        self._validate_tail()

    def _validate_tail(self) -> None:
        from htsr.spectra.eigen import TAIL_MIN_SIDE

        if not 0 < self.tail_fraction <= 0.5:
            raise ConfigError(f"tail_fraction must be in (0, 0.5] (the share of eigenvalues a tail-only spectrum "
                              f"computes), got {self.tail_fraction}")
        if self.tail_min_side < TAIL_MIN_SIDE:
            raise ConfigError(f"tail_min_side must be >= {TAIL_MIN_SIDE}: smaller matrices are too small for a "
                              f"tail-only spectrum (got {self.tail_min_side})")
        if not self.tail_only:
            return
        clash = [name for name, bad in (
            ("mp_fit (the Marchenko-Pastur fit needs the bulk)", self.mp_fit),
            ("randomize (the shuffled matrix is full rank)", self.randomize),
            ("eig_method='svd'", self.eig_method != "gram"),
        ) if bad]
        if clash:
            raise ConfigError(f"tail_only cannot be combined with {'; '.join(clash)}")

    def as_dict(self) -> dict:
        return self.to_dict()


def _check_device(device: object) -> None:
    """cpu, auto, cuda or cuda:N, and a CUDA device only when this machine has it (before any work starts)."""
    import re

    import torch

    d = str(device).strip().lower()
    if d in ("cpu", "auto"):
        return
    if not re.fullmatch(r"cuda(:\d+)?", d):
        raise ConfigError(f"unknown device {device!r}; expected cpu, cuda, cuda:N or auto")
    if not torch.cuda.is_available():
        raise ConfigError(f"device {device!r}: no CUDA device on this machine; use cpu or auto")
    if ":" in d and int(d.split(":")[1]) >= torch.cuda.device_count():
        raise ConfigError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")


PRESETS: dict[str, dict] = {
    # htsr's own defaults: KS-scan fit, honest conv/group handling, embeddings opt-in.
    "htsr": {},
    # WeightWatcher 0.7.7 analyze() defaults: same layers (embeddings included, size
    # rules 8 / 15000 / 50000), conv2d_norm (lambda * 0.5, groups stacked), 1e-5
    # threshold, KS scan with the small-N path below 20 eigenvalues, float64 spectra.
    "weightwatcher": {
        "threshold": EVALS_THRESH,
        "small_n": 20,
        "min_evals": 8,
        "max_evals": 15000,
        "max_N": 50000,
        "include_embeddings": True,
        "conv_groups": "stacked",
        "precision": "float64",
    },
    # TempBalance (net_esd_estimator): xmin at the median eigenvalue, no zero
    # filtering, layers with >= 50 eigenvalues, Linear and Conv2d only.
    "tempbalance": {
        "xmin_rule": "median",
        "xmin_pos": 2.0,
        "threshold": 0.0,
        "min_evals": 50,
        "kinds": ("linear", "conv2d"),
        "conv_groups": "stacked",
    },
    # AlphaPruning / AlphaLoRA: xmin searched near the log-histogram peak; the
    # reference's mixed log/linear lower bound is fixed (peak_legacy_bound=True restores it).
    "alphapruning": {
        "xmin_rule": "peak",
        "threshold": 0.0,
        "min_evals": 2,
        "kinds": ("linear", "conv2d"),
        "conv_groups": "stacked",
    },
}


def make_config(preset: str = "htsr", **overrides) -> AnalysisConfig:
    """A config from a named preset plus keyword overrides (unknown names are errors)."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    check_keys(overrides, [f.name for f in fields(AnalysisConfig) if f.name != "preset"], "analysis option(s)")
    opts = dict(PRESETS[preset])
    opts.update(overrides)
    for k in ("kinds", "layers", "exclude"):
        if k in opts and isinstance(opts[k], str):
            opts[k] = (opts[k],)
        if k in opts:
            opts[k] = tuple(opts[k])
    return AnalysisConfig(preset=preset, **opts)
