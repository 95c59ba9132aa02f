"""The one results writer: atomic files (JSON, CSV, Parquet, PNG, directories) that never clobber an input.

* :func:`atomic_write` writes through a temporary file beside the target and renames it into place: a crash leaves
  the old file (or nothing). A replaced file keeps its permissions; a new one gets the umask's (not the 0600 of
  the temporary file).
* :func:`check_not_input` refuses an output path that is, or lies inside, an input (file or directory).
* :func:`replace_dir` fills a directory atomically: written as a hidden sibling, then renamed into place. An
  existing directory is replaced only with ``overwrite`` and only when it is empty or holds :data:`MARKER` (a
  previous htsr output); a symlink is never followed into deletion.
* CSV cells that a spreadsheet would run as a formula (``=``, ``+``, ``-``, ``@`` at the start of a text cell)
  are quoted with a leading apostrophe; :func:`safe_text` escapes control characters for the terminal.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from htsr.errors import ConfigError, HtsrError

#: A file that marks a directory as written by htsr (``--overwrite`` replaces only such directories).
MARKER = ".htsr-output"
TABLE_FORMATS = (".csv", ".parquet")


class OutputError(HtsrError, ValueError):
    """An output path that would overwrite an input, or a directory htsr may not replace."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp)`` on a temporary file beside ``path``, then rename it into place.

    A crash or error leaves any existing file at ``path`` untouched. The result has the replaced file's mode, or
    ``0o666 & ~umask`` when new.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path} is a directory; expected a file path")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        writer(Path(tmp))
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _resolved(p: str | os.PathLike) -> Path:
    return Path(os.path.abspath(p)).resolve()


def check_not_input(output: str | os.PathLike, inputs: Iterable[Any]) -> None:
    """Raise :class:`OutputError` when ``output`` is one of ``inputs`` or lies inside an input directory (symlinks
    resolved). Inputs that are not paths (models, dicts, None) are ignored."""
    out = _resolved(output)
    for src in inputs:
        if not isinstance(src, str | os.PathLike):
            continue
        inp = _resolved(src)
        if out == inp:
            raise OutputError(f"output {output} is the input {src}; choose another output path")
        if inp.is_dir() and out.is_relative_to(inp):
            raise OutputError(f"output {output} lies inside the input directory {src}; choose a path outside it")


def check_replace_dir(out_dir: str | os.PathLike, *, overwrite: bool = False, inputs: Iterable[Any] = ()) -> Path:
    """The checks :func:`replace_dir` makes before writing, on their own (a command runs them before its work):
    ``out_dir`` is not a symlink, not an input, not inside or containing an input, and either absent, empty, or
    (with ``overwrite``) a previous htsr output that is not the current directory. Returns the resolved path."""
    given = Path(out_dir)
    inputs = list(inputs)
    check_not_input(given, inputs)
    if given.is_symlink():
        raise OutputError(f"{given} is a symbolic link; htsr never replaces what a link points to: give a real path")
    out = _resolved(given)
    for src in inputs:
        if isinstance(src, str | os.PathLike) and _resolved(src).is_relative_to(out):
            raise OutputError(f"output {given} contains the input {src}; choose a directory outside it")
    if out.exists():
        if not out.is_dir():
            raise OutputError(f"{out} exists and is not a directory")
        contents = list(out.iterdir())
        if contents and not overwrite:
            raise OutputError(f"{out} exists and is not empty (pass --overwrite to replace a previous htsr output)")
        if contents and not (out / MARKER).is_file():
            raise OutputError(f"{out} is not empty and was not written by htsr (no {MARKER} file); refusing to "
                              "delete it: choose a new or empty directory")
        if out == Path.cwd().resolve() or Path.cwd().resolve().is_relative_to(out):
            raise OutputError(f"{out} is the current directory (or contains it); choose another output directory")
    return out


def replace_dir(out_dir: str | os.PathLike, fill: Callable[[Path], None], *, overwrite: bool = False,
                inputs: Iterable[Any] = ()) -> Path:
    """Write a directory atomically: ``fill(tmp)`` fills a hidden sibling, which is renamed to ``out_dir``.

    ``out_dir`` must not exist, be empty, or (with ``overwrite``) be a previous htsr output holding
    :data:`MARKER` (:func:`check_replace_dir`). A symlink at ``out_dir`` is refused, never followed. The marker is
    written into the result.
    """
    out = check_replace_dir(out_dir, overwrite=overwrite, inputs=inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        fill(tmp)
        (tmp / MARKER).write_text("written by htsr; --overwrite may replace this directory\n")
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def save_png(fig: Any, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Write a matplotlib ``Figure`` as a PNG atomically and clear it. An Agg canvas is attached explicitly:
    no pyplot, no global backend, no figure left registered anywhere."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    check_suffix(path, (".png",), "a plot")
    FigureCanvasAgg(fig)
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
    finally:
        fig.clear()


def check_suffix(path: str | os.PathLike, suffixes: Iterable[str], what: str) -> str:
    """The lower-case suffix of ``path``, or :class:`~htsr.errors.ConfigError` when it is not one of ``suffixes``."""
    suffixes = tuple(suffixes)
    suffix = Path(path).suffix.lower()
    if suffix not in suffixes:
        raise ConfigError(f"{path}: unsupported file type {suffix or '(none)'!r} for {what}; expected "
                          f"{', '.join(suffixes)}")
    return suffix


def jsonable(v: Any) -> Any:
    """``v`` with numpy scalars/arrays, tuples and non-finite floats made JSON-able (NaN/Inf become null)."""
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [jsonable(x) for x in v]
    if isinstance(v, np.integer | np.bool_):
        return v.item()
    if isinstance(v, float | np.floating):
        f = float(v)
        return f if math.isfinite(f) else None  # JSON has no NaN: null means "not available"
    if isinstance(v, np.ndarray):
        return jsonable(v.tolist())
    if isinstance(v, Path):
        return str(v)
    return v


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as JSON atomically (NaN/Inf become null)."""

    def w(tmp: Path) -> None:
        tmp.write_text(json.dumps(jsonable(obj), indent=2, allow_nan=False))

    return atomic_write(path, w)


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _defuse(v: Any) -> Any:
    if isinstance(v, str) and v.startswith(_FORMULA_START):
        return "'" + v
    return v


def csv_safe(df):
    """A copy of a DataFrame whose text cells cannot run as spreadsheet formulas (leading ``'`` added)."""
    from pandas.api.types import is_object_dtype, is_string_dtype

    out = df.copy()
    for c in out.columns:
        if is_object_dtype(out[c]) or is_string_dtype(out[c]):
            out[c] = out[c].map(_defuse)
    return out


def write_table(path: str | os.PathLike, df) -> Path:
    """Write a DataFrame as .csv (text cells defused for spreadsheets) or .parquet, by extension, atomically."""
    suffix = check_suffix(path, TABLE_FORMATS, "a table")
    if suffix == ".csv":
        safe = csv_safe(df)
        return atomic_write(path, lambda tmp: safe.to_csv(tmp, index=False))
    return atomic_write(path, lambda tmp: df.to_parquet(tmp, index=False))


_CONTROL = {i: f"\\x{i:02x}" for i in (*range(0x00, 0x20), *range(0x7F, 0xA0))}  # C0, DEL and C1 (CSI, OSC...)
# bidirectional overrides and isolates reorder what the terminal shows
_CONTROL.update({i: f"\\u{i:04x}" for i in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))})


def safe_text(s: Any) -> str:
    """``str(s)`` with control characters (terminal escape sequences, newlines) shown as ``\\xNN``."""
    return str(s).translate(_CONTROL)


def _same_key(a: Any, b: Any) -> bool:
    return json.dumps(jsonable(a), sort_keys=True, default=str) == json.dumps(jsonable(b), sort_keys=True, default=str)


def prepare_run_dir(out_dir: str | os.PathLike, key: Any, state: str = "run.json", *, overwrite: bool = False,
                    inputs: Iterable[Any] = (), keep: Iterable[str] = ()) -> bool:
    """Make ``out_dir`` the working directory of a resumable run identified by ``key`` (a JSON-able
    configuration), recorded in ``out_dir/state``; returns True when an earlier run of the same ``key`` is resumed.

    New or empty (apart from the ``keep`` entries, e.g. a cache, and the htsr marker) -> used as new. An htsr
    output of the same key -> resumed. Anything else -> an :class:`OutputError` (another configuration would be
    mixed in as if it were the same), unless ``overwrite``, which replaces a previous htsr output (never a directory
    htsr did not write, never an input) and keeps the ``keep`` entries. The one rule behind every resumable
    command (sweeps, comparisons, training runs)."""
    out = Path(out_dir)
    keep = set(keep)
    inputs = list(inputs)
    check_not_input(out, inputs)
    if out.is_symlink():
        raise OutputError(f"{out} is a symbolic link; htsr never replaces what a link points to: give a real path")
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} exists and is not a directory")
    content = {c.name for c in out.iterdir()} - keep - {MARKER} if out.is_dir() else set()
    if content:
        old = None
        if (out / MARKER).is_file() and (out / state).is_file():
            try:
                old = json.loads((out / state).read_text()).get("resume_key")
            except (OSError, ValueError, AttributeError):
                old = None
        if not overwrite:
            if old is not None and _same_key(old, key):
                return True
            if old is not None:
                raise OutputError(f"{out} holds a run with a different configuration; use another --out-dir, or "
                                  "--overwrite to replace it")
            raise OutputError(f"{out} exists and is not empty (pass --overwrite to replace a previous htsr output)")
        check_replace_dir(out, overwrite=True, inputs=inputs)  # refuses a directory htsr did not write
        for child in out.iterdir():
            if child.name in keep or child.name == MARKER:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    out.mkdir(parents=True, exist_ok=True)
    if not (out / MARKER).is_file():
        (out / MARKER).write_text("written by htsr; --overwrite may replace this directory\n")
    write_json(out / state, {"resume_key": jsonable(key), "status": "running"})
    return False
