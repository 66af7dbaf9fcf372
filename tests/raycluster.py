"""One real Ray head node on 127.0.0.1 for the whole test session, shared by the Ray tests.

``ray start --head --block`` (2 CPUs, a small object store, un-niced workers) starts
on first use, this process joins it once, and both stop when the session ends
(``config.add_cleanup``). Staying joined keeps the workers, which import TensorFlow
once each, warm from one test module to the next. The cluster is stopped by
signalling its own ``ray start`` process (then its process group), never by
``ray stop``, which would stop every Ray cluster on the machine: another test
session's included, whose processes then abort once their GCS is gone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
from typing import Any

from sshd import free_port

# Keep every Ray address on the loopback interface (Ray otherwise swaps 127.0.0.1 for the
# host's outward address); read when Ray is imported, and inherited by the CLI children.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
# A loopback test cluster needs no token; explicit, since `ray start` turns token auth on by
# itself when an earlier local ray.init() left ~/.ray/auth_token behind.
os.environ["RAY_AUTH_MODE"] = "disabled"

RAY_CLI = [sys.executable, "-m", "ray.scripts.scripts"]
_ADDRESS: list[str] = []

__all__ = ["RAY_CLI", "free_port", "head_cluster", "running_tasks"]


def head_cluster(config: Any) -> str:
    """The session's head node address (``host:port``), started and joined on first use."""
    if _ADDRESS:
        return _ADDRESS[0]
    import ray

    port = free_port()
    temp = tempfile.mkdtemp(prefix="edgec-ray-", dir="/tmp")  # short: Ray's socket paths
    start = [
        *RAY_CLI,
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        "--num-cpus=2",
        "--num-gpus=0",
        "--object-store-memory=200000000",
        "--include-dashboard=false",
        "--disable-usage-stats",
        "--block",
        # As the local clusters edgec starts: un-niced workers on this shared machine.
        '--system-config={"worker_niceness": 0}',
        f"--temp-dir={temp}",
    ]
    head = subprocess.Popen(
        start,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: the cleanup's SIGKILL reaches only it
    )
    started = threading.Event()
    lines: list[str] = []

    def read() -> None:  # drain the pipe for the cluster's whole life, so it never blocks
        assert head.stdout is not None
        for line in head.stdout:
            lines.append(line)
            if "Ray runtime started" in line:
                started.set()
        started.set()  # the command ended: started or failed, the caller tells which

    threading.Thread(target=read, daemon=True).start()
    if not started.wait(180) or head.poll() is not None:
        head.kill()
        raise RuntimeError("ray start --head failed:\n" + "".join(lines[-20:]))
    address = f"127.0.0.1:{port}"

    def stop() -> None:
        ray.shutdown()
        head.send_signal(signal.SIGTERM)  # ray start --block stops its own processes
        with contextlib.suppress(subprocess.TimeoutExpired):
            head.wait(timeout=60)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)  # whatever of this cluster outlived it

    config.add_cleanup(stop)
    ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    _ADDRESS.append(address)
    return address


def running_tasks(name: str) -> list[str]:
    """Workers running ``name``: Ray titles such a worker ``ray::<function>``.

    Machine-wide: a worker's title replaces its command line, so nothing in it says
    which cluster it belongs to (another session's Ray tests would count too).
    """
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.startswith(f"ray::{name}")]
