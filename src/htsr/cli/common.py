"""Small pieces every ``htsr`` sub-command shares: the error line and the KEY=VALUE argument type."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def error(msg: str, code: int = 2) -> int:
    """Print ``htsr: error: MSG`` on stderr and return the exit code (2: bad usage or input; 1: failed run)."""
    print(f"htsr: error: {msg}", file=sys.stderr)
    return code


def key_value(s: str) -> tuple[str, Any]:
    """argparse type for ``KEY=VALUE``: the value is parsed as JSON when it is JSON (numbers, lists), else a string."""
    if "=" not in s:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {s!r}")
    k, v = s.split("=", 1)
    try:
        val: Any = json.loads(v)
    except json.JSONDecodeError:
        val = v
    return k.strip(), val


def _numbers(s: str, kind: type, what: str) -> list:
    try:
        out = [kind(x) for x in s.split(",") if x.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {s!r}") from e
    if not out:
        raise argparse.ArgumentTypeError(f"expected at least one of the {what}, got {s!r}")
    return out


def float_list(s: str) -> list[float]:
    """argparse type for ``1,2.5,3``: a non-empty list of floats."""
    return _numbers(s, float, "numbers")


def int_list(s: str) -> list[int]:
    """argparse type for ``1,2,3``: a non-empty list of integers."""
    return _numbers(s, int, "integers")


def set_threads(n: int | None) -> None:
    """``--threads N``: torch's intra-op threads and the BLAS pools (threadpoolctl) set to N; None leaves the
    libraries' defaults. Raises :class:`~htsr.errors.ConfigError` for N < 1."""
    if n is None:
        return
    from htsr.errors import ConfigError

    if n < 1:
        raise ConfigError(f"--threads must be >= 1, got {n}")
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(n)
    threadpool_limits(limits=n, user_api="blas")
