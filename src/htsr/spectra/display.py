"""Display rules shared by the PNG plots (:mod:`htsr.spectra.plots`) and the HTML report (:mod:`htsr.report`),
free of matplotlib so that the report can use them without importing it."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["ALPHA_BAND", "log_bins"]

#: Conventional HT-SR range of "well-trained" exponents, shaded in the summary charts.
ALPHA_BAND = (2.0, 6.0)


def log_bins(lo: float, hi: float, n: int, anchor: float | None = None) -> np.ndarray:
    """``n`` log-spaced bins over [lo, hi]; shifted so that ``anchor`` (xmin) is a bin edge."""
    if not hi > lo:  # a single value: give it a visible bin around it
        lo, hi = lo / 1.5, hi * 1.5
    a, b = math.log10(lo), math.log10(hi)
    if anchor is None or not lo < anchor < hi:
        return np.logspace(a, b, n + 1)
    w = (b - a) / n
    c = math.log10(anchor)
    k0, k1 = math.floor((a - c) / w), math.ceil((b - c) / w)
    return 10.0 ** (c + w * np.arange(k0, k1 + 1))
