"""Checkpoints as safetensors (weights) + JSON (optimizer-free metadata), written atomically.

Optimizer state is saved as a second safetensors file of its tensors plus its JSON structure, so a
checkpoint never needs pickle to load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save
from torch import nn

from htsr.errors import SourceError
from htsr.io import atomic_write, write_json


def _flatten_optimizer(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], Any]:
    tensors: dict[str, torch.Tensor] = {}

    def walk(obj: Any, path: str) -> Any:
        if isinstance(obj, torch.Tensor):
            tensors[path] = obj.detach().cpu().contiguous()
            return {"__tensor__": path}
        if isinstance(obj, dict):
            return {"__dict__": [[walk(k, f"{path}.k{i}"), walk(v, f"{path}.{i}")]
                                 for i, (k, v) in enumerate(obj.items())]}
        if isinstance(obj, list | tuple):
            return {"__list__": [walk(v, f"{path}.{i}") for i, v in enumerate(obj)], "tuple": isinstance(obj, tuple)}
        return obj

    return tensors, walk(sd, "opt")


def _unflatten_optimizer(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(tree, dict):
        if "__tensor__" in tree:
            return tensors[tree["__tensor__"]]
        if "__dict__" in tree:
            return {_unflatten_optimizer(k, tensors): _unflatten_optimizer(v, tensors) for k, v in tree["__dict__"]}
        if "__list__" in tree:
            items = [_unflatten_optimizer(v, tensors) for v in tree["__list__"]]
            return tuple(items) if tree.get("tuple") else items
    return tree


def save_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    extra: dict[str, Any] | None = None) -> Path:
    """Write ``path/model.safetensors``, optionally ``path/optimizer.safetensors`` + structure, and
    ``path/checkpoint.json`` (``extra``: any JSON-able metadata such as epoch, config, metrics). Atomic per file;
    checkpoint.json is written last, so its presence marks a complete checkpoint."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    save_weights(out / "model.safetensors", model)
    meta: dict[str, Any] = {"format": "htsr.checkpoint/1", "extra": extra or {}}
    if optimizer is not None:
        tensors, tree = _flatten_optimizer(optimizer.state_dict())
        _write_bytes(out / "optimizer.safetensors", save(tensors))
        meta["optimizer"] = tree
    write_json(out / "checkpoint.json", meta)
    return out


def _write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def _dedupe(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors sharing storage (tied embeddings): store clones.
    seen: set[int] = set()
    out = {}
    for k, v in weights.items():
        ptr = v.untyped_storage().data_ptr()
        out[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    return out


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    strict: bool = True) -> dict[str, Any]:
    """Load weights (and optimizer state) written by :func:`save_checkpoint` into the given objects;
    returns the ``extra`` metadata. Files are read by the validated reader (:mod:`htsr.spectra.reader`); a
    malformed ``checkpoint.json``, weights or optimizer file is a :class:`~htsr.errors.SourceError` naming it."""
    from htsr.spectra.reader import read_json, read_safetensors

    d = Path(path)
    meta_path = d / "checkpoint.json"
    if not meta_path.exists():
        raise SourceError(f"{d} is not a complete htsr checkpoint (no checkpoint.json)")
    meta = read_json(meta_path, "checkpoint metadata")
    if not isinstance(meta, dict):
        raise SourceError(f"{meta_path}: not valid checkpoint metadata (a JSON {type(meta).__name__}, expected an "
                          "object)")
    extra = meta.get("extra", {})
    if not isinstance(extra, dict):
        raise SourceError(f"{meta_path}: not valid checkpoint metadata ('extra' is a {type(extra).__name__}, "
                          "expected an object)")
    _load_state(d / "model.safetensors", model, read_safetensors(d / "model.safetensors"), strict)
    if optimizer is not None:
        if "optimizer" not in meta:
            raise SourceError(f"{d} holds no optimizer state")
        opt_path = d / "optimizer.safetensors"
        tensors = {k: v.clone() for k, v in read_safetensors(opt_path).items()}
        try:
            optimizer.load_state_dict(_unflatten_optimizer(meta["optimizer"], tensors))
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as e:
            raise SourceError(f"{opt_path}: optimizer state does not match the optimizer or its structure in "
                              f"{meta_path.name} ({type(e).__name__})") from None
    return extra


def save_weights(path: str | Path, model: nn.Module) -> Path:
    """A model's state dict as one safetensors file, atomically (tied tensors stored as copies)."""
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    _write_bytes(Path(path), save(_dedupe(weights)))
    return Path(path)


def load_weights(path: str | Path, model: nn.Module, strict: bool = True) -> None:
    """Load a single safetensors file of ``model``'s state dict (the landscape recipes' ``--weights``) through the
    validated reader (:mod:`htsr.spectra.reader`). A missing file, a file that is not safetensors, or weights of
    another architecture are a :class:`~htsr.errors.SourceError` naming the file."""
    from htsr.spectra.reader import read_safetensors

    p = Path(path)
    if not p.exists():
        raise SourceError(f"{p}: no such weights file")
    try:
        state = read_safetensors(p)
    except SourceError as e:
        msg = str(e)
        msg = msg[len(f"{p}: "):] if msg.startswith(f"{p}: ") else msg
        raise SourceError(f"{p}: not a readable safetensors file ({msg})") from None
    _load_state(p, model, state, strict)


def _load_state(p: Path, model: nn.Module, state: dict[str, torch.Tensor], strict: bool) -> None:
    try:
        model.load_state_dict(state, strict=strict)
    except (RuntimeError, ValueError, TypeError) as e:
        raise SourceError(f"{p}: weights do not fit the model ({str(e).splitlines()[0] if str(e) else e!r})") from e
