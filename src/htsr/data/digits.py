"""scikit-learn's handwritten digits (1,797 real 8x8 grey images, 10 classes) as tensors for image models.

:func:`digits_split` makes a fixed, stratified test set (``split_seed``) and draws a stratified fraction of the
remaining training pool with ``seed``, so runs at different fractions and seeds share one test set.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from htsr.errors import ConfigError


@functools.lru_cache(maxsize=1)
def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 scikit-learn digits as (N, 1, 8, 8) float32 images in [0, 1] and int64 labels (cached)."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return (x.reshape(-1, 1, 8, 8) / 16.0).astype(np.float32), y.astype(np.int64)


def stratified_subset(y: np.ndarray, fraction: float, rng: np.random.Generator, min_per_class: int = 1) -> np.ndarray:
    """Indices of a stratified random subset: about ``fraction`` of each class, at least ``min_per_class``
    (sorted, so the subset's order does not depend on the draw order)."""
    if not 0 < fraction <= 1:
        raise ConfigError(f"fraction must be in (0, 1], got {fraction}")
    out = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        k = min(idx.size, max(min_per_class, int(round(fraction * idx.size))))
        out.append(rng.choice(idx, size=k, replace=False))
    return np.sort(np.concatenate(out))


def digits_split(fraction: float = 1.0, seed: int = 0, *, test_size: float = 0.3, split_seed: int = 0,
                 normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train, y_train, x_test, y_test)``: images (N, 1, 8, 8) float32 in [0, 1] (standardised with the
    training subset's mean/std when ``normalize``), labels int64.

    The test set (``test_size`` of every class) depends only on ``split_seed``; the training subset is a
    stratified ``fraction`` of the rest drawn with ``seed``.
    """
    if not 0 < test_size < 1:
        raise ConfigError(f"test_size must be in (0, 1), got {test_size}")
    x, y = digits_arrays()
    test = stratified_subset(y, test_size, np.random.default_rng(split_seed))
    pool = np.setdiff1d(np.arange(y.size), test)
    sub = pool[stratified_subset(y[pool], fraction, np.random.default_rng([seed, 1]))]
    xtr, ytr, xte, yte = x[sub], y[sub], x[test], y[test]
    if normalize:
        mu, sd = float(xtr.mean()), float(xtr.std()) or 1.0
        xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    return torch.from_numpy(xtr), torch.from_numpy(ytr), torch.from_numpy(xte), torch.from_numpy(yte)
