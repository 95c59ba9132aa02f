"""Weight sources: where tensors come from, one tensor at a time.

Every source yields :class:`TensorEntry` objects (name, shape, kind hint, a loader)
without reading tensor data until ``load()`` is called, so a sharded checkpoint is
streamed through safetensors' mmap and never held whole.

Supported: ``nn.Module``; a state dict (any mapping of name -> tensor/array); a
``.safetensors`` file; a directory of sharded safetensors with
``model.safetensors.index.json``; a Hugging Face model directory (read as files, the
model is never instantiated); a PEFT LoRA adapter directory (B @ A per module); pickle
checkpoints (``.bin``/``.pt``/``.pth``) only with ``allow_pickle=True`` and then with
``torch.load(weights_only=True)``; and the difference W - W_base against a base source.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from htsr.errors import SourceError
from htsr.nn import layer_kind
from htsr.spectra.entry import TensorEntry
from htsr.spectra.reader import SafetensorsFile, index_entries, read_json, regular_file

SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def _is_float_dtype(dtype: str) -> bool:
    d = dtype.lower()
    return d.startswith(("float", "bfloat", "f8", "f16", "f32", "f64", "bf16")) or d in ("half", "double")


def module_entries(model: torch.nn.Module) -> Iterator[TensorEntry]:
    """Weights of a torch module, keyed by full module path, in ``named_modules`` order.

    Known layer types are recognised by class; unknown modules contribute their direct
    parameters of rank >= 2 (3-D parameters are MoE expert stacks: one matrix per expert).
    """
    for mname, mod in model.named_modules():
        kind = layer_kind(mod)
        params = dict(mod.named_parameters(recurse=False))
        if kind == "norm":
            continue
        for pname, p in params.items():
            if p is None or p.ndim < 2:
                continue
            if kind is not None and pname != "weight":
                continue
            full = f"{mname}.{pname}" if mname else pname
            k = kind if kind is not None else ("moe_expert" if p.ndim == 3 else None)
            yield TensorEntry(full, tuple(p.shape), str(p.dtype).replace("torch.", ""),
                              (lambda p=p: p.detach()), kind=k, module_type=type(mod).__name__,
                              groups=int(getattr(mod, "groups", 1) or 1))


# ------------------------------------------------------------------ state dict
def state_dict_entries(sd: Mapping[str, Any]) -> Iterator[TensorEntry]:
    """Entries of a name -> tensor mapping (tensors or numpy arrays)."""
    for name, t in sd.items():
        if not isinstance(t, (torch.Tensor, np.ndarray)):
            continue
        if t.ndim < 2:
            continue
        dtype = str(t.dtype).replace("torch.", "")
        if not _is_float_dtype(dtype):
            continue  # integer buffers (position ids, masks) are not weights

        def load(t=t) -> torch.Tensor:
            return t.detach() if isinstance(t, torch.Tensor) else torch.from_numpy(np.asarray(t))

        yield TensorEntry(name, tuple(t.shape), dtype, load)


# ------------------------------------------------------------------ safetensors
def safetensors_entries(path: str | os.PathLike, names: list[str] | None = None) -> Iterator[TensorEntry]:
    """Entries of one .safetensors file: its header parsed and validated once by
    :class:`htsr.spectra.reader.SafetensorsFile`, every tensor read from its one memory map."""
    sf = SafetensorsFile(path)
    wanted = sf.keys() if names is None else [k for k in names if k in sf]
    for k in wanted:
        info = sf.info(k)
        dtype = str(info.torch_dtype).replace("torch.", "")
        if len(info.shape) < 2 or not _is_float_dtype(dtype):
            continue
        yield TensorEntry(k, info.shape, dtype, (lambda k=k: sf.tensor(k)), release=(lambda k=k: sf.release(k)))


def sharded_entries(directory: Path, index_file: Path) -> Iterator[TensorEntry]:
    """Entries of a sharded checkpoint, in the index's key order (index validated by
    :func:`htsr.spectra.reader.read_index`: shards inside ``directory``, regular files)."""
    pairs = index_entries(index_file, directory)
    order = {k: i for i, (k, _) in enumerate(pairs)}
    by_file: dict[Path, list[str]] = {}
    for k, f in pairs:
        by_file.setdefault(f, []).append(k)
    entries = []
    for fn, ks in by_file.items():
        entries.extend(safetensors_entries(fn, names=ks))
    entries.sort(key=lambda e: order.get(e.name, 0))
    yield from entries


# ------------------------------------------------------------------ pickle (opt-in)
def pickle_entries(path: Path, allow_pickle: bool) -> Iterator[TensorEntry]:
    """A torch pickle checkpoint, only with explicit opt-in, loaded with weights_only=True."""
    if not allow_pickle:
        raise SourceError(
            f"{path}: refusing to load a pickle checkpoint; pickle files can run arbitrary code. "
            "Convert it to safetensors, or pass allow_pickle=True (CLI: --allow-pickle) to load it "
            "with torch.load(weights_only=True)."
        )
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise SourceError(f"{path}: cannot load checkpoint with weights_only=True: {e}") from None
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise SourceError(f"{path}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    yield from state_dict_entries(obj)


# ------------------------------------------------------------------ directories
def directory_entries(directory: Path, allow_pickle: bool) -> Iterator[TensorEntry]:
    """A Hugging Face model directory (or any folder of weight files)."""
    index = directory / SAFETENSORS_INDEX
    if index.is_file():
        yield from sharded_entries(directory, index)
        return
    for cand in ("model.safetensors", "adapter_model.safetensors"):
        if (directory / cand).is_file():
            yield from safetensors_entries(directory / cand)
            return
    st = sorted(directory.glob("*.safetensors"))
    if st:
        for f in st:
            yield from safetensors_entries(f)
        return
    pk_index = directory / "pytorch_model.bin.index.json"
    pk = sorted(p for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pk or pk_index.is_file():
        for f in pk:
            yield from pickle_entries(f, allow_pickle)
        return
    raise SourceError(
        f"{directory}: no weights found (expected model.safetensors, {SAFETENSORS_INDEX}, "
        "*.safetensors, or with --allow-pickle a pytorch_model.bin)"
    )


def path_entries(path: str | os.PathLike, allow_pickle: bool = False) -> Iterator[TensorEntry]:
    """Entries of a file or directory on disk."""
    p = Path(path)
    if not p.exists():
        raise SourceError(f"{p}: no such file or directory")
    if p.is_dir():
        yield from directory_entries(p, allow_pickle)
        return
    if p.suffix == ".safetensors":
        yield from safetensors_entries(p)
    elif p.name.endswith(".index.json"):
        yield from sharded_entries(p.parent, p)
    elif p.suffix in PICKLE_SUFFIXES:
        regular_file(p, "weights file")
        yield from pickle_entries(p, allow_pickle)
    elif p.suffix.lower() == ".gguf":
        from htsr.spectra.gguf_source import gguf_entries

        yield from gguf_entries(p)
    else:
        raise SourceError(
            f"{p}: unsupported file type {p.suffix!r}; expected .safetensors, a safetensors index, "
            "a model directory, or (with --allow-pickle) .bin/.pt"
        )


# ------------------------------------------------------------------ delta and LoRA
def delta_entries(entries: Iterator[TensorEntry], base: list[TensorEntry]) -> Iterator[TensorEntry]:
    """W - W_base for tensors present in both with equal shapes, matched by full name."""
    by_name = {e.name: e for e in base}
    for e in entries:
        b = by_name.get(e.name)
        if b is None:
            yield TensorEntry(e.name, e.shape, e.dtype, _raiser(f"no tensor named {e.name!r} in the base model"),
                              e.kind, e.module_type)
            continue
        if b.shape != e.shape:
            yield TensorEntry(e.name, e.shape, e.dtype,
                              _raiser(f"shape {e.shape} differs from base shape {b.shape}"), e.kind, e.module_type)
            continue

        def load(e=e, b=b) -> torch.Tensor:
            return e.load().to(torch.float32) - b.load().to(torch.float32)

        yield TensorEntry(e.name, e.shape, "float32", load, e.kind, e.module_type)


def _raiser(msg: str) -> Callable[[], torch.Tensor]:
    def f() -> torch.Tensor:
        raise SourceError(msg)

    return f


def lora_entries(entries: Iterator[TensorEntry], config: Mapping | None = None) -> Iterator[TensorEntry]:
    """PEFT LoRA adapters as matrices: delta W = scaling * B @ A per adapted module.

    ``scaling`` is lora_alpha / r from ``adapter_config.json`` when given (1 otherwise);
    it rescales all eigenvalues by scaling^2 and leaves alpha unchanged. Keys follow
    PEFT: ``<module>.lora_A[.<adapter>].weight`` and the matching ``lora_B``.
    """
    scaling = 1.0
    if config:
        r = config.get("r")
        a = config.get("lora_alpha")
        if r and a:
            scaling = float(a) / float(r)
    all_e = list(entries)
    by_name = {e.name: e for e in all_e}
    for e in all_e:
        if ".lora_A" not in e.name:
            continue
        bname = e.name.replace(".lora_A", ".lora_B")
        b = by_name.get(bname)
        module = e.name.split(".lora_A")[0]
        if module.startswith("base_model.model."):
            module = module[len("base_model.model."):]
        if b is None:
            yield TensorEntry(module + ".weight", e.shape, e.dtype, _raiser(f"no lora_B for {e.name}"), "lora")
            continue
        shape = (b.shape[0], e.shape[1])

        def load(a=e, b=b) -> torch.Tensor:
            return scaling * (b.load().to(torch.float32) @ a.load().to(torch.float32))

        yield TensorEntry(module + ".weight", shape, "float32", load, "lora")


def lora_adapter_config(path: Path) -> dict | None:
    """adapter_config.json beside a LoRA adapter, if any."""
    cfg = (path if path.is_dir() else path.parent) / "adapter_config.json"
    if cfg.exists():
        out = read_json(cfg, "adapter config")
        if not isinstance(out, dict):
            raise SourceError(f"{cfg}: not a valid adapter config (a JSON {type(out).__name__}, expected an object)")
        return out
    return None


# ------------------------------------------------------------------ dispatch
def describe_source(source: Any) -> str:
    if isinstance(source, torch.nn.Module):
        return f"nn.Module:{type(source).__name__}"
    if isinstance(source, Mapping):
        return f"state_dict:{len(source)} tensors"
    return str(source)


def iter_entries(source: Any, *, allow_pickle: bool = False) -> Iterator[TensorEntry]:
    """Dispatch any supported source to its entry iterator."""
    if isinstance(source, torch.nn.Module):
        return module_entries(source)
    if isinstance(source, Mapping):
        return state_dict_entries(source)
    if isinstance(source, (str, os.PathLike)):
        return path_entries(source, allow_pickle=allow_pickle)
    raise SourceError(
        f"unsupported source of type {type(source).__name__}; expected an nn.Module, a state dict, "
        "or a path to a .safetensors file / model directory"
    )


def input_paths(*sources: str | None) -> list[str]:
    """The paths an analysis reads: each source, and a sharded index's directory."""
    out = []
    for s in sources:
        if s is None:
            continue
        out.append(s)
        if str(s).endswith(".index.json"):
            out.append(str(Path(s).parent))
    return out
