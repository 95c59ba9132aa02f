"""Labelled KJV verses for low-data text classification: genre (8 classes) or testament (2), balanced.

:func:`kjv_classification_split` draws a fixed test set and a training pool with the same number of verses per
class (``split_seed``), then a ``fraction`` of the pool per class with ``seed``. :class:`TokenizedBatches`
turns texts + labels into dict batches (``input_ids``, ``attention_mask``, ``labels``) for the shared training
loop or a Hugging Face Trainer.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from htsr.errors import ConfigError

LABELS = ("genre", "testament")


def kjv_classification_split(fraction: float = 1.0, seed: int = 0, *, label: str = "genre", n_pool: int = 800,
                             n_test: int = 400, split_seed: int = 0
                             ) -> tuple[list[str], np.ndarray, list[str], np.ndarray, tuple[str, ...]]:
    """``(train_texts, train_labels, test_texts, test_labels, classes)``; ``n_pool`` and ``n_test`` are split
    evenly over the classes; the training set is ``fraction`` of the pool (at least one verse per class)."""
    from htsr.data.corpora import kjv_verses

    if label not in LABELS:
        raise ConfigError(f"unknown label {label!r}; expected one of {', '.join(LABELS)}")
    if not 0 < fraction <= 1:
        raise ConfigError(f"fraction must be in (0, 1], got {fraction}")
    df = kjv_verses()
    classes = tuple(sorted(df[label].unique()))
    per_pool, per_test = n_pool // len(classes), n_test // len(classes)
    if per_pool < 1 or per_test < 1:
        raise ConfigError(f"n_pool and n_test must be >= {len(classes)} (one per class), got {n_pool}, {n_test}")
    rng = np.random.default_rng(split_seed)
    sub_rng = np.random.default_rng([seed, 3])
    tr_t, tr_y, te_t, te_y = [], [], [], []
    k = max(1, int(round(fraction * per_pool)))
    for ci, c in enumerate(classes):
        idx = np.flatnonzero((df[label] == c).to_numpy())
        pick = rng.choice(idx, size=per_pool + per_test, replace=False)
        pool, test = pick[:per_pool], pick[per_pool:]
        train = np.sort(sub_rng.choice(pool, size=k, replace=False))
        tr_t += df["text"].iloc[train].tolist()
        tr_y += [ci] * k
        te_t += df["text"].iloc[np.sort(test)].tolist()
        te_y += [ci] * per_test
    return tr_t, np.array(tr_y, dtype=np.int64), te_t, np.array(te_y, dtype=np.int64), classes


class TokenizedBatches:
    """Re-iterable dict batches of tokenised texts with ``labels``; shuffled per epoch from ``seed``
    (``shuffle=False``: fixed order). Padding per batch to its longest text, truncation at ``max_length``."""

    def __init__(self, texts: Sequence[str], labels: Sequence[int] | np.ndarray, tokenizer: Any, *,
                 batch_size: int = 16, max_length: int = 64, shuffle: bool = True, seed: int = 0) -> None:
        if len(texts) != len(labels):
            raise ConfigError(f"{len(texts)} texts but {len(labels)} labels")
        if not len(texts):
            raise ConfigError("no texts")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        enc = tokenizer(list(texts), truncation=True, max_length=max_length)
        self.ids = [torch.tensor(x, dtype=torch.long) for x in enc["input_ids"]]
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        self.pad_id = int(tokenizer.pad_token_id or 0)
        self.batch_size, self.shuffle = batch_size, shuffle
        self.gen = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return (len(self.ids) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        order = torch.randperm(len(self.ids), generator=self.gen) if self.shuffle else torch.arange(len(self.ids))
        for s in range(0, len(order), self.batch_size):
            yield self.collate([int(i) for i in order[s:s + self.batch_size]])

    def collate(self, idx: Sequence[int]) -> dict[str, torch.Tensor]:
        seqs = [self.ids[i] for i in idx]
        n = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), n), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), n), dtype=torch.long)
        for j, s in enumerate(seqs):
            ids[j, :len(s)] = s
            mask[j, :len(s)] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": self.labels[list(idx)]}
