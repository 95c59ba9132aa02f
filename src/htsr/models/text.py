"""Sentence classifier on a Hugging Face encoder: mean-pooled token states -> dropout -> linear head.

The default encoder is the packaged real all-MiniLM-L6-v2 (``htsr.examples.example_path("minilm")``), the
sentence-transformers model that is itself trained with mean pooling. ``forward(**batch)`` accepts tokenizer
output plus optional ``labels`` and returns an object with ``.loss`` and ``.logits`` (so the shared training
loop's default loss and Hugging Face's Trainer both work).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from htsr.errors import ConfigError
from htsr.models import seeded_init


@dataclass
class ClassifierOutput:
    loss: torch.Tensor | None
    logits: torch.Tensor

    def __getitem__(self, key: str) -> Any:  # dict-style access, as Hugging Face ModelOutput
        return getattr(self, key)

    def keys(self) -> list[str]:
        return ["loss", "logits"] if self.loss is not None else ["logits"]


class SentenceClassifier(nn.Module):
    """``encoder`` (any HF model returning ``last_hidden_state``) + mean pooling over the attention mask + head."""

    def __init__(self, encoder: nn.Module, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        if num_classes < 2:
            raise ConfigError(f"num_classes must be >= 2, got {num_classes}")
        hidden = getattr(getattr(encoder, "config", None), "hidden_size", None)
        if hidden is None:
            raise ConfigError("the encoder has no config.hidden_size; pass a Hugging Face encoder model")
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                **_: Any) -> ClassifierOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        kw = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kw).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp_min(1.0)
        logits = self.classifier(self.dropout(pooled))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return ClassifierOutput(loss, logits)


def load_minilm_classifier(num_classes: int, *, path: str | Path | None = None, dropout: float = 0.1,
                           seed: int = 0) -> tuple[SentenceClassifier, Any]:
    """(classifier, tokenizer) on the pretrained all-MiniLM-L6-v2 (or the HF model directory ``path``); the
    head is initialised from ``seed``. Offline: loads only local files."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from htsr.examples import example_path

    src = str(path) if path is not None else str(example_path("minilm"))
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "some weights unused" notices for the sentence-transformers layout
    try:
        encoder = AutoModel.from_pretrained(src, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(src, local_files_only=True)
    finally:
        hf_logging.set_verbosity(verbosity)
    with seeded_init(seed):
        model = SentenceClassifier(encoder, num_classes, dropout=dropout)
    return model, tokenizer
