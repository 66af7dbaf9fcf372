"""The harness protocol, host side: the harness's command line, running it, reading its answer.

The harness (``benchmarks/harness/harness.py``) is run by the device helper's
``run`` operation, which first receives and verifies the files, so a
benchmark of a deployed model is one command. On stderr the harness streams
``edgec-harness: ...`` lines (its pid first, then progress, then ``error:``
lines); on stdout it prints one JSON document. ``run_harness`` turns every way
this can go wrong (not deployed, no runtime, a timeout, a crash, bad output)
into ``NotReady`` (deploy first) or one ``DeviceError`` line.
"""

from __future__ import annotations

import contextlib
import json
import posixpath
from collections.abc import Callable
from typing import Any

from edgec.deploy.devices import Device
from edgec.deploy.options import BenchOptions, Log, quiet
from edgec.deploy.provision import last_line
from edgec.deploy.transport import (
    NOT_FOUND,
    Plan,
    Transfer,
    Transport,
    Upload,
    device_op,
    not_ready,
    run_verified_argv,
    transfer_failure,
)
from edgec.errors import DeviceError

# Grace on top of the harness's own watchdog: the host kills only a harness
# that could not even start its watchdog (a hung import, a stuck device).
HOST_GRACE_SECS = 10.0


def crash_tail(stderr: str, n: int = 3) -> str:
    """What a crashed harness last said, on one line: its faulthandler report when
    there is one (the fatal error and the innermost frames), else its last lines."""
    lines = [
        ln.strip()
        for ln in stderr.splitlines()
        if ln.strip() and not ln.startswith("edgec-harness:") and not ln.startswith("INFO:")
    ]
    fatal = next((i for i, ln in enumerate(lines) if ln.startswith("Fatal Python error")), None)
    picked = lines[fatal : fatal + n + 1] if fatal is not None else lines[-n:]
    return " | ".join(ln for ln in picked if not ln.startswith("Current thread"))[:500]


def harness_args(
    uploads: list[Upload],
    options: BenchOptions,
    threads: int,
    runtime: str,
    check: tuple[int, int] | None = None,
) -> list[str]:
    """The harness command line on the device (after the interpreter);
    ``check`` = (count, seed) of the outputs check's inputs."""
    args = [
        uploads[1].remote,
        uploads[0].remote,
        "--runtime",
        runtime,
        "--threads",
        str(threads),
        "--warmup-runs",
        str(options.warmup),
        "--runs",
        str(options.runs),
        "--min-secs",
        f"{options.min_secs:g}",
        "--max-secs",
        f"{options.max_secs:g}",
        "--seed",
        str(options.seed),
        "--timeout",
        f"{options.timeout:g}",
    ]
    if runtime == "auto":
        # Beside the deployed model (its folder is per sha256): a warm bench
        # reuses the runtimes' load-and-run verdicts instead of a child each.
        folder = posixpath.dirname(uploads[0].remote) or "."
        args += ["--load-check-cache", posixpath.join(folder, "runtimes.json")]
    if len(uploads) > 2:
        args += ["--input", uploads[2].remote]
    if check is not None:
        args += ["--check-outputs", str(check[0]), "--check-seed", str(check[1])]
    return args


class NotReady(Exception):
    """The fast path could not start the harness: deploy and check first."""

    def __init__(self, reason: str, state: Plan | None = None) -> None:
        super().__init__(reason)
        self.state = state  # the device's plan answer, when it sent one


# Harness exit code for "no usable runtime / numpy": the device needs setup.
HARNESS_NO_RUNTIME = 4


def run_harness(
    transport: Transport,
    device: Device,
    python: str,
    args: list[str],
    options: BenchOptions,
    *,
    transfer: Transfer,
    log: Log = quiet,
    announce: str = "",
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Send ``transfer``'s files, verify the deployed bytes and run the harness: one command.

    Returns the harness's JSON document. Raises NotReady when the files are not
    deployed (or the interpreter or runtime is missing), DeviceError on a crash,
    a timeout or bad output.
    """
    pid: list[str] = []
    errors: list[str] = []
    died: list[str] = []
    running: list[str] = []  # the runtime the harness announced

    def on_line(line: str) -> None:
        text = line.removeprefix("edgec-harness:").strip()
        if text.startswith("pid ") and not pid:
            pid.append(text[4:].strip())
            if announce:
                log(announce)
            return
        if text.startswith("died of ") and line.startswith("edgec-harness:"):
            died.append(text[len("died of ") :])
            return
        if text.startswith("error: "):
            errors.append(text[len("error: ") :])
        if text.startswith("runtime ") and " skipped" not in text:
            running.append(text[len("runtime ") :])
        if line.startswith("edgec-harness:"):
            log(text)

    argv = run_verified_argv(python, args, transfer)
    res = transport.run(
        argv,
        timeout=options.timeout + HOST_GRACE_SECS,
        on_stderr_line=on_line,
        stdin=transfer.files,
        progress=progress,
    )
    where = f"device {device.name} ({transport.label})"
    if res.timed_out:
        if pid:
            with contextlib.suppress(DeviceError):  # the harness's own watchdog still fires
                device_op(transport, python, "kill", pid[0], timeout=15)
        raise DeviceError(
            f"{where}: the harness did not finish within {options.timeout:g} s "
            "and was killed; raise --timeout or lower --runs"
        )
    answer = not_ready(res.stdout) if not pid else None
    if answer is not None:
        if answer.get("commit"):
            raise transfer_failure(transport, answer)
        got = answer.get("plan")
        state = Plan(probe=got["probe"], states=got["files"]) if isinstance(got, dict) else None
        raise NotReady(answer.get("reason", "not deployed"), state)
    if res.exit_code == NOT_FOUND and not pid:
        raise NotReady(f"python {python!r} not found")
    if res.exit_code == HARNESS_NO_RUNTIME:
        raise NotReady(errors[-1] if errors else "no runtime")
    signal_name = died[-1] if died else res.signal
    if res.exit_code != 0:
        watchdog = signal_name == "SIGALRM" or (
            res.seconds >= options.timeout - 0.5
            and (res.exit_code in (-1, 128 + 14, -14) or signal_name in ("SIGKILL", "unknown"))
        )
        if watchdog:
            raise DeviceError(
                f"{where}: the harness did not finish within {options.timeout:g} s "
                "and was killed; raise --timeout or lower --runs"
            )
        if died or res.signal or res.exit_code < 0 or res.exit_code > 128:
            sig = signal_name if signal_name and signal_name != "unknown" else "a signal"
            tail = crash_tail(res.stderr)
            raise DeviceError(
                f"{where}: the harness crashed (killed by {sig}, exit {res.exit_code})"
                + (f" in runtime {running[-1]}" if running else "")
                + "; nothing was recorded"
                + (f"; its last stderr lines: {tail}" if tail else "")
            )
        if errors:
            raise DeviceError(f"{where}: the harness failed: {errors[-1]}")
        raise DeviceError(
            f"{where}: the harness failed (exit {res.exit_code}): "
            f"{last_line(res.stderr, res.exit_code)}"
        )
    text = res.stdout.decode(errors="replace")
    # A chatty login shell (an echo in ~/.bashrc) may print before the document.
    text = text[text.find("{") :] if "{" in text else text
    try:
        doc = json.loads(text)
        if not isinstance(doc, dict) or "steady" not in doc:
            raise ValueError("no steady-state section")
    except ValueError as exc:
        raise DeviceError(
            f"{where}: the harness printed no valid JSON document ({exc}); nothing was recorded"
        ) from exc
    return doc
