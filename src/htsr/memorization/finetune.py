"""Fine-tuning mitigations: resume the trained model *and its AdamW state* and train ``epochs`` (5) more epochs
with lr 1e-3, batch 128 (reference ``ft_toy_model.py``), on one of three data sets:

* ``clean``: the clean versions of the artifact sequences (noised or backdoored training sequences);
* ``extra``: all training data except the artifact sequences (the retain set);
* ``both``: the union.
"""

from __future__ import annotations

import torch
from torch import nn

from htsr.memorization.data import TinyMemData
from htsr.memorization.errors import MemorizationError
from htsr.memorization.training import BATCH_SIZE, LR, make_optimizer, train_testbed
from htsr.training import TrainResult

FINETUNE_VARIANTS = ("clean", "extra", "both")


def finetune_data(data: TinyMemData, variant: str) -> torch.Tensor:
    """The fine-tuning token ids of a variant (see the module docstring)."""
    if variant == "clean":
        return data.artifact_clean
    if variant == "extra":
        return data.retain
    if variant == "both":
        return torch.cat([data.artifact_clean, data.retain])
    raise MemorizationError(f"unknown fine-tuning variant {variant!r}; expected one of {', '.join(FINETUNE_VARIANTS)}")


def finetune(model: nn.Module, data: TinyMemData, variant: str, *, optimizer: torch.optim.Optimizer | None = None,
             epochs: int = 5, lr: float = LR, batch_size: int = BATCH_SIZE, seed: int = 0,
             progress: bool | None = None) -> TrainResult:
    """Fine-tune ``model`` in place; ``optimizer``: the training run's AdamW (its state is resumed; a fresh AdamW
    with ``lr`` when None). The learning rate is set to ``lr`` either way."""
    ids = finetune_data(data, variant)
    opt = optimizer or make_optimizer(model, lr=lr)
    for g in opt.param_groups:
        g["lr"] = lr
    res, _ = train_testbed(model, ids, epochs, batch_size=batch_size, seed=seed, optimizer=opt, progress=progress)
    return res
