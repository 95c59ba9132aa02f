"""Pre-activation ResNets (He et al. 2016, "Identity mappings"), the CIFAR layout of the three-regime paper's
PreResNet-20 (TRP ``models/preresnet.py``): a 3x3 stem, three stages of ``n = (depth - 2) / 6`` basic blocks with
widths (w, 2w, 4w) (strides 1, 2, 2), a final BN-ReLU, global average pooling and a linear head.

A block is ``BN-ReLU-conv3x3-BN-ReLU-conv3x3`` plus the shortcut (identity, or a 1x1 strided conv applied to the
pre-activated input when the shape changes). ``depth=20, width=16`` is PreResNet-20 (~0.27 M parameters);
``depth=8`` has one block per stage.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from htsr.errors import ConfigError


class PreActBlock(nn.Module):
    """Pre-activation basic block."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.shortcut = (nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
                         if stride != 1 or cin != cout else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        short = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + short


class PreResNet(nn.Module):
    """CIFAR-style pre-activation ResNet; ``depth`` = 6n + 2."""

    def __init__(self, depth: int = 20, width: int = 16, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
            raise ConfigError(f"depth must be 6n + 2 with n >= 1 (8, 14, 20, ...), got {depth!r}")
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ConfigError(f"width must be an integer >= 1, got {width!r}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        stages, cin = [], width
        for i, w in enumerate((width, 2 * width, 4 * width)):
            blocks = [PreActBlock(cin, w, 1 if i == 0 else 2)] + [PreActBlock(w, w) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = w
        self.layers = nn.ModuleList(stages)
        self.bn = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        for stage in self.layers:
            out = stage(out)
        out = F.relu(self.bn(out))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def build_model(depth: int = 8, width: int = 8, seed: int = 0, num_classes: int = 10,
                in_channels: int = 1) -> PreResNet:
    """A :class:`PreResNet` initialised from ``seed`` (global RNG untouched)."""
    from htsr.models import seeded_init

    with seeded_init(seed):
        return PreResNet(depth, width, in_channels, num_classes)
