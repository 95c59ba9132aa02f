"""Shared test data and models for the loss-landscape tests: sklearn's digits and a tiny BatchNorm CNN."""

from __future__ import annotations

import functools

import torch
from torch import nn


@functools.lru_cache(maxsize=2)
def digits(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as (N, 1, 8, 8) images in [0, 1] and their labels (cached per dtype)."""
    from htsr.data.digits import digits_arrays

    x, y = digits_arrays()
    return torch.tensor(x, dtype=dtype), torch.tensor(y)  # copies: the cached arrays stay untouched


def small_cnn(seed: int, width: int = 4) -> nn.Module:
    """Conv -> BatchNorm -> ReLU -> pool -> linear on 8x8 digits, initialised from `seed`."""
    from htsr.models import seeded_init

    with seeded_init(seed):
        return nn.Sequential(nn.Conv2d(1, width, 3), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Flatten(), nn.Linear(width * 9, 10))


def fit_sgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 60, lr: float = 0.1) -> nn.Module:
    """``steps`` SGD-momentum steps of the shared training loop on consecutive batches of 50 (wrapping around),
    gradients cleared at the end."""
    from htsr.training import train

    n = len(x)
    batches = [(x[(i * 50) % n:(i * 50) % n + 50], y[(i * 50) % n:(i * 50) % n + 50]) for i in range(steps)]
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    train(model, batches, opt, epochs=1, progress=False)
    opt.zero_grad(set_to_none=True)
    return model
