"""A 1-D Fourier Neural Operator (Li et al., ICLR 2021), the Burgers architecture.

``fc0`` lifts (u0(x), x) to ``width`` channels; ``n_layers`` Fourier layers each add a spectral convolution
(the lowest ``modes`` Fourier coefficients multiplied by a learned complex matrix per mode) to a pointwise
``Conv1d(width, width, 1)`` (``ws.K``), GELU between layers; ``fc1`` (width -> 128) and ``fc2`` (128 -> 1)
project back. As in Model Balancing's SciML code, the spectral weights are not analysed (they are stored as
two real 3-D tensors ``weight_re``/``weight_im`` that the spectral engine does not treat as layers); the
Linear and 1x1 Conv1d layers are.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from htsr.errors import ConfigError
from htsr.models import seeded_init


class SpectralConv1d(nn.Module):
    """``irfft(W_k * rfft(x)_k for k < modes)``: a global convolution parameterised in Fourier space."""

    def __init__(self, in_channels: int, out_channels: int, modes: int) -> None:
        super().__init__()
        self.modes = modes
        scale = 1.0 / (in_channels * out_channels)
        self.weight_re = nn.Parameter(scale * torch.rand(in_channels, out_channels, modes))
        self.weight_im = nn.Parameter(scale * torch.rand(in_channels, out_channels, modes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[-1]
        x_ft = torch.fft.rfft(x, dim=-1)
        m = min(self.modes, x_ft.shape[-1])
        w = torch.complex(self.weight_re[..., :m], self.weight_im[..., :m])
        out_ft = torch.zeros(x.shape[0], w.shape[1], x_ft.shape[-1], dtype=x_ft.dtype, device=x.device)
        out_ft[..., :m] = torch.einsum("bix,iox->box", x_ft[..., :m], w)
        return torch.fft.irfft(out_ft, n=n, dim=-1)


class FNO1d(nn.Module):
    """Maps u0 sampled on a uniform periodic grid, shape (batch, n), to u(T) on the same grid, shape (batch, n)."""

    def __init__(self, modes: int = 16, width: int = 32, n_layers: int = 4, hidden: int = 128) -> None:
        super().__init__()
        if modes < 1 or width < 1 or n_layers < 1 or hidden < 1:
            raise ConfigError(f"modes, width, n_layers, hidden must be >= 1, got {modes}, {width}, {n_layers}, "
                              f"{hidden}")
        self.fc0 = nn.Linear(2, width)
        self.convs = nn.ModuleList(SpectralConv1d(width, width, modes) for _ in range(n_layers))
        self.ws = nn.ModuleList(nn.Conv1d(width, width, 1) for _ in range(n_layers))
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, 1)

    def forward(self, u0: torch.Tensor) -> torch.Tensor:
        if u0.ndim != 2:
            raise ConfigError(f"FNO1d expects inputs of shape (batch, n), got {tuple(u0.shape)}")
        n = u0.shape[-1]
        grid = torch.linspace(0.0, 1.0 - 1.0 / n, n, device=u0.device, dtype=u0.dtype).expand_as(u0)
        x = self.fc0(torch.stack([u0, grid], dim=-1)).permute(0, 2, 1)
        for i, (conv, w) in enumerate(zip(self.convs, self.ws, strict=True)):
            x = conv(x) + w(x)
            if i < len(self.convs) - 1:
                x = F.gelu(x)
        x = F.gelu(self.fc1(x.permute(0, 2, 1)))
        return self.fc2(x).squeeze(-1)


def make_fno(*, modes: int = 16, width: int = 32, n_layers: int = 4, hidden: int = 128, seed: int = 0) -> FNO1d:
    """:class:`FNO1d` with weights initialised from ``seed`` (global RNG untouched)."""
    with seeded_init(seed):
        return FNO1d(modes=modes, width=width, n_layers=n_layers, hidden=hidden)
