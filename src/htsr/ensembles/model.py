"""The torch side of the ensembles: the member architectures, the seeded epoch loader (with SharpBalance's SAM
mask and optional crop/flip augmentation), and member checkpoints that say which architecture they hold.

A member checkpoint is an :func:`htsr.training.save_checkpoint` directory whose ``extra`` holds ``model`` (the
architecture spec: arch, width, num_classes), ``epoch``, ``lineage``, ``training_id`` and the per-epoch
``history``; :func:`load_member` rebuilds the model from that spec, so an ensemble can be evaluated from its
directories alone.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from htsr.errors import ConfigError, SourceError


class EnsembleError(SourceError):
    """Bad input to an ensemble: an unreadable or corrupted checkpoint, members that do not fit together."""


def build_model(arch: str = "resnet", width: int = 8, seed: int = 0, num_classes: int = 10,
                in_channels: int = 1) -> nn.Module:
    """``resnet``: :class:`htsr.models.vision.SmallResNet` with widths (w, 2w, 4w), one BasicBlock per stage;
    ``resnet18``: the CIFAR ResNet-18 layout (3x3 stem, widths (w, 2w, 4w, 8w), two BasicBlocks per stage;
    w = 64 is the paper's). Weights initialised from ``seed`` (global RNG untouched)."""
    from htsr.models import seeded_init
    from htsr.models.vision import SmallResNet

    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ConfigError(f"width must be an integer >= 1, got {width!r}")
    if arch == "resnet":
        widths, blocks = (width, 2 * width, 4 * width), (1, 1, 1)
    elif arch == "resnet18":
        widths, blocks = (width, 2 * width, 4 * width, 8 * width), (2, 2, 2, 2)
    else:
        raise ConfigError(f"unknown arch {arch!r}; expected resnet or resnet18")
    with seeded_init(seed):
        return SmallResNet(in_channels, num_classes, widths=widths, blocks=blocks)


def model_spec(arch: str, width: int, num_classes: int = 10) -> dict[str, Any]:
    return {"arch": arch, "width": int(width), "num_classes": int(num_classes)}


def member_seed(seed: int, member: int) -> int:
    """The seed of member ``member`` of an ensemble with seed ``seed`` (initialisation and data order)."""
    return int(np.random.SeedSequence([int(seed), int(member)]).generate_state(1)[0])


# ----------------------------------------------------------------------------------- data
class EpochLoader:
    """Minibatches of ``(x, y)`` -- or ``(x, y, mask)`` when ``mask`` is given -- in an order fixed by
    ``(seed, epoch)``: epoch ``e`` is the same permutation whether training ran straight through or resumed.
    Set :attr:`epoch` before iterating (the training callback does). ``augment``: random crop with 4 pixels of
    zero padding and a random horizontal flip, drawn from the same seeded generator. A last batch of a single
    sample is left out (BatchNorm cannot train on it)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int, *,
                 mask: torch.Tensor | None = None, augment: bool = False, shuffle: bool = True) -> None:
        if x.shape[0] != y.shape[0] or (mask is not None and mask.shape[0] != y.shape[0]):
            raise ConfigError("x, y (and mask) must hold the same number of samples")
        if x.shape[0] == 0:
            raise ConfigError("the training data is empty")
        self.x, self.y, self.mask = x, y, mask
        self.batch_size, self.seed, self.augment, self.shuffle = int(batch_size), int(seed), augment, shuffle
        self.epoch = 0

    def __len__(self) -> int:
        return (self.x.shape[0] + self.batch_size - 1) // self.batch_size

    def _gen(self) -> torch.Generator:
        s = np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0]
        return torch.Generator().manual_seed(int(s))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        n = self.x.shape[0]
        g = self._gen()
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        for i in range(0, n, self.batch_size):
            idx = order[i:i + self.batch_size]
            if idx.numel() == 1 and n > 1:  # a one-sample batch breaks BatchNorm in training mode: skip it
                break
            xb = self.x[idx]
            if self.augment:
                xb = _crop_flip(xb, g)
            if self.mask is None:
                yield xb, self.y[idx]
            else:
                yield xb, self.y[idx], self.mask[idx]


def _crop_flip(x: torch.Tensor, g: torch.Generator, pad: int = 4) -> torch.Tensor:
    n, c, h, w = x.shape
    padded = nn.functional.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    flip = torch.rand(n, generator=g) < 0.5
    ri = oy[:, None] + torch.arange(h)[None]  # (n, h) rows of the crop
    ci = ox[:, None] + torch.arange(w)[None]  # (n, w) columns, reversed for a flip
    ci = torch.where(flip[:, None], ci.flip(1), ci)
    out = padded.gather(2, ri[:, None, :, None].expand(n, c, h, w + 2 * pad))
    return out.gather(3, ci[:, None, None, :].expand(n, c, h, w))


# ----------------------------------------------------------------------------------- checkpoints
def epoch_dirs(lineage_dir: Path) -> dict[int, Path]:
    """``{epoch: directory}`` of the complete checkpoints (``epoch_NNNN/checkpoint.json`` present)."""
    out = {}
    if lineage_dir.is_dir():
        for d in lineage_dir.iterdir():
            done = (d / "checkpoint.json").is_file()
            if d.is_dir() and d.name.startswith("epoch_") and d.name[6:].isdigit() and done:
                out[int(d.name[6:])] = d
    return out


def prune_checkpoints(lineage_dir: Path, latest: int, keep: Sequence[int] = ()) -> None:
    """Delete the checkpoints (and incomplete ``epoch_*`` directories) older than ``latest``, except the epochs
    in ``keep``; later ones (another run of the same lineage that went further) are left alone."""
    if not lineage_dir.is_dir():
        return
    for d in lineage_dir.iterdir():
        if d.is_dir() and d.name.startswith("epoch_") and d.name[6:].isdigit():
            e = int(d.name[6:])
            if e < latest and e not in keep:
                shutil.rmtree(d, ignore_errors=True)


def read_meta(path: Path) -> dict[str, Any]:
    """The ``extra`` metadata of a member checkpoint directory, or :class:`EnsembleError`."""
    p = Path(path) / "checkpoint.json"
    if not p.is_file():
        raise EnsembleError(f"{path} is not a member checkpoint (no checkpoint.json)")
    try:
        meta = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise EnsembleError(f"checkpoint {path} is corrupted: checkpoint.json is not valid JSON ({e})") from None
    extra = meta.get("extra") if isinstance(meta, dict) else None
    if not isinstance(extra, dict) or not isinstance(extra.get("model"), dict):
        raise EnsembleError(f"{path} is not an htsr ensemble member checkpoint (no model spec in checkpoint.json)")
    return extra


def load_into(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
    """:func:`htsr.training.load_checkpoint` with any failure turned into a one-line :class:`EnsembleError`."""
    from htsr.training import load_checkpoint

    try:
        return load_checkpoint(path, model, optimizer)
    except EnsembleError:
        raise
    except Exception as e:  # safetensors / JSON / shape errors: the file is damaged or foreign
        msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise EnsembleError(f"checkpoint {path} is corrupted or does not fit the model ({msg}); delete that "
                            "directory to retrain from the previous checkpoint") from None


def load_member(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a member from its checkpoint directory: ``(model in eval mode, extra metadata)``."""
    path = Path(path)
    if not path.exists():
        raise EnsembleError(f"member checkpoint {path} does not exist")
    extra = read_meta(path)
    spec = extra["model"]
    try:
        model = build_model(spec["arch"], int(spec["width"]), 0, int(spec.get("num_classes", 10)))
    except (KeyError, TypeError, ValueError, ConfigError) as e:
        raise EnsembleError(f"{path}: bad model spec {spec!r} ({e})") from None
    load_into(path, model)
    return model.to(device).eval(), extra


def check_members(models: Sequence[nn.Module], names: Sequence[str]) -> None:
    """An ensemble needs >= 2 members of one architecture (:func:`htsr.landscape.check_same_architecture`)."""
    from htsr.landscape.objective import check_same_architecture

    if len(models) < 2:
        raise EnsembleError(f"an ensemble needs at least 2 members, got {len(models)}")
    for m, name in zip(models[1:], names[1:], strict=True):
        try:
            check_same_architecture(models[0], m, "members")
        except Exception as e:
            raise EnsembleError(f"members {names[0]} and {name} have different architectures: {e}") from None
