"""Training the test-bed models on the product's one loop (:func:`htsr.training.train`).

Batches are ``(ids, example_index)`` tuples so that example-tied regularizers (loss truncation bookkeeping,
example-tied dropout) can see which examples they hold. The loss is the Hugging Face causal-LM loss (mean
next-token cross-entropy over every position, padding included, as the reference trains).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader

from htsr.memorization.errors import MemorizationError
from htsr.training import Callback, TrainResult, seeded_loader, train

LR = 1e-3
WEIGHT_DECAY = 0.1
BETAS = (0.9, 0.98)
BATCH_SIZE = 128


def make_optimizer(model: nn.Module, lr: float = LR, weight_decay: float = WEIGHT_DECAY,
                   betas: tuple[float, float] = BETAS) -> torch.optim.AdamW:
    """The reference's AdamW (lr 1e-3, weight decay 0.1, betas (0.9, 0.98))."""
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=betas)


def make_loader(ids: torch.Tensor, batch_size: int = BATCH_SIZE, seed: int = 0, shuffle: bool = True) -> DataLoader:
    """A DataLoader of ``(ids, example_index)`` batches, shuffled by a seeded generator."""
    if ids.ndim != 2 or ids.shape[0] == 0:
        raise MemorizationError(f"training ids must be a non-empty (n, seq_len) tensor, got {tuple(ids.shape)}")
    return seeded_loader(ids.long(), torch.arange(ids.shape[0]), batch_size, seed, shuffle)


def lm_losses(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """(batch,) mean next-token cross-entropy of each sequence (every position, as the reference)."""
    logits = model(input_ids=ids).logits[:, :-1]
    ce = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1),
                                     reduction="none")
    return ce.view(ids.shape[0], -1).mean(dim=1)


class Regularizer(Protocol):
    """What :func:`train_testbed` accepts as ``regularizer``: a loss over a batch (and optional callbacks)."""

    def loss(self, model: nn.Module, ids: torch.Tensor, idx: torch.Tensor) -> torch.Tensor: ...

    def callbacks(self) -> Sequence[Callback]: ...


def plain_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """Mean causal-LM loss of an ``(ids, idx)`` batch."""
    ids = batch[0] if isinstance(batch, tuple | list) else batch
    return lm_losses(model, ids).mean()


def train_testbed(model: nn.Module, ids: torch.Tensor, epochs: int | None, *, lr: float = LR,
                  batch_size: int = BATCH_SIZE, seed: int = 0, optimizer: torch.optim.Optimizer | None = None,
                  regularizer: Regularizer | None = None, max_steps: int | None = None,
                  callbacks: Sequence[Callback] = (), eval_data: Any = None, eval_fn: Any = None, eval_every: int = 1,
                  progress: bool | None = None, device: str | torch.device | None = None,
                  ) -> tuple[TrainResult, torch.optim.Optimizer]:
    """Train ``model`` on token ids with AdamW through :func:`htsr.training.train`; returns (result, optimizer).

    ``optimizer`` resumes an existing one (fine-tuning keeps the AdamW state, as the reference).
    """
    if device is not None:
        model.to(device)
    opt = optimizer or make_optimizer(model, lr=lr)
    loader = make_loader(ids, batch_size, seed)
    if regularizer is not None:
        def loss_fn(m: nn.Module, batch: Any) -> torch.Tensor:
            return regularizer.loss(m, batch[0], batch[1])
        cbs = [*regularizer.callbacks(), *callbacks]
    else:
        loss_fn, cbs = plain_loss, list(callbacks)
    res = train(model, loader, opt, loss_fn=loss_fn, epochs=epochs, max_steps=max_steps, callbacks=cbs,
                eval_data=eval_data, eval_fn=eval_fn, eval_every=eval_every, progress=progress,
                device=device)
    model.eval()
    return res, opt
