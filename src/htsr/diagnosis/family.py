"""The model family of an own population: its data, its models, and reading a trained model of it back.

The family is :func:`htsr.models.vision.make_vision_model` (a small BatchNorm VGG or ResNet with a width knob) on
scikit-learn's digits (:func:`htsr.data.digits.digits_split`: a fixed stratified test set and a stratified
training fraction drawn with ``subset_seed``, shared by every seed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from htsr.diagnosis.config import PopulationConfig
from htsr.diagnosis.errors import DiagnosisError

__all__ = ["family_data", "family_model", "load_family_model"]


def family_data(config: PopulationConfig, fraction: float):
    """``(x_train, y_train, x_test, y_test)``: the training subset at ``fraction`` and the fixed test set."""
    from htsr.data.digits import digits_split

    return digits_split(fraction=float(fraction), seed=config.subset_seed, test_size=config.test_size,
                        split_seed=config.split_seed)


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
