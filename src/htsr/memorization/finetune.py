"""Fine-tuning mitigations: resume the trained model *and its AdamW state* and train ``epochs`` (5) more epochs
with lr 1e-3, batch 128 (reference ``ft_toy_model.py``), on one of three data sets:

* ``clean``: the clean versions of the artifact sequences (noised or backdoored training sequences);
* ``extra``: all training data except the artifact sequences (the retain set);
* ``both``: the union.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from htsr.memorization.config import FINETUNING, FinetuneConfig
from htsr.memorization.data import TinyMemData
from htsr.memorization.errors import MemorizationError
from htsr.memorization.training import BATCH_SIZE, make_optimizer, train_testbed
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
             config: FinetuneConfig | None = None, seed: int = 0, progress: bool | None = None,
             **overrides: Any) -> TrainResult:
    """Fine-tune ``model`` in place on the ``variant`` data set ("clean", "extra", "both", or the method name
    "finetune_clean", ...); settings: ``config`` (:class:`~htsr.memorization.config.FinetuneConfig`: 5 epochs,
    lr 1e-3) with ``overrides`` (``epochs=``, ``lr=``, ``batch_size=``; batch size None: 128, the reference's).
    ``optimizer``: the training run's AdamW (its state is resumed; a fresh AdamW when None). Its learning rate is
    set to the config's either way."""
    method = variant if variant.startswith("finetune_") else f"finetune_{variant}"
    if method not in FINETUNING:
        raise MemorizationError(f"unknown fine-tuning variant {variant!r}; expected one of "
                                f"{', '.join(FINETUNE_VARIANTS)}")
    cfg = (config or FINETUNING.get(method)()).replace(**overrides)
    ids = finetune_data(data, method.removeprefix("finetune_"))
    opt = optimizer or make_optimizer(model, lr=cfg.lr)
    for g in opt.param_groups:
        g["lr"] = cfg.lr
    res, _ = train_testbed(model, ids, cfg.epochs, batch_size=cfg.batch_size or BATCH_SIZE, seed=seed, optimizer=opt,
                           progress=progress)
    return res
