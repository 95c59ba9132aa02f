"""Small CNNs for small images (scikit-learn's 8x8 digits): a pre-activation-free ResNet (He et al. 2016,
BasicBlock, CIFAR layout scaled down) and a VGG-style stack.

Module names follow the TempBalance reference's conventions (``convK`` / ``bnK`` siblings, shortcut as
``shortcut.0`` conv + ``shortcut.1`` BN) so both norm-pairing rules apply.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from htsr.errors import ConfigError
from htsr.models import seeded_init


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN, identity or 1x1-conv shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """ResNet for small images: 3x3 stem, one stage per width (stride 1, then 2), global average pool, linear.

    ``widths=(16, 32, 64), blocks=(1, 1, 1)`` on 8x8 inputs: 8x8 -> 4x4 -> 2x2, 77,754 parameters.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, widths: Sequence[int] = (16, 32, 64),
                 blocks: Sequence[int] = (1, 1, 1)) -> None:
        super().__init__()
        if len(widths) != len(blocks) or not widths:
            raise ConfigError(f"widths and blocks must be non-empty and of equal length, got {widths}, {blocks}")
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        layers, cin = [], widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks, strict=True)):
            stage = [BasicBlock(cin, w, stride=1 if i == 0 else 2)] + [BasicBlock(w, w) for _ in range(n - 1)]
            layers.append(nn.Sequential(*stage))
            cin = w
        self.layers = nn.ModuleList(layers)
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        for stage in self.layers:
            out = stage(out)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


class SmallVGG(nn.Module):
    """VGG-style: ``cfg`` lists conv widths and ``"M"`` (2x2 max-pool); conv -> BN -> ReLU; then a linear head."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10,
                 cfg: Sequence[int | str] = (32, 32, "M", 64, 64, "M", 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            elif isinstance(v, int) and v > 0:
                layers += [nn.Conv2d(cin, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                cin = v
            else:
                raise ConfigError(f"VGG cfg entries are positive ints or 'M', got {v!r}")
        if cin == in_channels:
            raise ConfigError("VGG cfg needs at least one conv width")
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
        return self.classifier(out)


ARCHS = ("resnet", "vgg")


def make_vision_model(arch: str = "resnet", *, num_classes: int = 10, in_channels: int = 1, width: int = 16,
                      seed: int = 0) -> nn.Module:
    """``resnet``: :class:`SmallResNet` with widths (w, 2w, 4w); ``vgg``: :class:`SmallVGG` with
    (2w, 2w, M, 4w, 4w, M, 8w). Weights initialised from ``seed`` (global RNG untouched)."""
    if width < 1:
        raise ConfigError(f"width must be >= 1, got {width}")
    with seeded_init(seed):
        if arch == "resnet":
            return SmallResNet(in_channels, num_classes, widths=(width, 2 * width, 4 * width))
        if arch == "vgg":
            return SmallVGG(in_channels, num_classes, cfg=(2 * width, 2 * width, "M", 4 * width, 4 * width, "M",
                                                            8 * width))
    raise ConfigError(f"unknown arch {arch!r}; expected one of {', '.join(ARCHS)}")
