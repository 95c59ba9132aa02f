"""Token streams, seeded calibration windows, and perplexity on non-overlapping windows."""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from htsr.devices import model_device
from htsr.nn import eval_mode
from htsr.pruning.errors import PruningError


class ByteTokenizer:
    """Fallback tokenizer for model directories without one: token id = UTF-8 byte (vocabulary 256)."""

    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))


def load_tokenizer(model_dir: str | Path | None, vocab_size: int | None = None) -> Any:
    """The directory's HF tokenizer (offline) if it ships one, else :class:`ByteTokenizer`.

    The byte fallback needs a model vocabulary of at least 256 ids.
    """
    if model_dir is not None:
        d = Path(model_dir)
        if any((d / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "vocab.txt", "vocab.json")):
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(str(d), local_files_only=True)
    if vocab_size is not None and vocab_size < 256:
        raise PruningError(f"no tokenizer in {model_dir} and the byte fallback needs a vocabulary of >= 256 ids, "
                           f"the model has {vocab_size}")
    return ByteTokenizer()


def tokenize(tokenizer: Any, text: str) -> torch.Tensor:
    """One long 1-D LongTensor of token ids for the whole text (no special tokens, no truncation)."""
    if isinstance(tokenizer, ByteTokenizer):
        ids = tokenizer.encode(text)
    else:
        import logging

        tl = logging.getLogger("transformers.tokenization_utils_base")
        level = tl.level
        tl.setLevel(logging.ERROR)  # "sequence longer than the model maximum": expected, we cut windows
        try:
            ids = tokenizer(text, add_special_tokens=False, truncation=False)["input_ids"]
        finally:
            tl.setLevel(level)
    return torch.tensor(ids, dtype=torch.long)


def read_text(path: str | Path) -> str:
    """A UTF-8 text file's contents, or a :class:`PruningError` saying why not.

    ``.jsonl`` / ``.jsonl.gz`` / ``.json.gz`` files (one JSON object per line, as C4's shards) give
    their records' ``"text"`` fields joined with blank lines (WikiText-style); so do ``.parquet`` files
    (the format of Hugging Face Hub datasets, e.g. wikitext's ``test-00000-of-00001.parquet``) and
    ``.csv``/``.tsv`` tables, from their ``text`` column.
    """
    p = Path(path)
    if not p.is_file():
        raise PruningError(f"text file not found: {p}")
    name = p.name.lower()
    try:
        if name.endswith((".jsonl", ".jsonl.gz", ".json.gz")):
            import gzip
            import json

            opener = gzip.open if name.endswith(".gz") else open
            texts = []
            with opener(p, "rt", encoding="utf-8") as f:
                for i, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            rec = json.loads(line)
                        except json.JSONDecodeError as e:
                            raise PruningError(f"{p}, line {i}: not JSON ({e})") from e
                        if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
                            raise PruningError(f'{p}, line {i}: expected an object with a "text" string')
                        texts.append(rec["text"])
            return "\n\n".join(texts)
        if name.endswith((".parquet", ".csv", ".tsv")):
            return _table_text(p, name)
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise PruningError(f"{p} is not UTF-8 text: {e}") from e
    except (OSError, EOFError) as e:
        raise PruningError(f"cannot read {p}: {e}") from e


def _table_text(p: Path, name: str) -> str:
    import pandas as pd

    try:
        if name.endswith(".parquet"):
            df = pd.read_parquet(p, columns=None)
        else:
            df = pd.read_csv(p, sep="\t" if name.endswith(".tsv") else ",", dtype=str, keep_default_na=False)
    except ImportError as e:
        raise PruningError(f"reading {p} needs pyarrow: pip install 'htsr[parquet]' ({e})") from e
    except Exception as e:  # pandas/pyarrow raise many types for malformed files
        raise PruningError(f"cannot read {p} as a table: {e}") from e
    if "text" not in df.columns:
        raise PruningError(f'{p}: no "text" column (columns: {", ".join(map(str, df.columns))})')
    texts = [t for t in df["text"].tolist() if isinstance(t, str)]
    if not texts:
        raise PruningError(f'{p}: the "text" column holds no strings')
    return "\n\n".join(texts)


def calibration_windows(ids: torch.Tensor, nsamples: int, seqlen: int, seed: int = 0) -> torch.Tensor:
    """``nsamples`` windows of ``seqlen`` tokens at seeded random offsets: shape (nsamples, seqlen).

    As the references' C4 loader: each window starts uniformly at random (numpy ``default_rng(seed)``).
    """
    ids = torch.as_tensor(ids).reshape(-1)
    if nsamples < 1 or seqlen < 1:
        raise PruningError(f"nsamples and seqlen must be >= 1, got {nsamples}, {seqlen}")
    if ids.numel() < seqlen:
        raise PruningError(f"calibration text has {ids.numel()} tokens, shorter than one window of {seqlen}")
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, ids.numel() - seqlen + 1, size=nsamples)
    return torch.stack([ids[s:s + seqlen] for s in starts])


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x, use_cache=False) if "use_cache" in inspect.signature(model.forward).parameters else model(x)
    logits = getattr(out, "logits", None)
    if logits is None:
        raise PruningError(f"{type(model).__name__} has no language-model head (no logits): perplexity needs a "
                           "causal LM")
    return logits


@torch.no_grad()
def perplexity(model: nn.Module, ids: torch.Tensor, seqlen: int, batch_size: int = 1) -> float:
    """exp(mean next-token NLL) over the non-overlapping ``seqlen`` windows of ``ids`` (the tail is dropped).

    Equal to the references' ``exp(Σ loss_i·seqlen / (n·seqlen))`` since every window predicts seqlen-1 tokens.
    """
    ids = torch.as_tensor(ids).reshape(-1).long()
    if seqlen < 2:
        raise PruningError(f"seqlen must be >= 2, got {seqlen}")
    n = ids.numel() // seqlen
    if n < 1:
        raise PruningError(f"text has {ids.numel()} tokens, shorter than one window of {seqlen}")
    dev = model_device(model)
    windows = ids[: n * seqlen].reshape(n, seqlen)
    total = 0.0
    with eval_mode(model):
        for i in range(0, n, batch_size):
            x = windows[i:i + batch_size].to(dev)
            logits = _logits(model, x)[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                                                    reduction="sum")
            total += float(nll)
    return math.exp(total / (n * (seqlen - 1)))
