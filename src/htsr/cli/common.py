"""What every ``htsr`` sub-command shares: the option conventions of ``docs/cli.md`` and the argument types.

Options that mean the same everywhere (add them with these functions, never by hand):

* ``-o/--out FILE``: a file whose extension picks the format (:func:`add_out`); repeatable where a command writes
  several formats. ``--out-dir DIR`` (:func:`add_out_dir`) for commands that write a directory, with
  ``--overwrite`` to replace a previous htsr output (never anything else).
* ``--json``: print the result as one JSON object on stdout instead of the human-readable table (:func:`add_json`).
* ``--set KEY=VALUE``: override one field of the command's config (repeatable; :func:`add_set`).
* ``--threads N``: torch and BLAS threads (default: the libraries' own, all cores; :func:`add_threads`).
* ``--device``: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``, checked against the machine (:func:`add_device`).
* ``--seed``: a non-negative integer (:func:`add_seed`); ``--progress/--no-progress`` (:func:`add_progress`).

Errors are not caught here: a command raises, and :func:`htsr.cli.main.main` turns the exception into one line
and an exit code (docs/cli.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from htsr.errors import ConfigError


def error(msg: str, code: int = 2) -> int:
    """Print ``htsr: error: MSG`` on stderr and return the exit code (2: bad usage or input; 1: failed run)."""
    from htsr.io import safe_text

    print(f"htsr: error: {safe_text(msg)}", file=sys.stderr)
    return code


def say(msg: str) -> None:
    """A progress/status line on stderr (``wrote FILE``), control characters escaped."""
    from htsr.io import safe_text

    print(safe_text(msg), file=sys.stderr)


# ------------------------------------------------------------------ argument types
class OutPath(str):
    """A path the command will write (``--out``, ``--out-dir``, ``--plot``): main() checks, before the command
    runs, that it can be created, so a finished run never ends in a write error."""

    is_dir: bool = False


class OutDir(OutPath):
    is_dir = True


def out_file(formats: Sequence[str]) -> Callable[[str], OutPath]:
    """argparse type: a file path whose extension is one of ``formats`` (e.g. ``(".json", ".csv")``)."""
    fm = tuple(f.lower() for f in formats)

    def parse(s: str) -> OutPath:
        suffix = Path(s).suffix.lower()
        if suffix not in fm:
            raise argparse.ArgumentTypeError(f"{s}: unsupported file type {suffix or '(none)'!r}; expected "
                                             f"{', '.join(fm)}")
        return OutPath(s)

    parse.__name__ = "file"
    return parse


def out_dir(s: str) -> OutDir:
    """argparse type: a directory to write."""
    if not s:
        raise argparse.ArgumentTypeError("expected a directory path")
    return OutDir(s)


def _number(kind: type, s: str) -> Any:
    try:
        return kind(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {s!r}") from None


def bounded(kind: type = float, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
            hi_open: bool = False) -> Callable[[str], Any]:
    """argparse type: an int/float in a (half-)open interval, e.g. ``bounded(float, 0, 1, lo_open=True)``."""
    import math

    def parse(s: str) -> Any:
        v = _number(kind, s)
        ok = math.isfinite(v)
        if ok and lo is not None:
            ok = v > lo if lo_open else v >= lo
        if ok and hi is not None:
            ok = v < hi if hi_open else v <= hi
        if not ok:
            left, right = "(" if lo_open else "[", ")" if hi_open else "]"
            raise argparse.ArgumentTypeError(
                f"{s} is outside {left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}")
        return v

    parse.__name__ = kind.__name__
    return parse


positive_int = bounded(int, 1)
nonneg_int = bounded(int, 0)
positive_float = bounded(float, 0, lo_open=True)
fraction = bounded(float, 0, 1, lo_open=True)  # (0, 1]
open_unit = bounded(float, 0, 1, lo_open=True, hi_open=True)  # (0, 1)


def key_value(s: str) -> tuple[str, Any]:
    """argparse type for ``KEY=VALUE``: the value is parsed as JSON when it is JSON (numbers, lists), else a string."""
    if "=" not in s:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {s!r}")
    k, v = s.split("=", 1)
    if not k.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with a non-empty KEY, got {s!r}")
    try:
        val: Any = json.loads(v)
    except json.JSONDecodeError:
        val = v
    return k.strip(), val


def _numbers(s: str, kind: type, what: str, lo: float | None = None, hi: float | None = None) -> list:
    try:
        out = [kind(x) for x in s.split(",") if x.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {s!r}") from e
    if not out:
        raise argparse.ArgumentTypeError(f"expected at least one of the {what}, got {s!r}")
    for v in out:
        if (lo is not None and v < lo) or (hi is not None and v > hi) or v != v:
            raise argparse.ArgumentTypeError(f"{v} is outside [{lo}, {hi}] in {s!r}")
    return out


def float_list(s: str) -> list[float]:
    """argparse type for ``1,2.5,3``: a non-empty list of floats."""
    return _numbers(s, float, "numbers")


def int_list(s: str) -> list[int]:
    """argparse type for ``1,2,3``: a non-empty list of integers."""
    return _numbers(s, int, "integers")


def float_list_in(lo: float, hi: float) -> Callable[[str], list[float]]:
    """argparse type: a non-empty list of floats, each in [lo, hi]."""
    return lambda s: _numbers(s, float, "numbers", lo, hi)


def name_list(s: str) -> tuple[str, ...]:
    """argparse type for ``a,b,c``: a non-empty tuple of names (``,,`` is an error, not an empty selection)."""
    out = tuple(x.strip() for x in s.split(",") if x.strip())
    if not out:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {s!r}")
    return out


def choice_list(choices: Iterable[str]) -> Callable[[str], tuple[str, ...]]:
    """argparse type: a non-empty comma-separated list, each item one of ``choices``."""
    valid = tuple(choices)

    def parse(s: str) -> tuple[str, ...]:
        out = name_list(s)
        bad = [x for x in out if x not in valid]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(bad)}; expected some of {', '.join(valid)}")
        return out

    return parse


def patterns(s: str) -> tuple[str, ...]:
    """argparse type for name patterns (globs or ``re:REGEX``), comma-separated; regexes are compiled here."""
    from htsr.nn import Patterns

    out = name_list(s)
    try:
        Patterns(out)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return out


def device(s: str) -> str:
    """argparse type: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``, present on this machine."""
    s = s.strip().lower()
    if s in ("cpu", "auto"):
        return s
    if s == "cuda" or (s.startswith("cuda:") and s[5:].isdigit()):
        import torch

        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{s}: no CUDA device on this machine (torch.cuda.is_available() is "
                                             "False); use cpu")
        if ":" in s and int(s[5:]) >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{s}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return s
    raise argparse.ArgumentTypeError(f"unknown device {s!r}; expected cpu, cuda, cuda:N or auto")


# ------------------------------------------------------------------ adding the shared options
def add_out(p: argparse.ArgumentParser, formats: Sequence[str], help: str, *, repeatable: bool = False,
            required: bool = False, flags: Sequence[str] = ("-o", "--out")) -> None:
    """``-o/--out FILE``: the extension picks the format among ``formats``."""
    kw: dict[str, Any] = {"action": "append", "default": []} if repeatable else {"default": None}
    p.add_argument(*flags, type=out_file(formats), required=required, metavar="FILE",
                   help=f"{help} ({', '.join(formats)}{'; repeatable' if repeatable else ''})", **kw)


def analysis_options(args: argparse.Namespace, keys: Sequence[str] = ()) -> dict[str, Any]:
    """The analysis options a spectra command's flags give (``keys`` copied when set, ``--set`` overrides, layer
    selection flags): one mapping from flags to :class:`~htsr.spectra.config.AnalysisConfig` fields."""
    opts = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
    opts.update(overrides(args))
    if args.layers:
        opts["layers"] = args.layers
    if args.exclude:
        opts["exclude"] = args.exclude
    if args.embeddings:
        opts["include_embeddings"] = True
    if args.split_qkv:
        opts["split_qkv"] = True
    return opts


def write_out(path: str | os.PathLike, table: Any, doc: Any = None) -> None:
    """Write a command's ``-o/--out`` result: ``doc`` (default: the table's records) when ``path`` ends in
    ``.json``, else ``table`` (its extension picks CSV or Parquet); atomic, then say so."""
    from htsr.io import write_json, write_table

    if str(path).lower().endswith(".json"):
        write_json(path, table.to_dict(orient="records") if doc is None else doc)
    else:
        write_table(path, table)
    say(f"wrote {path}")


def add_out_dir(p: argparse.ArgumentParser, help: str, *, required: bool = True, overwrite: bool = True) -> None:
    """``--out-dir DIR`` (and ``--overwrite``: replace a previous htsr output, never anything else)."""
    p.add_argument("--out-dir", type=out_dir, required=required, metavar="DIR", help=help)
    if overwrite:
        p.add_argument("--overwrite", action="store_true",
                       help="replace DIR if it is a previous htsr output (it holds a .htsr-output marker)")


def add_plot(p: argparse.ArgumentParser, help: str = "write a plot", *, directory: bool = False) -> None:
    """``--plot FILE.png`` (or ``--plot DIR`` for commands that write several pictures)."""
    if directory:
        p.add_argument("--plot", type=out_dir, default=None, metavar="DIR", help=help)
    else:
        p.add_argument("--plot", type=out_file((".png",)), default=None, metavar="FILE.png", help=help)


def add_json(p: argparse.ArgumentParser) -> None:
    """``--json``: one JSON object on stdout instead of the table."""
    p.add_argument("--json", action="store_true", help="print the result as one JSON object on stdout")


def add_set(p: argparse.ArgumentParser, what: str = "the configuration") -> None:
    """``--set KEY=VALUE`` (repeatable): override a field of the command's config."""
    p.add_argument("--set", dest="overrides", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                   help=f"override a field of {what} (repeatable); unknown keys are errors listing the valid ones")


def add_threads(p: argparse.ArgumentParser) -> None:
    """``--threads N``: torch intra-op and BLAS threads (default: the libraries' own, all cores)."""
    p.add_argument("--threads", type=positive_int, default=None, metavar="N",
                   help="torch and BLAS threads (default: all cores)")


def add_device(p: argparse.ArgumentParser, default: str = "cpu") -> None:
    p.add_argument("--device", type=device, default=default, help=f"cpu, cuda, cuda:N or auto (default {default})")


def add_seed(p: argparse.ArgumentParser, default: int | None = 0, help: str = "seed of every random step") -> None:
    p.add_argument("--seed", type=nonneg_int, default=default, help=f"{help} (default {default})")


def add_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: when stderr is a terminal)")


def add_executor(p: argparse.ArgumentParser) -> None:
    """``--executor local|ray`` and the Ray options (address, resources per task)."""
    g = p.add_argument_group("executor (where the work runs)")
    g.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local: in this process (default); ray: one Ray task per cell/part (pip install 'htsr[ray]')")
    g.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="Ray cluster to join (auto, HOST:PORT or ray://HOST:PORT); default: start a local instance")
    g.add_argument("--ray-cpus", type=bounded(float, 0), default=None, metavar="N", help="CPUs per task (default 1)")
    g.add_argument("--ray-gpus", type=bounded(float, 0), default=None, metavar="N", help="GPUs per task (default 0)")


def executor_from_args(args: argparse.Namespace) -> Any:
    """The executor ``--executor`` and the ``--ray-*`` options ask for (Ray options without ``--executor ray`` are
    an error)."""
    from htsr.experiments.executors import make_executor

    opts = {"address": args.ray_address, "num_cpus": args.ray_cpus, "num_gpus": args.ray_gpus}
    if args.executor == "local" and any(v is not None for v in opts.values()):
        raise ConfigError("--ray-address/--ray-cpus/--ray-gpus need --executor ray")
    return make_executor(args.executor, **opts)


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The ``--set`` pairs as a dict (a key given twice: the last wins)."""
    return dict(getattr(args, "overrides", None) or [])


def set_threads(n: int | None) -> None:
    """``--threads N``: torch's intra-op threads and the BLAS pools (threadpoolctl) set to N; None leaves the
    libraries' defaults. Raises :class:`~htsr.errors.ConfigError` for N < 1."""
    if n is None:
        return
    if n < 1:
        raise ConfigError(f"--threads must be >= 1, got {n}")
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(n)
    threadpool_limits(limits=n, user_api="blas")


def check_outputs(args: argparse.Namespace) -> None:
    """Before a command runs: every :class:`OutPath` argument can be written (its nearest existing ancestor is a
    writable directory), so no result is lost to a write error at the end."""
    from htsr.io import OutputError

    for v in vars(args).values():
        for item in v if isinstance(v, list) else [v]:
            if not isinstance(item, OutPath):
                continue
            p = Path(os.path.abspath(item))
            if p.exists() and not item.is_dir and p.is_dir():
                raise OutputError(f"{item} is a directory; expected a file path")
            if p.exists() and item.is_dir and not p.is_dir():
                raise OutputError(f"{item} exists and is not a directory")
            anc = p if (item.is_dir and p.is_dir()) else p.parent
            while not anc.exists():
                anc = anc.parent
            if not anc.is_dir() or not os.access(anc, os.W_OK | os.X_OK):
                raise OutputError(f"cannot write {item}: {anc} is not a writable directory")
            if p.exists() and not p.is_dir() and not os.access(p, os.W_OK):
                raise OutputError(f"cannot write {item}: permission denied")


def print_json(obj: Any) -> None:
    """The ``--json`` output: one JSON object on stdout (NaN as null)."""
    from htsr.io import jsonable

    print(json.dumps(jsonable(obj), indent=2, allow_nan=False))
