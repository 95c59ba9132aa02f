"""Shared test data and models for the loss-landscape tests: sklearn's digits and a tiny BatchNorm CNN."""

from __future__ import annotations

import functools

import torch
from torch import nn


@functools.lru_cache(maxsize=2)
def digits(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as (N, 1, 8, 8) images in [0, 1] and their labels (cached per dtype)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.tensor(d.images[:, None] / 16.0, dtype=dtype), torch.tensor(d.target)


def small_cnn(seed: int, width: int = 4) -> nn.Module:
    """Conv -> BatchNorm -> ReLU -> pool -> linear on 8x8 digits, initialised from `seed`."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, width, 3), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(width * 9, 10))


def fit_sgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 60, lr: float = 0.1) -> nn.Module:
    """A few SGD-momentum steps on consecutive batches of 50 (wrapping around), gradients cleared at the end."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    for i in range(steps):
        sl = slice((i * 50) % len(x), (i * 50) % len(x) + 50)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[sl]), y[sl]).backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    return model
