"""TempBalance's settings: one :class:`~htsr.config.Config` whose field defaults are the NeurIPS'23 recipe.

``TempBalance(model, optimizer, config=TempBalanceConfig(...))``, ``TempBalance(model, optimizer, mapping="rank")``
and ``htsr tempbalance ... --set mapping=rank`` all build this object; an unknown key is an error naming the valid
ones. :data:`EMNLP24` is the Model Balancing (EMNLP'24) fine-tuning recipe used by the Hugging Face integration.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from htsr.config import Config, check_choice, check_positive_int, check_range
from htsr.errors import ConfigError
from htsr.nn import BLOCK_PATTERN, Patterns

METRICS = ("alpha", "alpha_hat", "spectral_norm", "log_spectral_norm")
UNITS = ("layer", "block")
NORMS = ("name", "order", "none")
#: maps defined only for some metrics (the others can be <= 0 or <= 1)
_DOMAIN = {"sqrt": ("alpha", "spectral_norm"), "log2": ("alpha",)}
#: analysis options TempBalance sets itself
MANAGED_ANALYSIS_OPTIONS = ("layers", "split_qkv", "randomize", "gof")


@dataclass(frozen=True)
class TempBalanceConfig(Config):
    """Every TempBalance setting; the defaults are the NeurIPS'23 CV recipe (``tempbalance.py``).

    * ``mapping``: ``linear`` (s1/s2), ``rank`` (s1/s2), ``sqrt``, ``log2``, ``sigmoid`` (s_min/s_max/temperature).
    * ``metric``: ``alpha`` (PL_Alpha_Hill), ``alpha_hat``, ``spectral_norm`` (lambda_max) or ``log_spectral_norm``.
    * ``unit``: ``layer``, or ``block`` (block-averaged metric; a block is :func:`htsr.nn.block_of` with
      ``block_pattern``, and every parameter under the block's path, norms included, gets its rate).
    * ``interval``: recompute the metric every ``interval`` calls of ``step()``.
    * ``exclude_first`` / ``exclude_last``: the first / last analysable layer stays at the base rate.
    * ``exclude``: globs or ``re:REGEX`` on module names never tuned.
    * ``norms`` (``unit="layer"``): ``name`` (default, the reference's rule: a BatchNorm whose name with ``bn``
      replaced by ``conv`` is a tuned layer gets that layer's rate, e.g. ``layer1.0.bn1`` -> ``layer1.0.conv1``; a
      shortcut BatchNorm ``shortcut.1``, the stem's ``bn1`` and BatchNorms in ``Sequential`` stacks keep the base
      rate), ``order``
      (a norm follows the nearest preceding tuned layer with the same parent module), ``none``.
    * ``preset`` / ``analysis_options``: the spectral engine's preset and overrides (``xmin_pos``, ``min_evals``,
      ``kinds``, ``threshold`` ...).
    * ``update_at_init``: compute the multipliers from the initial weights at construction (the reference does).
    """

    mapping: str = "linear"
    metric: str = "alpha"
    unit: str = "layer"
    interval: int = 1
    s1: float = 0.5
    s2: float = 1.5
    s_min: float = 1.0
    s_max: float = 1.0
    temperature: float = 10.0
    exclude_first: bool = True
    exclude_last: bool = True
    exclude: tuple[str, ...] = ()
    norms: str = "name"
    block_pattern: str = BLOCK_PATTERN
    preset: str = "tempbalance"
    analysis_options: dict[str, Any] = field(default_factory=dict)
    update_at_init: bool = True

    def validate(self) -> None:
        from htsr.tempbalance.mapping import MAPPINGS, get_mapping

        check_choice("mapping", self.mapping, MAPPINGS)
        check_choice("metric", self.metric, METRICS)
        check_choice("unit", self.unit, UNITS)
        check_choice("norms", self.norms, NORMS)
        check_positive_int("interval", self.interval)
        for name in ("s1", "s2", "s_min", "s_max", "temperature"):
            check_range(name, getattr(self, name))
        if self.mapping in _DOMAIN and self.metric not in _DOMAIN[self.mapping]:
            raise ConfigError(f"the {self.mapping} map is defined for metric {' or '.join(_DOMAIN[self.mapping])} "
                              f"only (got {self.metric!r}, which can be <= {0 if self.mapping == 'sqrt' else 1}); "
                              "use mapping='linear', 'rank' or 'sigmoid'")
        get_mapping(self.mapping, s1=self.s1, s2=self.s2, s_min=self.s_min, s_max=self.s_max,
                    temperature=self.temperature)  # checks the map's own parameters
        Patterns(self.exclude)
        try:
            pat = re.compile(self.block_pattern)
        except re.error as e:
            raise ConfigError(f"invalid block_pattern {self.block_pattern!r}: {e}") from None
        if pat.groups < 1:
            raise ConfigError(f"block_pattern {self.block_pattern!r} needs a group: the block's module path")
        for bad in MANAGED_ANALYSIS_OPTIONS:
            if bad in self.analysis_options:
                raise ConfigError(f"analysis option {bad!r} is managed by TempBalance; remove it")
        self.analysis_config()  # unknown preset or analysis option: an error now, not at the first update

    def analysis_config(self, **changes: Any):
        """The spectral engine's :class:`~htsr.spectra.config.AnalysisConfig` for this TempBalance (one worker,
        ``analysis_options`` applied, then ``changes``)."""
        from htsr.spectra.config import make_config

        opts = {"workers": 1, **self.analysis_options, **changes}
        return make_config(self.preset, **opts)


#: Model Balancing's GLUE recipe (EMNLP'24, ``run_glue_block_tb_sigmoid_*.sh``): block-averaged alpha with xmin at
#: index N / 1.5, the sigmoid map (T = 10, s_min = s_max = 1), every Linear (GPT-2's Conv1D too) with >= 50
#: eigenvalues, the classifier left at the base rate, recomputed every 100 optimizer steps (capped at about ten
#: recomputations per epoch by :func:`htsr.tempbalance.hf.tempbalance_optimizers`).
EMNLP24 = TempBalanceConfig(unit="block", mapping="sigmoid", s_min=1.0, s_max=1.0, temperature=10.0, metric="alpha",
                            exclude_first=False, exclude_last=True, interval=100,
                            analysis_options={"xmin_pos": 1.5, "kinds": ("linear", "hf_conv1d")})


def resolve(config: TempBalanceConfig | dict[str, Any] | None, settings: dict[str, Any],
            base: TempBalanceConfig | None = None) -> TempBalanceConfig:
    """The config from ``config`` (a :class:`TempBalanceConfig`, a dict, or None for ``base`` / the defaults)
    with keyword ``settings`` applied; unknown keys are errors listing the valid ones."""
    base = base if base is not None else TempBalanceConfig()
    if config is None:
        config = base
    elif isinstance(config, dict):
        config = base.replace(**config)
    elif not isinstance(config, TempBalanceConfig):
        raise ConfigError(f"config must be a TempBalanceConfig or a dict, got {type(config).__name__}")
    return config.replace(**settings) if settings else config


__all__ = ["EMNLP24", "METRICS", "NORMS", "TempBalanceConfig", "UNITS", "resolve"]
