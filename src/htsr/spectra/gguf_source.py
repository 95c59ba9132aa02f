"""GGUF checkpoints (llama.cpp's format) as a weights source, through the ``gguf`` package.

Each tensor is dequantised to float32 on its own when the analysis loads it (the file is memory-mapped, so
only one tensor is held at a time). GGUF records shapes innermost-first (ne0 = columns); entries carry the
usual row-major shape (rows, columns) or (experts, rows, columns). Tensors of rank < 2 (norms, biases) and
integer tensors are not weight matrices and are left out, as for state dicts. A tensor whose type ``gguf``
cannot dequantise becomes an error row naming the type and the supported ones; the others are still analysed.
llama.cpp's converter permutes the rows of attn_q/attn_k for RoPE; a row permutation leaves singular values,
and so every spectral metric, unchanged.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from htsr.errors import SourceError
from htsr.spectra.entry import TensorEntry

_EMBED = re.compile(r"(^|\.)(token_embd|position_embd|token_types)(\.|$)")
_INTEGER = ("I8", "I16", "I32", "I64")


def supported_types() -> list[str]:
    """Names of the GGUF tensor types this source can dequantise (with the installed ``gguf``)."""
    from gguf import GGMLQuantizationType as T
    from gguf.quants import _type_traits

    names = ["F32", "F16", "F64"] + [t.name for t in T if t in _type_traits]
    return sorted(set(names), key=lambda n: T[n].value)


def _dequantize(data: np.ndarray, qtype, shape: tuple[int, ...]) -> torch.Tensor:
    from gguf.quants import dequantize

    if qtype.name == "F64":
        arr = np.asarray(data).view(np.float64).astype(np.float32)
    else:
        arr = dequantize(np.asarray(data), qtype)
    return torch.from_numpy(np.array(arr, dtype=np.float32, order="C").reshape(shape))  # a copy: off the mmap


def gguf_entries(path: str | os.PathLike) -> Iterator[TensorEntry]:
    """Entries of one ``.gguf`` file, dequantised one tensor at a time on ``load()``."""
    p = Path(path)
    try:
        from gguf import GGUFReader
    except ImportError:  # pragma: no cover - gguf is a dependency of the environment
        raise SourceError(f"{p}: reading GGUF files needs the 'gguf' package (pip install gguf)") from None
    try:
        reader = GGUFReader(str(p), "r")
    except Exception as e:  # the reader raises ValueError/struct errors/IndexError on corrupt files
        raise SourceError(f"{p}: cannot read GGUF file: {e.__class__.__name__}: {e}") from None
    ok = set(supported_types())
    for t in reader.tensors:
        shape = tuple(int(s) for s in reversed([int(x) for x in t.shape]))
        qname = t.tensor_type.name
        if len(shape) < 2 or qname in _INTEGER:
            continue
        kind = "embedding" if _EMBED.search(t.name) else None
        if qname not in ok:
            msg = (f"unsupported GGUF quantisation type {qname} for tensor {t.name!r}; supported: "
                   f"{', '.join(sorted(ok, key=str))}")

            def load(msg=msg) -> torch.Tensor:
                raise SourceError(msg)
        else:
            def load(t=t, shape=shape) -> torch.Tensor:
                return _dequantize(t.data, t.tensor_type, shape)

        yield TensorEntry(t.name, shape, qname.lower(), load, kind=kind)
