"""The local transport: this machine as a device (``--device local``).

It satisfies the same ``Transport`` protocol as SSH, so deploy and bench take
one path: files are copied into a work folder (the local "remote home"), and
commands run as child processes in their own session, so a timeout kills the
harness and anything it started.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from edgec.deploy.devices import Device, local_workdir
from edgec.deploy.transport import NOT_FOUND, ConnectOptions, LineSink, ProgressSink, RunResult
from edgec.errors import DeviceError


class LocalTransport:
    """A child process on this machine; remote relative paths live under ``home``."""

    def __init__(self, home: Path | None = None) -> None:
        self.home = Path(home) if home is not None else local_workdir()
        self.home.mkdir(parents=True, exist_ok=True)
        self.label = "local"
        self.emulated: str | None = None

    @classmethod
    def open(cls, device: Device, options: ConnectOptions) -> LocalTransport:
        # The device's work folder is absolute (devices.local_workdir), so the
        # paths in messages and results are the real ones.
        return cls(Path(os.path.expanduser(device.workdir)))

    def notices(self) -> list[str]:
        return []

    def _path(self, remote: str) -> Path:
        return self.home / os.path.expanduser(remote)

    def upload(self, local: Path, remote: str, *, progress: ProgressSink | None = None) -> None:
        dest = self._path(remote)
        total = local.stat().st_size
        sent = 0
        try:
            with open(local, "rb") as src, open(dest, "wb") as out:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    out.write(chunk)
                    sent += len(chunk)
                    if progress is not None:
                        progress(sent, total)
        except OSError as exc:
            raise DeviceError(
                f"local: cannot copy {local} to {dest}: {exc.strerror or exc}"
            ) from exc

    def download(self, remote: str, local: Path) -> None:
        try:
            shutil.copyfile(self._path(remote), local)
        except OSError as exc:
            raise DeviceError(f"local: cannot copy {remote} to {local}: {exc}") from exc

    def run(
        self,
        argv: list[str],
        *,
        timeout: float,
        on_stderr_line: LineSink | None = None,
        stdin: Sequence[Path] = (),
        progress: ProgressSink | None = None,
    ) -> RunResult:
        start = time.monotonic()
        try:
            proc = subprocess.Popen(
                argv,
                cwd=self.home,
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except FileNotFoundError:
            return RunResult(
                exit_code=NOT_FOUND, stdout=b"", stderr=f"{argv[0]}: not found", seconds=0.0
            )
        err_lines: list[str] = []

        def pump() -> None:
            assert proc.stderr is not None
            for raw in iter(proc.stderr.readline, b""):
                line = raw.decode(errors="replace").rstrip("\n")
                err_lines.append(line)
                if on_stderr_line is not None:
                    on_stderr_line(line)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        if stdin:
            # In a thread, so that the timeout below also bounds a child that stops reading.
            threading.Thread(target=_feed, args=(proc, stdin, progress), daemon=True).start()
        timed_out = False
        stdout = proc.stdout
        assert stdout is not None
        out_chunks: list[bytes] = []
        out_reader = threading.Thread(target=lambda: out_chunks.append(stdout.read()), daemon=True)
        out_reader.start()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        out_reader.join(5)
        reader.join(5)
        code = proc.returncode
        sig = signal.Signals(-code).name if code < 0 and -code in signal.valid_signals() else None
        return RunResult(
            exit_code=code,
            stdout=b"".join(out_chunks),
            stderr="\n".join(err_lines),
            seconds=time.monotonic() - start,
            timed_out=timed_out,
            signal=sig,
        )

    def close(self) -> None:
        pass


def _feed(
    proc: subprocess.Popen[bytes], files: Sequence[Path], progress: ProgressSink | None
) -> None:
    assert proc.stdin is not None
    total = sum(f.stat().st_size for f in files)
    sent = 0
    try:
        for path in files:
            with open(path, "rb") as fh:
                for chunk in iter(functools.partial(fh.read, 1 << 16), b""):
                    proc.stdin.write(chunk)
                    sent += len(chunk)
                    if progress is not None:
                        progress(sent, total)
        proc.stdin.close()
    except (BrokenPipeError, ValueError, OSError):
        pass  # the child ended early; its exit status and answer say why
