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
