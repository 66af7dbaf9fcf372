"""The Ray executor: the search's candidates and batch builds as Ray tasks on a cluster.

The ``distributed`` extra.

``RayExecutor`` satisfies ``edgec.executor.Executor``. With no address it
starts a local cluster on this machine (``ray.init(address="local")``, bound
to 127.0.0.1); with one (``host:port``, ``ray://host:port`` or ``auto``) it
joins that cluster, whose nodes need the same edgec and Ray installed.

What travels: ``shared`` (the model's ``.keras`` bytes, the data arrays, the
profile and convert options) is ``ray.put`` into the object store once and
every task gets it by reference; each job (a recipe) is a task argument; the
result (measurement and ``.tflite`` bytes) comes back through the store. A
batch build ``share``s each model and data set once and its jobs carry the
references, so a worker fetches only its own (``edgec.executor.fetch``). No
shared files.

Faults: a job that raises becomes a ``JobFailure`` in the worker, with the
same one-line reason as the local executor gives. Tasks are never retried
(``max_retries=0``), so a worker that dies mid-candidate fails that candidate
only, as a ``JobFailure`` saying so. Ctrl-C (or a caller that stops iterating)
force-cancels every outstanding task before the interrupt goes on. An address
that cannot be reached is a ``ClusterError`` (exit 6) after a short TCP probe,
instead of Ray's two minutes of retries.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from edgec.errors import ClusterError, UsageError
from edgec.executor import JobFailure, Resources, failure

INSTALL_HINT = "pip install 'edgec[distributed]'"
PROBE_SECONDS = 5.0
# Ray swaps 127.0.0.1 for the host's outward address unless multi-node clusters are off
# (ray_constants.ENABLE_RAY_CLUSTER, read when Ray is imported); a cluster of this machine
# alone needs no other node, so it stays on the loopback interface.
LOOPBACK_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def import_ray(*, loopback: bool = False) -> Any:
    """Ray, or a one-line UsageError saying how to install it."""
    if loopback and "ray" not in sys.modules:
        os.environ.setdefault(LOOPBACK_ONLY, "0")
    try:
        import ray
    except ImportError:
        raise UsageError(
            f"--executor ray needs Ray, which is not installed; install it with: {INSTALL_HINT}"
        ) from None
    return ray


def preflight(address: str | None) -> None:
    """What can fail before any work: Ray missing, or the cluster's address not answering."""
    import_ray(loopback=not address)
    if address and address != "auto":
        probe(address)


def _call(fn: Callable[[Any, Any], Any], shared: Any, job: Any) -> Any:
    """Runs in the worker: the job's exception becomes its row, as with the local executor."""
    try:
        return fn(shared, job)
    except Exception as exc:
        return failure(exc)


def probe(address: str, timeout: float = PROBE_SECONDS) -> None:
    """Fail fast, in one line, when ``host:port`` does not accept a TCP connection."""
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise UsageError(f"--ray-address {address!r}: expected HOST:PORT, ray://HOST:PORT or auto")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise ClusterError(
            f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}; "
            "check the address (`ray status` on the head node) or drop --ray-address "
            "to start a local cluster"
        ) from None


class RayExecutor:
    """Jobs as Ray tasks; ``close`` shuts down only a cluster this executor started."""

    name = "ray"

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None) -> None:
        ray = import_ray(loopback=not address)
        self._ray = ray
        self._owns = False
        self._shared: tuple[Any, Any] | None = None  # (the object, its ObjectRef)
        self.address = address
        if ray.is_initialized():
            return
        options: dict[str, Any] = {
            # Candidates' failures come back as values; workers' TF chatter stays in Ray's logs.
            "log_to_driver": False,
            "logging_level": logging.ERROR,
        }
        if address and address != "auto":
            probe(address)
        if not address:
            # A cluster of this machine alone: keep it on the loopback interface.
            options.update(
                address="local",
                _node_ip_address="127.0.0.1",
                num_cpus=num_cpus,
                include_dashboard=False,
                # Ray nices its workers to 15 to keep its own daemons responsive; on a
                # machine shared with other work that starves the candidates instead.
                _system_config={"worker_niceness": 0},
            )
        else:
            options["address"] = address
        try:
            ray.init(**options)
        except ConnectionError as exc:
            raise ClusterError(
                f"cannot join the Ray cluster at {address}: {_first_line(exc)}"
            ) from None
        self._owns = True

    def resources(self) -> dict[str, float]:
        return dict(self._ray.cluster_resources())

    def share(self, value: Any) -> Any:
        """``value`` in the object store, once; a job's ``edgec.executor.fetch`` reads it."""
        return self._ray.put(value)

    def _put_once(self, shared: Any) -> Any:
        # The search calls map once per wave with the same shared part: put it once.
        if self._shared is None or self._shared[0] is not shared:
            self._shared = (shared, self._ray.put(shared))
        return self._shared[1]

    def map(
        self,
        fn: Callable[[Any, Any], Any],
        shared: Any,
        jobs: Sequence[Any],
        *,
        resources: Resources | None = None,
    ) -> Iterator[tuple[int, Any]]:
        ray = self._ray
        want = resources or Resources()
        num_gpus = want.num_gpus
        if not num_gpus and self.resources().get("GPU", 0) >= 1:
            num_gpus = 1.0  # the cluster has GPUs the driver cannot see: let each candidate use one
        task = ray.remote(_call).options(
            num_cpus=want.num_cpus, num_gpus=num_gpus, max_retries=0, retry_exceptions=False
        )
        ref = self._put_once(shared)
        index = {task.remote(fn, ref, job): i for i, job in enumerate(jobs)}
        pending = list(index)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for finished in done:
                    yield index[finished], self._outcome(finished)
        finally:
            # Ctrl-C, an error, or a caller that stopped early: nothing may keep running.
            for left in pending:
                ray.cancel(left, force=True)

    def _outcome(self, ref: Any) -> Any:
        ex = self._ray.exceptions
        try:
            return self._ray.get(ref)
        except (ex.WorkerCrashedError, ex.NodeDiedError, ex.OutOfMemoryError) as exc:
            return JobFailure(reason=f"worker died while running it ({type(exc).__name__})")
        except ex.TaskCancelledError:
            return JobFailure(reason="cancelled")
        except ex.RayError as exc:  # e.g. the job could not be unpickled on the worker
            return JobFailure(reason=f"{type(exc).__name__}: {_first_line(exc)}")

    def close(self) -> None:
        self._shared = None
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()
            self._owns = False


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
