"""The transport protocol (upload, run, download) and the device-side file operations.

Deploy and bench talk to a device only through ``Transport``: ``run`` an
argument vector with a timeout, feeding files to its stdin and streaming its
stderr lines back; ``upload`` and ``download`` copy one file (SFTP over SSH).
``SSHTransport`` (paramiko) and ``LocalTransport`` (a child process on this
machine) both satisfy it, so the deploy and bench code has one path for both.
Each transport owns its connection options: ``connect`` hands the device and
the ``ConnectOptions`` to the transport class for the device's kind
(``open``), and what a caller may need to know about a connection (a host key
just recorded, an emulated machine) is part of the protocol, never probed for
with ``getattr``. A new transport is one class with ``open`` and the protocol's
methods, and one line in ``_OPENERS``.

Remote paths are POSIX paths, relative ones being relative to the remote home
(or to the local device's work folder). Every remote command is an argument
vector, never a shell string: the SSH transport quotes each argument with
``shlex.quote``, so a path with spaces or ``;$()`` is a path, not a command.

The device-side operations (probe, plan, verify-and-rename, kill) are one
small Python program, ``DEVICE_OPS``, run with the device's own Python, so
they work wherever the harness can run: no ``sha256sum`` or GNU tools needed.

Publishing files is: ``plan`` (one command: probe the device, make the
folders, hash what is already there), then one command that receives what
differs on its stdin under temporary names, verifies every sha256, renames the
files into place and, for a benchmark, runs the harness
(``run_verified_argv``, which names the signal if that program dies of one).
So a benchmark of a deployed model is one command, and
of a new one two: each SSH command starts the device user's login shell, which
can cost half a second, and the SFTP subsystem would start one more.
A dropped connection leaves at most a ``.upload-*`` temporary, which the next
deploy removes; never a file at the final name with the wrong bytes.
"""

from __future__ import annotations

import json
import posixpath
import secrets
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from edgec.deploy.devices import Device, DeviceKind
from edgec.errors import DeviceError
from edgec.files import sha256_file

LineSink = Callable[[str], None]
ProgressSink = Callable[[int, int], None]

# Exit status a POSIX shell gives a command it cannot find.
NOT_FOUND = 127


@dataclass(frozen=True, kw_only=True)
class RunResult:
    exit_code: int
    stdout: bytes
    stderr: str
    seconds: float
    timed_out: bool = False
    signal: str | None = None  # set when the remote process died of a signal


@dataclass(frozen=True, kw_only=True)
class ConnectOptions:
    """How to open a connection; each transport reads the options that concern it."""

    accept_new_host_key: bool = False  # SSH: record an unknown host key
    connect_timeout: float = 10.0  # SSH: TCP connect, banner and authentication
    command_timeout: float = 60.0  # device helper commands (probe, verify, rename)


@runtime_checkable
class Transport(Protocol):
    """What deploy and bench need from a device connection."""

    label: str  # for messages: "local", "pi@10.0.0.5:22"
    # Set when the transport knows the device is an emulator ("qemu-aarch64"):
    # its timings are an emulator's, never judged against a latency budget. Such
    # a transport also sets $EDGEC_EMULATED (the same name) for the programs it
    # runs, so the harness's own record says so too.
    emulated: str | None

    @classmethod
    def open(cls, device: Device, options: ConnectOptions) -> Transport:
        """Connect to ``device``. Raises DeviceError with one line on failure."""

    def notices(self) -> list[str]:
        """What the user should be told about this connection (a host key just recorded)."""

    def upload(self, local: Path, remote: str, *, progress: ProgressSink | None = None) -> None:
        """Copy ``local`` to ``remote`` (the folder exists). Raises DeviceError."""

    def download(self, remote: str, local: Path) -> None:
        """Copy ``remote`` to ``local``. Raises DeviceError."""

    def run(
        self,
        argv: list[str],
        *,
        timeout: float,
        on_stderr_line: LineSink | None = None,
        stdin: Sequence[Path] = (),
        progress: ProgressSink | None = None,
    ) -> RunResult:
        """Run ``argv`` on the device, feeding it the ``stdin`` files in order.

        A timeout kills the command and sets ``timed_out``; a connection lost
        while sending raises DeviceError.
        """

    def close(self) -> None: ...


def connect(device: Device, options: ConnectOptions | None = None) -> Transport:
    """Open the device's transport. Raises DeviceError with one line on failure."""
    opener = _OPENERS.get(device.kind)
    if opener is None:
        raise DeviceError(f"device {device.name}: no transport for devices of kind {device.kind}")
    return opener().open(device, options or ConnectOptions())


def _local() -> type[Transport]:
    from edgec.deploy.local import LocalTransport

    return LocalTransport


def _ssh() -> type[Transport]:
    # paramiko is imported only when an SSH device is used.
    from edgec.deploy.ssh import SSHTransport

    return SSHTransport


def _emulated() -> type[Transport]:
    from edgec.deploy.emulate import EmulatedTransport

    return EmulatedTransport


_OPENERS: dict[DeviceKind, Callable[[], type[Transport]]] = {
    DeviceKind.LOCAL: _local,
    DeviceKind.SSH: _ssh,
    DeviceKind.EMULATED: _emulated,
}


def quote_command(argv: list[str]) -> str:
    """One POSIX shell command line in which every argument is quoted (never injected)."""
    return " ".join(shlex.quote(str(a)) for a in argv)


# The device-side helper. Kept to the standard library and to Python 3.8
# syntax, since it runs on whatever Python the device has.
DEVICE_OPS = r"""
import hashlib, json, os, sys, time
def sha(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            b = fh.read(1 << 20)
            if not b:
                break
            h.update(b)
    return h.hexdigest()
def probe():
    import importlib.util, platform
    def ver(mod, dist):
        try:
            if importlib.util.find_spec(mod) is None:
                return None
        except Exception:
            return None
        try:
            from importlib.metadata import version
            return version(dist)
        except Exception:
            return "unknown"
    return {"python": platform.python_version(), "executable": sys.executable,
            "machine": platform.machine(), "system": platform.system(),
            "cpu_count": os.cpu_count(), "numpy": ver("numpy", "numpy"),
            "venv": sys.prefix != getattr(sys, "base_prefix", sys.prefix),
            "runtimes": {"litert": ver("ai_edge_litert", "ai-edge-litert"),
                         "tflite_runtime": ver("tflite_runtime", "tflite-runtime"),
                         "tflm": ver("tflite_micro", "tflite-micro")}}
def plan(pairs):
    # probe, then for each (folder, final): make the folder, drop stale
    # temporaries, report free space and the sha256 of what is already there
    files = []
    now = time.time()
    for folder, final in json.loads(pairs):
        os.makedirs(folder, exist_ok=True)
        for name in os.listdir(folder):
            p = os.path.join(folder, name)
            # a temporary nobody has written to for a minute is from a dropped upload
            if name.startswith(".upload-") and now - os.path.getmtime(p) > 60:
                os.remove(p)
        st = os.statvfs(folder)
        files.append({"free_bytes": st.f_bavail * st.f_frsize,
                      "sha256": sha(final) if os.path.isfile(final) else None})
    return {"probe": probe(), "files": files}
def commit(triples):
    out = []
    for tmp, final, want in json.loads(triples):
        if not os.path.isfile(tmp):
            out.append({"ok": False, "reason": "the uploaded file is missing"})
            continue
        got = sha(tmp)
        if got != want:
            os.remove(tmp)
            out.append({"ok": False, "reason": "sha256 mismatch: got %s, want %s" % (got, want)})
            continue
        os.replace(tmp, final)
        try:
            fd = os.open(os.path.dirname(final) or ".", os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            pass
        out.append({"ok": True})
    return out
def receive(spec):
    # files arrive back to back on stdin: [[tmp, size], ...]; all or none are kept
    src = sys.stdin.buffer
    done = []
    def drop():
        for p in done:
            try:
                os.remove(p)
            except OSError:
                pass
    for tmp, size in json.loads(spec):
        done.append(tmp)
        left = size
        try:
            with open(tmp, "wb") as out:
                while left:
                    b = src.read(min(left, 1 << 20))
                    if not b:
                        break
                    out.write(b)
                    left -= len(b)
                out.flush()
                os.fsync(out.fileno())
        except OSError as e:
            drop()
            return {"ready": False, "reason": "%s: %s" % (tmp, e.strerror or e),
                    "enospc": e.errno == 28, "commit": True}
        if left:
            drop()
            return {"ready": False, "reason": "the upload of %s was cut short" % tmp,
                    "commit": True}
    return None
def run(spec, commits, checks, *argv):
    failed = receive(spec)
    if failed:
        return failed
    for done in commit(commits):
        if not done["ok"]:
            return {"ready": False, "reason": done["reason"], "commit": True}
    checks = json.loads(checks)
    for final, want in checks:
        if not os.path.isfile(final) or sha(final) != want:
            # not deployed: answer what a plan would, saving the host a round trip
            pairs = [[os.path.dirname(f) or ".", f] for f, _ in checks]
            return {"ready": False, "reason": "not deployed: " + final,
                    "plan": plan(json.dumps(pairs))}
    if not argv:
        return {"ready": True}
    sys.stdout.flush()
    sys.stderr.flush()
    # The program runs as a child, not by exec: a death by a signal is then
    # named here (SSH drops the exit signal) and its exit code is 128 + n.
    import signal, subprocess
    child = subprocess.Popen([sys.executable] + list(argv))
    def forward(signum, frame):
        child.kill()
    for s in (signal.SIGHUP, signal.SIGTERM):
        signal.signal(s, forward)
    code = child.wait()
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "signal %d" % -code
        sys.stderr.write("edgec-harness: died of %s\n" % name)
        sys.stderr.flush()
        sys.exit(128 - code)
    sys.exit(code)
def kill(pid):
    import signal
    try:
        os.kill(int(pid), signal.SIGKILL)
        return {"killed": True}
    except OSError as e:
        return {"killed": False, "reason": str(e)}
op = sys.argv[1]
args = sys.argv[2:]
fn = {"probe": probe, "plan": plan, "commit": commit, "kill": kill, "run": run}[op]
print("EDGEC-OPS " + json.dumps(fn(*args)))
"""


def device_op(
    transport: Transport, python: str, op: str, *args: str, timeout: float = 60.0
) -> dict[str, Any]:
    """Run one DEVICE_OPS operation with the device's Python and return its JSON answer."""
    res = transport.run([python, "-c", DEVICE_OPS, op, *args], timeout=timeout)
    if res.timed_out:
        raise DeviceError(
            f"{transport.label}: the device helper {op!r} timed out after {timeout:g} s"
        )
    if res.exit_code == NOT_FOUND:
        raise DeviceError(
            f"{transport.label}: python {python!r} not found on the device; install Python 3 "
            "or set 'python' for this device, then run `edgec device setup`"
        )
    for line in res.stdout.decode(errors="replace").splitlines():
        if line.startswith("EDGEC-OPS "):
            return json.loads(line[len("EDGEC-OPS ") :])
    last = [ln for ln in res.stderr.splitlines() if ln.strip()]
    reason = last[-1] if last else f"exit code {res.exit_code}"
    raise DeviceError(f"{transport.label}: the device helper {op!r} failed: {reason}")


@dataclass(frozen=True, kw_only=True)
class Upload:
    """A local file to publish at a remote path, with its sha256."""

    local: Path
    remote: str
    sha256: str

    @classmethod
    def of(cls, local: Path, remote: str, sha256: str | None = None) -> Upload:
        return cls(local=local, remote=remote, sha256=sha256 or sha256_file(local))


@dataclass(frozen=True, kw_only=True)
class Published:
    remote: str
    sha256: str
    bytes: int
    uploaded: bool  # False: the same bytes were already there


@dataclass(frozen=True, kw_only=True)
class Plan:
    """The device's answer before publishing: its probe and the state of each target path."""

    probe: dict[str, Any]
    states: list[dict[str, Any]]


def plan(
    transport: Transport, python: str, uploads: list[Upload], *, timeout: float = 60.0
) -> Plan:
    """One round trip: probe the device, make the folders, report what is already there."""
    pairs = [[posixpath.dirname(u.remote) or ".", u.remote] for u in uploads]
    answer = device_op(transport, python, "plan", json.dumps(pairs), timeout=timeout)
    return Plan(probe=answer["probe"], states=answer["files"])


@dataclass(frozen=True, kw_only=True)
class Transfer:
    """What one publishing command sends: the files that differ, and what it checks."""

    published: list[Published]  # every upload, as it is once the command succeeds
    files: list[Path]  # streamed on stdin, in this order
    receive: list[list[Any]]  # [tmp, size] per streamed file
    commits: list[list[str]]  # [tmp, final, sha256] per streamed file
    checks: list[list[str]]  # [final, sha256] for every upload

    @classmethod
    def verify_only(cls, uploads: list[Upload]) -> Transfer:
        """The fast path: send nothing, only check that every upload is in place."""
        pubs = [
            Published(
                remote=u.remote, sha256=u.sha256, bytes=u.local.stat().st_size, uploaded=False
            )
            for u in uploads
        ]
        checks = [[u.remote, u.sha256] for u in uploads]
        return cls(published=pubs, files=[], receive=[], commits=[], checks=checks)


def transfer_for(transport: Transport, uploads: list[Upload], state: Plan) -> Transfer:
    """The files that differ from the device's copies (same sha256: not sent again).

    Raises DeviceError, before sending anything, when the device lacks the space.
    """
    pubs: list[Published] = []
    files: list[Path] = []
    receive: list[list[Any]] = []
    commits: list[list[str]] = []
    for up, st in zip(uploads, state.states, strict=True):
        size = up.local.stat().st_size
        same = st.get("sha256") == up.sha256
        pubs.append(Published(remote=up.remote, sha256=up.sha256, bytes=size, uploaded=not same))
        if same:
            continue
        folder = posixpath.dirname(up.remote) or "."
        # A small margin: file system blocks and the directory entry need a little more.
        if int(st["free_bytes"]) < size + 64 * 1024:
            raise DeviceError(
                f"{transport.label}: not enough space in {folder!r} on the device: "
                f"{up.local.name} needs {size} bytes, {st['free_bytes']} free (ENOSPC); "
                "free some space"
            )
        name = f".upload-{secrets.token_hex(6)}-{posixpath.basename(up.remote)}"
        tmp = posixpath.join(folder, name)
        files.append(up.local)
        receive.append([tmp, size])
        commits.append([tmp, up.remote, up.sha256])
    checks = [[u.remote, u.sha256] for u in uploads]
    return Transfer(published=pubs, files=files, receive=receive, commits=commits, checks=checks)


def run_verified_argv(python: str, argv: list[str], transfer: Transfer) -> list[str]:
    """One command that receives ``transfer``'s files on stdin, verifies and renames
    them, checks that every upload is in place, then runs ``python
    argv...`` (or answers ``{"ready": true}`` when ``argv`` is empty). When anything
    is missing it prints ``EDGEC-OPS {"ready": false, ...}`` instead."""
    return [
        python,
        "-c",
        DEVICE_OPS,
        "run",
        json.dumps(transfer.receive),
        json.dumps(transfer.commits),
        json.dumps(transfer.checks),
        *argv,
    ]


def not_ready(stdout: bytes) -> dict[str, Any] | None:
    """The helper's answer when ``run_verified_argv`` did not start the program.

    When files were missing it carries ``plan``: the same answer as ``plan``
    (probe and file states) for the checked paths, in the same round trip."""
    for line in stdout.decode(errors="replace").splitlines():
        if line.startswith("EDGEC-OPS "):
            answer = json.loads(line[len("EDGEC-OPS ") :])
            if isinstance(answer, dict) and answer.get("ready") is False:
                return answer
    return None


def transfer_failure(transport: Transport, answer: dict[str, Any]) -> DeviceError:
    """The one-line error for a transfer the device refused or could not store."""
    if answer.get("enospc"):
        return DeviceError(
            f"{transport.label}: the device disk filled up while receiving the upload "
            f"({answer.get('reason')}; ENOSPC); nothing was deployed"
        )
    return DeviceError(
        f"{transport.label}: the upload failed on the device: {answer.get('reason')}; "
        "nothing was deployed, run again"
    )


def publish(
    transport: Transport,
    python: str,
    uploads: list[Upload],
    state: Plan,
    *,
    progress: ProgressSink | None = None,
    timeout: float = 600.0,
) -> list[Published]:
    """Send what differs, verify and rename on the device: one command (none if all there)."""
    transfer = transfer_for(transport, uploads, state)
    if not transfer.files:
        return transfer.published
    res = transport.run(
        run_verified_argv(python, [], transfer),
        timeout=timeout,
        stdin=transfer.files,
        progress=progress,
    )
    if res.timed_out:
        raise DeviceError(f"{transport.label}: the upload did not finish within {timeout:g} s")
    answer = not_ready(res.stdout)
    if answer is not None:
        raise transfer_failure(transport, answer)
    if res.exit_code != 0 or b'"ready": true' not in res.stdout:
        last = [ln for ln in res.stderr.splitlines() if ln.strip()]
        reason = last[-1] if last else f"exit code {res.exit_code}"
        raise DeviceError(
            f"{transport.label}: the upload failed on the device: {reason}; nothing was deployed"
        )
    return transfer.published


def put_verified(
    transport: Transport,
    python: str,
    local: Path,
    remote: str,
    *,
    sha256: str | None = None,
    progress: ProgressSink | None = None,
) -> Published:
    """Publish one file: plan, then send, verify and rename in one more command."""
    up = Upload.of(local, remote, sha256)
    return publish(transport, python, [up], plan(transport, python, [up]), progress=progress)[0]
