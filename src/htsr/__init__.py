"""htsr: heavy-tailed self-regularisation diagnostics for neural networks.

``htsr.analyze(source)`` measures each weight matrix's spectrum (power-law alpha and
friends) and returns an :class:`~htsr.spectra.analysis.Analysis`. Importing htsr has no
side effects (no logging configuration, warning filters or prints).
"""

from __future__ import annotations

from htsr._version import __version__

__all__ = ["__version__", "analyze", "Analysis", "AnalysisConfig", "make_config", "PRESETS", "fit_power_law"]


def __getattr__(name: str):
    # lazy: keep `import htsr` cheap (torch is imported only when analysis is used)
    if name in ("analyze", "Analysis"):
        from htsr.spectra import analysis

        return getattr(analysis, name)
    if name in ("AnalysisConfig", "make_config", "PRESETS"):
        from htsr.spectra import config

        return getattr(config, name)
    if name == "fit_power_law":
        from htsr.spectra.powerlaw import fit_power_law

        return fit_power_law
    raise AttributeError(f"module 'htsr' has no attribute {name!r}")
