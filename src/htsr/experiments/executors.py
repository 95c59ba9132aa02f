"""Executors: where the cells of a sweep (or the shards of an analysis) run.

Every executor has one method, ``map(fn, cells)``, yielding ``(cell, result_or_exception)`` as cells finish, in
any order; an exception raised by a cell is yielded, never raised, so one failed cell never kills a sweep.

* :class:`LocalExecutor` (the default): one cell after another in this process. Nothing to install.
* :class:`RayExecutor`: each cell is a Ray task (``pip install 'htsr[ray]'``). ``address=None`` starts a local
  Ray instance on this machine (``num_cpus`` of them); ``address="auto"`` or ``"ray://host:10001"`` joins a
  cluster. Before anything is submitted it checks that some node can satisfy the per-task resources (a request
  no node can meet would otherwise wait forever) and that every node runs the same htsr and Python version as the
  driver. A worker that dies (killed, out of memory) has its task retried ``max_retries`` times by Ray; an
  exception raised by the cell itself is not retried (it would fail again) and is yielded with its cell. Worker
  output streams to the driver (Ray's ``log_to_driver``).

Cell functions and their parameters must be picklable (module-level functions of plain parameters are), and files
a cell reads or writes must be reachable from every node (a shared filesystem) when running on a cluster.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from htsr.errors import ConfigError

log = logging.getLogger(__name__)

EXECUTORS = ("local", "ray")
RAY_EXTRA = "pip install 'htsr[ray]'"


class LocalExecutor:
    """Runs cells one after another in this process; an exception becomes that cell's result."""

    name = "local"

    def map(self, fn: Callable[..., Any], cells: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
        for cell in cells:
            try:
                yield cell, fn(**cell.params)
            except KeyboardInterrupt:
                raise
            except Exception as e:  # one failed cell never kills the sweep
                log.error("cell %s failed: %s", getattr(cell, "key", cell), e)
                yield cell, e

    def parallelism(self) -> int:
        """Cells that run at once."""
        return 1

    def close(self) -> None:
        """Nothing to release."""

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(f"the ray executor needs Ray, which is not installed: {RAY_EXTRA}") from None
    return ray


def _worker_info() -> dict[str, str]:
    """What a node runs: its htsr and Python versions (compared with the driver's)."""
    import platform

    from htsr._version import __version__

    return {"htsr": __version__, "python": f"{sys.version_info[0]}.{sys.version_info[1]}",
            "host": platform.node()}


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """A TCP connection to ``HOST:PORT`` (or ``ray://HOST:PORT``) within ``timeout`` seconds, else
    :class:`ConfigError` (Ray itself keeps retrying an unreachable cluster for minutes)."""
    import socket

    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(f"Ray address {address!r} is not HOST:PORT, ray://HOST:PORT or 'auto'")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as e:
        raise ConfigError(f"cannot reach the Ray cluster at {address}: {e.strerror or e}") from None


def _call(fn: Callable[..., Any], params: Mapping[str, Any]) -> Any:
    return fn(**params)


class RayExecutor:
    """Each cell a Ray task (see the module docstring).

    Args:
        address: ``None`` starts a local Ray instance; ``"auto"`` / ``"ray://HOST:PORT"`` / ``"HOST:PORT"``
            connects to a running cluster (an unreachable one is a :class:`ConfigError`).
        num_cpus / num_gpus: resources of each task (fractions allowed, as in Ray).
        max_retries: how often Ray re-runs a task whose worker died.
        local_cpus: CPUs of a local instance (default: all of this machine's).
        max_in_flight: tasks submitted at a time (default: unlimited); bounds the driver's memory on huge sweeps.
    """

    name = "ray"

    def __init__(self, address: str | None = None, *, num_cpus: float = 1, num_gpus: float = 0,
                 max_retries: int = 3, local_cpus: int | None = None, max_in_flight: int | None = None,
                 check_versions: bool = True) -> None:
        if not num_cpus >= 0 or not num_gpus >= 0 or (num_cpus == 0 and num_gpus == 0):
            raise ConfigError(f"each Ray task needs some resource: num_cpus={num_cpus}, num_gpus={num_gpus}")
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigError(f"max_retries must be an integer >= 0, got {max_retries!r}")
        if max_in_flight is not None and max_in_flight < 1:
            raise ConfigError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self.ray = _import_ray()
        self.address, self.num_cpus, self.num_gpus = address, num_cpus, num_gpus
        self.max_retries, self.max_in_flight = max_retries, max_in_flight
        self._started = False
        if not self.ray.is_initialized():
            kw: dict[str, Any] = {"include_dashboard": False, "configure_logging": False, "log_to_driver": True}
            if address is None:
                kw["num_cpus"] = local_cpus
            elif address != "auto":
                check_reachable(address)
            try:
                self.ray.init(address=address, **kw)
            except (ConnectionError, TimeoutError, RuntimeError, ValueError) as e:
                raise ConfigError(f"cannot start or reach a Ray cluster at {address or 'a new local instance'}: "
                                  f"{e.__class__.__name__}: {e}") from None
            self._started = True
        self._check_resources()
        if check_versions:
            self._check_versions()
        self._remote = self.ray.remote(_call)

    # ------------------------------------------------------------------ checks before any work
    def _nodes(self) -> list[dict[str, Any]]:
        return [n for n in self.ray.nodes() if n.get("Alive")]

    def _check_resources(self) -> None:
        nodes = self._nodes()
        need = {"CPU": self.num_cpus, "GPU": self.num_gpus}
        if any(all(n.get("Resources", {}).get(k, 0) >= v for k, v in need.items() if v) for n in nodes):
            return
        offer = "; ".join(f"{n.get('NodeManagerAddress', '?')}: {n.get('Resources', {}).get('CPU', 0):g} CPU, "
                          f"{n.get('Resources', {}).get('GPU', 0):g} GPU" for n in nodes) or "no alive node"
        raise ConfigError(f"no node of the Ray cluster can run a task needing {self.num_cpus:g} CPU and "
                          f"{self.num_gpus:g} GPU (nodes: {offer}); lower --ray-cpus/--ray-gpus or add nodes")

    def _check_versions(self) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        mine = _worker_info()
        probe = self.ray.remote(_worker_info)
        refs = [probe.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote() for n in self._nodes()]
        bad = [i for i in self.ray.get(refs, timeout=120)
               if (i["htsr"], i["python"]) != (mine["htsr"], mine["python"])]
        if bad:
            raise ConfigError(f"Ray nodes run other versions than this driver (htsr {mine['htsr']}, Python "
                              f"{mine['python']}): " + "; ".join(f"{i['host']}: htsr {i['htsr']}, Python "
                                                                 f"{i['python']}" for i in bad)
                              + ". Install the same htsr on every node.")

    # ------------------------------------------------------------------ running
    def map(self, fn: Callable[..., Any], cells: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
        ray = self.ray
        opts = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus, "max_retries": self.max_retries,
                "retry_exceptions": False}
        fn_ref = ray.put(fn)
        todo = list(cells)
        pending: dict[Any, Any] = {}
        submitted = 0
        try:
            while submitted < len(todo) or pending:
                while submitted < len(todo) and (self.max_in_flight is None or len(pending) < self.max_in_flight):
                    cell = todo[submitted]
                    pending[self._remote.options(**opts).remote(fn_ref, dict(cell.params))] = cell
                    submitted += 1
                done, _ = ray.wait(list(pending), num_returns=1)
                ref = done[0]
                cell = pending.pop(ref)
                try:
                    yield cell, ray.get(ref)
                except ray.exceptions.RayTaskError as e:
                    cause = e.as_instanceof_cause() if hasattr(e, "as_instanceof_cause") else e
                    log.error("cell %s failed: %s", getattr(cell, "key", cell), cause)
                    yield cell, cause
                except (ray.exceptions.WorkerCrashedError, ray.exceptions.RayError) as e:
                    log.error("cell %s lost its worker after %d retries: %s", getattr(cell, "key", cell),
                              self.max_retries, e)
                    yield cell, e
        finally:
            for ref in pending:  # interrupted: do not leave tasks running behind the driver
                ray.cancel(ref, force=True)

    def parallelism(self) -> int:
        """Tasks the cluster runs at once (its CPUs / CPUs per task, or GPUs / GPUs per task)."""
        res = self.ray.cluster_resources()
        by = [res.get("CPU", 0) / self.num_cpus if self.num_cpus else math.inf,
              res.get("GPU", 0) / self.num_gpus if self.num_gpus else math.inf]
        return max(1, int(min(by)))

    def close(self) -> None:
        """Shut down a local Ray instance this executor started (a cluster it joined is left running)."""
        if self._started and self.ray.is_initialized():
            self.ray.shutdown()
            self._started = False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_executor(name: str = "local", **options: Any) -> LocalExecutor | RayExecutor:
    """``local`` (the default) or ``ray`` (options: address, num_cpus, num_gpus, max_retries, local_cpus)."""
    if name == "local":
        if any(v is not None for v in options.values()):
            raise ConfigError(f"the local executor takes no options (got {', '.join(sorted(options))}); "
                              "they are for --executor ray")
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(**{k: v for k, v in options.items() if v is not None})
    raise ConfigError(f"unknown executor {name!r}; expected one of {', '.join(EXECUTORS)}")
