"""Every setting of :func:`htsr.pruning.prune.prune_model`, stated once: :class:`PruneConfig`.

``prune_model(model, 0.7, config=PruneConfig(pruner="sparsegpt", epsilon=0.2))``,
``prune_model(model, 0.7, "sparsegpt", epsilon=0.2)`` and ``htsr prune ... --pruner sparsegpt --set epsilon=0.2``
build the same object; an unknown key is an error naming the valid ones, a value out of range an error naming the
range, before any weight changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from htsr.config import Config, check_choice, check_positive_int, check_range
from htsr.errors import ConfigError
from htsr.pruning.allocation import OWL_LAMBDA, OWL_M
from htsr.pruning.errors import PruningError
from htsr.pruning.pruners import PRUNERS, check_nm

#: ``auto``: AlphaPruning (``alpha``), or ``uniform`` with an N:M pattern (which fixes every layer's sparsity)
ALLOCATIONS = ("auto", "alpha", "uniform", "owl")
MAPPINGS = ("block", "matrix")
#: metric name -> (analysis preset, row column); any other name is a column of the ``alphapruning`` preset
METRICS = {"alpha_peak": ("alphapruning", "alpha"), "alpha_median": ("tempbalance", "alpha")}


class PruneConfigError(PruningError, ConfigError):
    """A pruning setting of the wrong type, out of range or contradicting another one."""


@dataclass(frozen=True)
class PruneConfig(Config):
    """The settings of one pruning run; the defaults are AlphaPruning's (NeurIPS'24 ``main.py``).

    * ``sparsity``: global target in [0, 1), parameter-weighted over the blocks' layers (None with ``nm``).
    * ``pruner``: ``magnitude``, ``wanda`` or ``sparsegpt``.
    * ``allocation``: ``alpha`` (AlphaPruning), ``uniform``, ``owl``, or ``auto`` (alpha; uniform with ``nm``).
    * ``epsilon``: AlphaPruning's relative band: layer sparsities in [(1-eps) c, (1+eps) c], eps in [0, 1].
    * ``nm``: an N:M pattern ``(n, m)`` (0 < n < m), every layer at sparsity 1 - n/m (uniform allocation).
    * ``metric``: ``alpha_peak`` (PL_Alpha_Hill, histogram-peak xmin: the reference's), ``alpha_median``, or an
      analysis column (``alpha_hat``, ``stable_rank``, ``entropy`` ...).
    * ``mapping``: ``block`` (block-mean metric, the reference's) or ``matrix``.
    * ``max_ratio``: clip layer sparsities to [0, max_ratio] with the mean restored; None: an error instead.
    * ``owl_lambda`` / ``owl_m``: OWL's band half-width (>= 0) and outlier threshold (> 0: scores above
      ``owl_m`` x their mean are outliers).
    * ``blocksize`` / ``percdamp``: SparseGPT's column block and Hessian dampening (fraction of mean diag H).
    """

    sparsity: float | None = None
    pruner: str = "wanda"
    allocation: str = "auto"
    epsilon: float = 0.3
    nm: tuple[int, int] | None = None
    metric: str = "alpha_peak"
    mapping: str = "block"
    max_ratio: float | None = None
    owl_lambda: float = OWL_LAMBDA
    owl_m: float = OWL_M
    blocksize: int = 128
    percdamp: float = 0.01

    def __post_init__(self) -> None:
        try:
            super().__post_init__()
        except PruningError:
            raise
        except ConfigError as e:  # the same message as the package's error type (a PruningError and a ConfigError)
            raise PruneConfigError(str(e)) from None

    def validate(self) -> None:
        check_choice("pruner", self.pruner, PRUNERS)
        check_choice("allocation", self.allocation, ALLOCATIONS)
        check_choice("mapping", self.mapping, MAPPINGS)
        if self.sparsity is not None:
            check_range("sparsity", self.sparsity, 0.0, 1.0, hi_open=True)
        check_range("epsilon", self.epsilon, 0.0, 1.0)
        if self.max_ratio is not None:
            check_range("max_ratio", self.max_ratio, 0.0, 1.0, lo_open=True, hi_open=True)
        check_range("owl_lambda", self.owl_lambda, 0.0)
        check_range("owl_m", self.owl_m, 0.0, lo_open=True)
        check_positive_int("blocksize", self.blocksize)
        check_range("percdamp", self.percdamp, 0.0)
        if not isinstance(self.metric, str) or not self.metric:
            raise PruneConfigError(f"metric must be a metric name (alpha_peak, alpha_median or an analysis column), "
                                   f"got {self.metric!r}")
        nm = check_nm(self.nm)
        if nm is not None:
            if self.allocation not in ("auto", "uniform"):
                raise PruneConfigError("an N:M pattern fixes every layer's sparsity at 1 - N/M: use allocation="
                                       "'uniform'")
            if self.sparsity is not None and abs(float(self.sparsity) - (1.0 - nm[0] / nm[1])) > 1e-12:
                raise PruneConfigError(f"sparsity {self.sparsity} contradicts the {nm[0]}:{nm[1]} pattern (1 - N/M = "
                                       f"{1.0 - nm[0] / nm[1]}); leave sparsity out")

    @property
    def resolved_allocation(self) -> str:
        """``allocation`` with ``auto`` resolved: ``uniform`` with an N:M pattern, else ``alpha``."""
        if self.allocation != "auto":
            return self.allocation
        return "uniform" if self.nm is not None else "alpha"

    @property
    def target(self) -> float:
        """The global target sparsity (1 - n/m with an N:M pattern), or an error when none is given."""
        if self.nm is not None:
            return 1.0 - self.nm[0] / self.nm[1]
        if self.sparsity is None:
            raise PruneConfigError("a target sparsity is required (or an N:M pattern, nm=(2, 4))")
        return float(self.sparsity)

    def analysis_preset(self) -> tuple[str, str]:
        """``(preset, column)`` of the spectral analysis that gives ``metric``."""
        return METRICS.get(self.metric, ("alphapruning", self.metric))


def resolve(config: PruneConfig | dict[str, Any] | None, **settings: Any) -> PruneConfig:
    """``config`` (a :class:`PruneConfig`, a dict of its fields or None) with the settings that are not None."""
    if config is None:
        config = PruneConfig()
    elif isinstance(config, dict):
        config = PruneConfig.from_dict(config)
    elif not isinstance(config, PruneConfig):
        raise PruneConfigError(f"config must be a PruneConfig or a dict, got {type(config).__name__}")
    given = {k: v for k, v in settings.items() if v is not None}
    return config.replace(**given) if given else config


__all__ = ["ALLOCATIONS", "MAPPINGS", "METRICS", "PruneConfig", "PruneConfigError", "resolve"]
