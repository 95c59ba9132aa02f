"""Shared helpers for the benchmark scripts: machine info, timing, tables, JSON output.

Not a benchmark itself. Every ``bench_*.py`` imports it as ``_common`` (the scripts are
run as ``python benchmarks/bench_x.py``, which puts this directory on ``sys.path``).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import io
import json
import logging
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """'model name' from /proc/cpuinfo, with family/model when the name is generic (VMs)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if ":" in line:
                k, v = (x.strip() for x in line.split(":", 1))
                fields.setdefault(k.lower(), v)
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    if len(name.split()) <= 2 and "cpu family" in fields:
        name += f" (family {fields['cpu family']}, model {fields.get('model', '?')})"
    return name


def mem_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _version(mod: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(mod)
    except Exception:
        return None


def machine_info() -> dict[str, Any]:
    """CPU model, core count, memory, load and library versions (for the report)."""
    import numpy as np
    import torch

    gpu = None
    if torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0)
    return {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "nproc": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "mem_gib": mem_total_gib(),
        "loadavg": loadavg(),
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy": np.__version__,
        "scipy": _version("scipy"),
        "htsr": _version("htsr"),
        "weightwatcher": _version("weightwatcher"),
        "powerlaw": _version("powerlaw"),
    }


def announce_machine(label: str = "machine:", **extra: Any) -> dict[str, Any]:
    """:func:`machine_info` plus ``extra`` fields, printed as one line; returned for the JSON report."""
    info = machine_info()
    info.update(extra)
    print(f"{label} {machine_line(info)}".strip())
    return info


def machine_line(info: dict[str, Any]) -> str:
    return (
        f"{info['cpu']}, {info['nproc']} cores, {info['mem_gib']} GiB, "
        f"{'GPU ' + info['gpu'] if info['gpu'] else 'no GPU'}; load avg {info['loadavg']}; "
        f"torch {info['torch']}, numpy {info['numpy']}, scipy {info['scipy']}, htsr {info['htsr']}, "
        f"weightwatcher {info['weightwatcher']}, powerlaw {info['powerlaw']}; {info['date']}"
    )


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def fmt_s(x: float) -> str:
    if x != x:  # NaN
        return "n/a"
    if x >= 100:
        return f"{x:.0f} s"
    if x >= 1:
        return f"{x:.2f} s"
    if x >= 1e-3:
        return f"{x * 1e3:.1f} ms"
    return f"{x * 1e6:.0f} us"


def fmt_x(x: float) -> str:
    return "n/a" if x != x else f"{x:.1f}x" if x >= 10 else f"{x:.2f}x"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> None:
    """A markdown table on stdout (paste-ready for docs/benchmarks.md)."""
    if title:
        print(f"\n### {title}\n")
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" for _ in headers) + "|")
    for r in rows:
        print("| " + " | ".join(str(c) for c in r) + " |")
    sys.stdout.flush()


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "MISSED")


def write_json(path: str | os.PathLike | None, payload: dict[str, Any]) -> None:
    if not path:
        return
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n")
    print(f"\nwrote {p}")


def _jsonable(o: Any) -> Any:
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:
        pass
    return str(o)


@contextlib.contextmanager
def quiet():
    """Silence WeightWatcher/powerlaw: stdout prints, their loggers and warnings."""
    for name in ("weightwatcher", "powerlaw"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def import_weightwatcher():
    """Import weightwatcher quietly (it prints and configures the root logger at import)."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    with quiet(), contextlib.redirect_stderr(io.StringIO()):
        import weightwatcher as ww
    root.setLevel(level)
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    return ww


def ww_analyze(model: Any, **kwargs: Any):
    """WeightWatcher 0.7.7 ``analyze()`` with its output silenced; returns the details DataFrame."""
    ww = import_weightwatcher()
    with quiet():
        return ww.WeightWatcher(model=model).analyze(**kwargs)


def heavy_tailed(n: int, m: int, seed: int, df: float = 4.0, scale: float | None = None):
    """A seeded (n, m) float32 torch tensor of Student-t(df) entries, scaled by 1/sqrt(m)."""
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    a = rng.standard_t(df, size=(n, m)).astype(np.float32)
    a *= np.float32(scale if scale is not None else 1.0 / np.sqrt(m))
    return torch.from_numpy(a)


def alpha_diffs(ours: dict[str, float], ref: dict[str, float]) -> tuple[int, float, str]:
    """(matched count, max |alpha diff|, worst name) over names present and finite in both."""
    import math

    worst, name, n = 0.0, "", 0
    for k, a in ours.items():
        b = ref.get(k)
        if b is None or not (math.isfinite(a) and math.isfinite(b)):
            continue
        n += 1
        d = abs(a - b)
        if d > worst:
            worst, name = d, k
    return n, worst, name


def ww_alphas(df) -> dict[str, float]:
    """WeightWatcher longname -> alpha (failed fits, alpha = -1, dropped)."""
    out = {}
    for _, r in df.iterrows():
        a = float(r["alpha"])
        if a > 0:
            out[str(r.get("longname") or r["name"])] = a
    return out


def blas_limit(n: int | None):
    """Context capping BLAS/OpenMP threads for both sides (None: library defaults)."""
    if not n:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=n)


def parse_and_run(ap, argv, run: Callable[[Any], int]) -> int:
    """Add ``--blas-threads`` to ``ap``, parse ``argv`` and call ``run(args)`` under that BLAS thread cap."""
    add_blas_arg(ap)
    args = ap.parse_args(argv)
    with blas_limit(args.blas_threads):
        return run(args)


def add_blas_arg(ap) -> None:
    ap.add_argument("--blas-threads", type=int, default=None,
                    help="cap BLAS/OpenMP threads for both sides (default: library defaults, i.e. one per core)")


def our_alphas(analysis) -> dict[str, float]:
    return {r["name"]: float(r["alpha"]) for r in analysis.rows if r["status"] == "success"}
