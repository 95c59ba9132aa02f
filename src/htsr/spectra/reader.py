"""The one validated checkpoint reader: safetensors files and sharded indexes.

Every entry point that reads weights from disk (``analyze``, ``prune``/``perplexity``, ``landscape --weights``,
``tinymem``/training checkpoints, ``mdtree``) goes through this module:

* :class:`SafetensorsFile` parses a file's header **once**, validates it as data (a JSON object whose entries have
  a known ``dtype`` string, a ``shape`` list of non-negative integers and two integer ``data_offsets`` inside the
  data section, consistent with dtype x shape, not overlapping) and then reads every tensor from **one** memory
  map of the file.
* :func:`read_index` validates a ``*.safetensors.index.json`` (``weight_map`` an object of string -> string) and
  resolves each shard **inside** the model directory; a shard outside it is refused.
* Only regular files are opened; a FIFO, device or socket is refused from its ``stat`` without opening it.

Every problem is one :class:`~htsr.errors.SourceError` line naming the file and what is wrong; messages never quote
file bytes (tensor names are escaped with :func:`htsr.io.safe_text` and shortened).
"""

from __future__ import annotations

import json
import math
import mmap
import os
import stat
import struct
from collections.abc import Iterator
from pathlib import Path

import torch

from htsr.errors import SourceError

#: safetensors dtype string -> (torch dtype, bytes per element)
DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "BOOL": (torch.bool, 1), "U8": (torch.uint8, 1), "I8": (torch.int8, 1),
    "I16": (torch.int16, 2), "I32": (torch.int32, 4), "I64": (torch.int64, 8),
    "F16": (torch.float16, 2), "BF16": (torch.bfloat16, 2), "F32": (torch.float32, 4), "F64": (torch.float64, 8),
}
for _name, _attr, _size in (("U16", "uint16", 2), ("U32", "uint32", 4), ("U64", "uint64", 8),
                            ("F8_E4M3", "float8_e4m3fn", 1), ("F8_E5M2", "float8_e5m2", 1)):
    if hasattr(torch, _attr):
        DTYPES[_name] = (getattr(torch, _attr), _size)

#: largest header accepted (the safetensors library's own limit)
MAX_HEADER = 100_000_000
#: largest index JSON accepted
MAX_INDEX = 256 * 1024 * 1024
#: most characters of a tensor name quoted in a message
_NAME_CHARS = 80


def _name(s: object) -> str:
    from htsr.io import safe_text

    t = safe_text(str(s))
    return repr(t if len(t) <= _NAME_CHARS else t[:_NAME_CHARS] + "...")


def regular_file(path: str | os.PathLike, what: str = "file") -> os.stat_result:
    """``stat`` of ``path`` when it is an existing regular file (symlinks followed); else a one-line error.

    Nothing is opened, so a FIFO or a device cannot block or be read."""
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise SourceError(f"{p}: no such {what}") from None
    except OSError as e:
        raise SourceError(f"{p}: cannot read {what} ({e.strerror or type(e).__name__})") from None
    if stat.S_ISDIR(st.st_mode):
        raise SourceError(f"{p}: is a directory; expected a {what}")
    if not stat.S_ISREG(st.st_mode):
        raise SourceError(f"{p}: not a regular file (a FIFO, device or socket); expected a {what}")
    return st


def _open_regular(path: Path, what: str) -> tuple[int, int]:
    """(fd, size) of a regular file opened read-only without blocking (re-checked after opening)."""
    regular_file(path, what)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise SourceError(f"{path}: cannot open {what} ({e.strerror or type(e).__name__})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):  # replaced between stat and open
        os.close(fd)
        raise SourceError(f"{path}: not a regular file; expected a {what}")
    return fd, st.st_size


def _read_exact(fd: int, n: int) -> bytes:
    chunks, left = [], n
    while left > 0:
        b = os.read(fd, min(left, 1 << 24))
        if not b:
            break
        chunks.append(b)
        left -= len(b)
    return b"".join(chunks)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class TensorInfo:
    """One validated header entry: dtype string, shape, absolute byte range in the file."""

    __slots__ = ("dtype", "shape", "start", "end")

    def __init__(self, dtype: str, shape: tuple[int, ...], start: int, end: int) -> None:
        self.dtype, self.shape, self.start, self.end = dtype, shape, start, end

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype][0]


def parse_header(header: object, data_size: int, where: str) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Validate a decoded safetensors header (``where`` names the file in messages).

    Returns ``(tensors, metadata)``; offsets in ``tensors`` are relative to the data section."""
    if not isinstance(header, dict):
        raise SourceError(f"{where}: corrupt safetensors header (a JSON {type(header).__name__}, expected an object)")
    meta: dict[str, str] = {}
    tensors: dict[str, TensorInfo] = {}
    for key, v in header.items():
        if key == "__metadata__":
            if not isinstance(v, dict) or not all(isinstance(a, str) and isinstance(b, str) for a, b in v.items()):
                raise SourceError(f"{where}: corrupt safetensors header (__metadata__ must be an object of strings)")
            meta = dict(v)
            continue
        n = _name(key)
        if not isinstance(v, dict):
            raise SourceError(f"{where}: tensor {n}: header entry is a {type(v).__name__}, expected an object")
        dtype, shape, offs = v.get("dtype"), v.get("shape"), v.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in DTYPES:
            shown = _name(dtype) if isinstance(dtype, str) else f"a {type(dtype).__name__}"
            raise SourceError(f"{where}: tensor {n}: unknown dtype {shown}; expected one of {', '.join(DTYPES)}")
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise SourceError(f"{where}: tensor {n}: shape must be a list of non-negative integers")
        if (not isinstance(offs, list) or len(offs) != 2 or not all(_is_int(o) for o in offs)
                or not 0 <= offs[0] <= offs[1]):
            raise SourceError(f"{where}: tensor {n}: data_offsets must be two integers 0 <= begin <= end")
        nbytes = math.prod(shape) * DTYPES[dtype][1]
        if offs[1] - offs[0] != nbytes:
            raise SourceError(f"{where}: tensor {n}: data_offsets span {offs[1] - offs[0]} bytes but dtype {dtype} "
                              f"x shape {shape} needs {nbytes}")
        if offs[1] > data_size:
            raise SourceError(f"{where}: truncated safetensors file (tensor {n} needs {offs[1]} data bytes, "
                              f"the file has {data_size})")
        tensors[key] = TensorInfo(dtype, tuple(shape), offs[0], offs[1])
    spans = sorted((t.start, t.end, k) for k, t in tensors.items() if t.end > t.start)
    for (_, e0, k0), (s1, _, k1) in zip(spans, spans[1:], strict=False):
        if s1 < e0:
            raise SourceError(f"{where}: corrupt safetensors header (tensors {_name(k0)} and {_name(k1)} overlap)")
    return tensors, meta


class SafetensorsFile:
    """A validated safetensors file: the header parsed once, tensors read from one memory map.

    ``keys()``, ``info(name)``, ``tensor(name)``; a tensor shares the (copy-on-write) map, so loading thousands
    of tensors costs no reopening or re-parsing."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        fd, size = _open_regular(self.path, "safetensors file")
        try:
            raw = _read_exact(fd, 8)
            if len(raw) < 8:
                raise SourceError(f"{self.path}: not a safetensors file (file is {size} bytes, header missing)")
            (hlen,) = struct.unpack("<Q", raw)
            if hlen == 0 or hlen > MAX_HEADER or 8 + hlen > size:
                raise SourceError(f"{self.path}: corrupt or truncated safetensors header (declared header length does "
                                  f"not fit the file of {size} bytes)")
            text = _read_exact(fd, hlen)
            if len(text) < hlen:
                raise SourceError(f"{self.path}: truncated safetensors header")
            header = _json_bytes(text, f"{self.path}: corrupt safetensors header")
            self.data_start = 8 + hlen
            self.tensors, self.metadata = parse_header(header, size - self.data_start, str(self.path))
            self._mm: mmap.mmap | None = None
            if any(t.end > t.start for t in self.tensors.values()):
                try:
                    self._mm = mmap.mmap(fd, 0, access=mmap.ACCESS_COPY)
                except (OSError, ValueError) as e:
                    raise SourceError(f"{self.path}: cannot map the file ({e})") from None
                if len(self._mm) < size:  # shrunk since it was validated
                    raise SourceError(f"{self.path}: the file changed while it was read")
        finally:
            os.close(fd)

    def keys(self) -> list[str]:
        return list(self.tensors)

    def __contains__(self, name: object) -> bool:
        return name in self.tensors

    def __len__(self) -> int:
        return len(self.tensors)

    def info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise SourceError(f"{self.path}: no tensor named {_name(name)}") from None

    def tensor(self, name: str) -> torch.Tensor:
        """The tensor ``name`` (CPU, its stored dtype), backed by the file's map."""
        t = self.info(name)
        if t.end == t.start or self._mm is None:
            return torch.empty(t.shape, dtype=t.torch_dtype)
        n, off = math.prod(t.shape), self.data_start + t.start
        if off % DTYPES[t.dtype][1]:  # unaligned in the file: copy to an aligned buffer
            return torch.frombuffer(bytearray(self._mm[off:off + t.end - t.start]), dtype=t.torch_dtype,
                                    count=n).reshape(t.shape)
        return torch.frombuffer(self._mm, dtype=t.torch_dtype, count=n, offset=off).reshape(t.shape)

    def release(self, name: str) -> None:
        """Drop the pages of tensor ``name`` from this process's memory once it has been used (``madvise``
        ``MADV_DONTNEED``). The map is private and never written, so a later read of any tensor just reads the
        file again; without this, every tensor read stays resident and a whole shard (gigabytes) counts in the
        process's memory by the end of the file. A no-op where ``madvise`` is not available."""
        t = self.info(name)
        if self._mm is None or t.end == t.start or not hasattr(self._mm, "madvise") \
                or not hasattr(mmap, "MADV_DONTNEED"):
            return
        page = mmap.PAGESIZE
        lo = (self.data_start + t.start) // page * page
        hi = min(len(self._mm), -(-(self.data_start + t.end) // page) * page)
        try:
            self._mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
        except (OSError, ValueError):  # advice only
            pass

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every tensor, by name (the replacement for ``safetensors.torch.load_file``)."""
        return {k: self.tensor(k) for k in self.tensors}


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a validated safetensors file (one parse, one map)."""
    return SafetensorsFile(path).state_dict()


def read_json(path: str | os.PathLike, what: str = "JSON file", max_bytes: int = MAX_INDEX) -> object:
    """A small JSON file, only if it is a regular file; any problem is one line naming it."""
    p = Path(path)
    fd, size = _open_regular(p, what)
    try:
        if size > max_bytes:
            raise SourceError(f"{p}: {what} of {size} bytes is larger than the {max_bytes} accepted")
        raw = _read_exact(fd, size)
    finally:
        os.close(fd)
    return _json_bytes(raw, f"{p}: not a valid {what}")


def _json_bytes(raw: bytes, problem: str) -> object:
    """JSON from UTF-8 bytes; any decoding problem is one :class:`SourceError` line, ``problem`` plus why."""
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise SourceError(f"{problem} (not UTF-8 text)") from None
    except json.JSONDecodeError as e:
        raise SourceError(f"{problem} (invalid JSON at byte {e.pos})") from None
    except RecursionError:
        raise SourceError(f"{problem} (JSON nested too deeply)") from None


def inside(directory: str | os.PathLike, name: str, where: str) -> Path:
    """``directory / name`` resolved, refused unless it stays inside ``directory``.

    The name must be relative and must not climb out (``..``); after resolving symbolic links the file must still
    be inside ``directory``, or, for a Hugging Face cache snapshot (``.../snapshots/<revision>/``), inside that
    cache entry's ``blobs/`` folder, where the hub's own symbolic links point."""
    root = Path(directory).resolve()
    if not name or "\x00" in name or os.path.isabs(name) or name.startswith("\\"):
        raise SourceError(f"{where}: shard {_name(name)} must be a relative path inside {root}")
    norm = os.path.normpath(name)
    if norm in (".", "..") or norm.startswith(".." + os.sep):
        raise SourceError(f"{where}: shard {_name(name)} lies outside the model directory {root}")
    target = (root / norm).resolve()
    allowed = [root]
    if root.parent.name == "snapshots":
        allowed.append(root.parent.parent / "blobs")
    if target == root or not any(a in target.parents for a in allowed):
        raise SourceError(f"{where}: shard {_name(name)} lies outside the model directory {root}")
    return target


def index_entries(index_file: str | os.PathLike,
                  directory: str | os.PathLike | None = None) -> list[tuple[str, Path]]:
    """A validated safetensors index as (tensor name, shard path) in the index's order.

    ``weight_map`` must be an object of string -> string; every shard must resolve inside ``directory`` (default:
    the index's folder) and be a regular file. Nothing is opened but the index itself."""
    index_file = Path(index_file)
    directory = index_file.parent if directory is None else Path(directory)
    what = "safetensors index"
    index = read_json(index_file, what)
    if not isinstance(index, dict):
        raise SourceError(f"{index_file}: not a valid {what} (a JSON {type(index).__name__}, expected an object)")
    wm = index.get("weight_map")
    if not isinstance(wm, dict):
        got = "missing" if "weight_map" not in index else f"a {type(wm).__name__}"
        raise SourceError(f"{index_file}: not a valid {what} (weight_map is {got}; expected an object of "
                          "tensor name -> shard file name)")
    out: list[tuple[str, Path]] = []
    resolved: dict[str, Path] = {}
    for k, fn in wm.items():
        if not isinstance(fn, str):
            raise SourceError(f"{index_file}: not a valid {what} (weight_map[{_name(k)}] is a {type(fn).__name__}; "
                              "expected a shard file name)")
        if fn not in resolved:
            resolved[fn] = inside(directory, fn, str(index_file))
        out.append((k, resolved[fn]))
    missing = [fn for fn, p in resolved.items() if not p.exists()]
    if missing:
        raise SourceError(f"{directory}: shard(s) named in {index_file.name} are missing: "
                          f"{', '.join(_name(m)[1:-1] for m in missing)}")
    for p in resolved.values():
        regular_file(p, "safetensors shard")
    return out


def read_index(index_file: str | os.PathLike, directory: str | os.PathLike | None = None) -> dict[Path, list[str]]:
    """A validated safetensors index grouped by shard: shard path -> tensor names (see :func:`index_entries`)."""
    by_file: dict[Path, list[str]] = {}
    for k, f in index_entries(index_file, directory):
        by_file.setdefault(f, []).append(k)
    return by_file


def weight_files(directory: str | os.PathLike) -> list[Path]:
    """The safetensors files of a model directory: the shards of every validated ``*.safetensors.index.json``,
    then any other ``*.safetensors`` (not opened here)."""
    d = Path(directory)
    files: list[Path] = []
    for idx in sorted(d.glob("*.safetensors.index.json")):
        files.extend(p for p in read_index(idx, d) if p not in files)
    seen = set(files)
    files.extend(p.resolve() for p in sorted(d.glob("*.safetensors")) if p.resolve() not in seen)
    return files


def check_weights_dir(directory: str | os.PathLike) -> list[Path]:
    """Validate every safetensors file a Hugging Face model directory would load (its indexes and shards, and its
    ``*.safetensors``) before a library such as transformers reads them; returns the files checked."""
    files = weight_files(directory)
    for f in files:
        SafetensorsFile(f)
    return files


def iter_tensors(path: str | os.PathLike) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of a safetensors file, sharded index or directory, one validated map per file."""
    p = Path(path)
    if p.is_dir():
        files = weight_files(p)
    elif p.name.endswith(".index.json"):
        files = list(read_index(p))
    else:
        files = [p]
    for f in files:
        sf = SafetensorsFile(f)
        for k in sf.keys():
            yield k, sf.tensor(k)
