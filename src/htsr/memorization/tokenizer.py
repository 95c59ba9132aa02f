"""Character tokenizers: the math test-bed's 14-token vocabulary and a character vocabulary for text corpora.

The math vocabulary is the reference's: digits 0-9 are tokens 0-9, ``^`` (BOS) is 10, ``$`` (EOS) is 11, the
space delimiter is 12 and PAD is 13.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from htsr.memorization.errors import MemorizationError

MATH_CHARS = "0123456789^$ "


class CharTokenizer:
    """One token per character; ``pad_id`` = ``len(chars)`` has no character (decoded as ``pad_char``).

    ``bos``/``eos`` name characters of the vocabulary used as sequence delimiters (``None``: none).
    """

    def __init__(self, chars: Sequence[str], bos: str | None = None, eos: str | None = None, pad_char: str = "_"):
        chars = list(chars)
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise MemorizationError("chars must be distinct single characters")
        self.chars = chars
        self.index = {c: i for i, c in enumerate(chars)}
        self.pad_id = len(chars)
        self.pad_char = pad_char
        self.bos_id = self.index[bos] if bos is not None else None
        self.eos_id = self.index[eos] if eos is not None else None

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + 1

    def encode(self, text: str) -> list[int]:
        try:
            return [self.index[c] for c in text]
        except KeyError as e:
            raise MemorizationError(f"character {e.args[0]!r} is not in the tokenizer's vocabulary") from None

    def encode_padded(self, texts: Iterable[str], max_ctx: int) -> torch.Tensor:
        """(n, max_ctx) int64 ids, right-padded with ``pad_id``; a text longer than ``max_ctx`` is an error."""
        rows = []
        for t in texts:
            ids = self.encode(t)
            if len(ids) > max_ctx:
                raise MemorizationError(f"a sequence of {len(ids)} tokens does not fit max_ctx={max_ctx}; raise "
                                        "max_ctx or shorten the sequences")
            rows.append(ids + [self.pad_id] * (max_ctx - len(ids)))
        return torch.tensor(np.array(rows, dtype=np.int64).reshape(len(rows), max_ctx))

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[i] if 0 <= i < len(self.chars) else self.pad_char for i in map(int, ids))

    def to_dict(self) -> dict:
        return {"chars": "".join(self.chars), "bos": None if self.bos_id is None else self.chars[self.bos_id],
                "eos": None if self.eos_id is None else self.chars[self.eos_id], "pad_char": self.pad_char}

    @classmethod
    def from_dict(cls, d: dict) -> CharTokenizer:
        return cls(list(d["chars"]), d.get("bos"), d.get("eos"), d.get("pad_char", "_"))


def math_tokenizer() -> CharTokenizer:
    """The reference's 14-token vocabulary (digits, ``^`` BOS=10, ``$`` EOS=11, space=12, PAD=13)."""
    return CharTokenizer(list(MATH_CHARS), bos="^", eos="$")
