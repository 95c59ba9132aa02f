"""The model family of an own population: its data, its models, and reading a trained model of it back.

The family is :func:`htsr.models.vision.make_vision_model` (a small BatchNorm VGG or ResNet with a width knob) on
``config.dataset``: scikit-learn's digits (:func:`htsr.data.digits.digits_split`: a fixed stratified test set and
a stratified training fraction drawn with ``subset_seed``, shared by every seed) or Fashion-MNIST
(:func:`fashion_data`: the official test set, a stratified pool and a stratified fraction of it, both drawn with
``subset_seed``). The models end in global average pooling, so one family serves every image size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from htsr.diagnosis.config import PopulationConfig
from htsr.diagnosis.errors import DiagnosisError

__all__ = ["family_data", "fashion_data", "noisy_labels", "family_model", "load_family_model"]


def family_data(config: PopulationConfig, fraction: float):
    """``(x_train, y_train, x_test, y_test)``: the training subset at ``fraction`` and the fixed test set, with
    ``config.label_noise`` of the training labels replaced (:func:`noisy_labels`)."""
    if config.dataset == "fashion-mnist":
        xtr, ytr, xte, yte = fashion_data(config, fraction)
    else:
        from htsr.data.digits import digits_split

        xtr, ytr, xte, yte = digits_split(fraction=float(fraction), seed=config.subset_seed,
                                          test_size=config.test_size, split_seed=config.split_seed)
    if config.label_noise > 0:
        ytr = noisy_labels(ytr, config.label_noise, config.subset_seed)
    return xtr, ytr, xte, yte


def noisy_labels(y, fraction: float, seed: int, num_classes: int = 10):
    """A copy of integer labels ``y`` with ``round(fraction * n)`` of them, chosen with ``seed``, replaced by
    another class drawn uniformly from the other ``num_classes - 1`` (so exactly that many labels are wrong)."""
    import numpy as np
    import torch

    rng = np.random.default_rng([int(seed), 2])
    out = y.clone()
    k = int(round(fraction * y.numel()))
    idx = torch.from_numpy(np.sort(rng.choice(y.numel(), size=k, replace=False)))
    shift = torch.from_numpy(rng.integers(1, num_classes, size=k))
    out[idx] = (out[idx] + shift) % num_classes
    return out


def fashion_data(config: PopulationConfig, fraction: float):
    """Fashion-MNIST for a population: a stratified pool of ``config.pool`` training images (all 60,000 when 0)
    drawn with ``subset_seed``, then a stratified ``fraction`` of the pool (drawn with ``[subset_seed, 1]``, so
    each fraction's images are fixed and shared by every seed); the first ``test_images`` test images (all when
    0); images standardised with the fixed training mean/std and average-pooled by ``downsample``."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from htsr.data.digits import stratified_subset
    from htsr.data.fashion_mnist import fashion_mnist, to_tensor

    xtr, ytr, xte, yte = fashion_mnist()
    if config.pool and config.pool < ytr.size:
        idx = stratified_subset(ytr, config.pool / ytr.size, np.random.default_rng(config.subset_seed))
        xtr, ytr = xtr[idx], ytr[idx]
    if fraction < 1:
        idx = stratified_subset(ytr, float(fraction), np.random.default_rng([config.subset_seed, 1]))  # sorted
        xtr, ytr = xtr[idx], ytr[idx]
    if config.test_images:
        xte, yte = xte[:config.test_images], yte[:config.test_images]
    out = []
    for x in (xtr, xte):
        t = to_tensor(x)
        out.append(F.avg_pool2d(t, config.downsample) if config.downsample > 1 else t)
    return out[0], torch.tensor(ytr, dtype=torch.int64), out[1], torch.tensor(yte, dtype=torch.int64)


def family_model(config: PopulationConfig, width: int, seed: int):
    """A freshly initialised model of the family (seeded)."""
    from htsr.models.vision import make_vision_model

    return make_vision_model(config.arch, width=int(width), seed=int(seed))


def _first_conv(shapes: dict[str, tuple[int, ...]]) -> tuple[str, tuple[int, ...]] | None:
    return next(((k, s) for k, s in shapes.items() if len(s) == 4), None)


def _width(shapes: dict[str, tuple[int, ...]], config: PopulationConfig, where: Any) -> int:
    """The family width whose model has these tensor shapes: the first convolution's output channels divided by
    those of the width-1 model (every architecture of the family scales its channels linearly with the width)."""
    ref = _first_conv({k: tuple(v.shape) for k, v in family_model(config, 1, 0).state_dict().items()})
    got = _first_conv(shapes)
    if ref is None or got is None or got[0] != ref[0]:
        raise DiagnosisError(f"{where}: no {ref[0] if ref else 'convolution'} weight; not a model of the "
                             f"population's {config.arch} family")
    channels, per_width = got[1][0], ref[1][0]
    if channels % per_width or channels < per_width:
        raise DiagnosisError(f"{where}: {got[0]} has {channels} output channels, not a multiple of {per_width}; not "
                             f"a model of the population's {config.arch} family")
    return channels // per_width


def _shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from the header, validated by :class:`htsr.spectra.reader.SafetensorsFile`."""
    from htsr.spectra.reader import SafetensorsFile

    sf = SafetensorsFile(path)
    return {k: sf.info(k).shape for k in sf.keys()}


def load_family_model(item: Any, config: PopulationConfig):
    """A model of the family in eval mode from a module, a checkpoint folder (:func:`htsr.training.save_checkpoint`,
    read with :func:`htsr.training.load_checkpoint`; ``DIR/model.safetensors`` names its folder) or a bare
    ``.safetensors`` state dict. The width is read from the weights' shapes."""
    import torch

    if isinstance(item, torch.nn.Module):
        return item.eval()
    p = Path(item)
    if p.is_file() and p.name == "model.safetensors" and (p.parent / "checkpoint.json").is_file():
        p = p.parent
    folder = p.is_dir()
    f = p / "model.safetensors" if folder else p
    if not f.is_file() or f.suffix != ".safetensors":
        raise DiagnosisError(f"{item}: expected a checkpoint folder (htsr save_checkpoint) or a .safetensors file of "
                             f"the population's {config.arch} family")
    model = family_model(config, _width(_shapes(f), config, f), 0)
    try:
        if folder:
            from htsr.training import load_checkpoint

            load_checkpoint(p, model)
        else:
            from htsr.spectra.reader import read_safetensors

            model.load_state_dict(read_safetensors(f), strict=True)
    except RuntimeError as e:  # load_state_dict: missing/unexpected keys or shapes
        raise DiagnosisError(f"{f}: not weights of the {config.arch} family ({str(e).splitlines()[0]})") from None
    return model.eval()
