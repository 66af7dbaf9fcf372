"""The SSH transport (paramiko): config, host-key trust, authentication, timeouts.

- ``~/.ssh/config`` is honoured for the host name, port, user, identity files
  and ``UserKnownHostsFile``; explicit values (devices file, ``user@host:port``)
  win over it.
- Authentication is by key file or agent (``allow_agent``, ``look_for_keys``);
  there is no password prompt in a build tool.
- Host keys are checked against known_hosts. An unknown key is refused unless
  ``accept_new_host_key`` is set, which records it (appends one line, like
  OpenSSH's ``StrictHostKeyChecking=accept-new``). A changed key is always
  refused: paramiko raises ``BadHostKeyException`` before any policy is asked.
- Every command is an argument vector quoted with ``shlex.quote``.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import getpass
import hashlib
import logging
import os
import select
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko

from edgec.deploy.devices import Device
from edgec.deploy.transport import (
    ConnectOptions,
    LineSink,
    ProgressSink,
    RunResult,
    quote_command,
)
from edgec.errors import DeviceError

# paramiko logs transport-thread errors (a reset connection) at ERROR level;
# without a handler Python prints them, which would break one-line errors.
logging.getLogger("paramiko").addHandler(logging.NullHandler())


def fingerprint(key: paramiko.PKey) -> str:
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def known_hosts_name(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


@dataclass(frozen=True, kw_only=True)
class SSHTarget:
    """Where and how to connect, after ``~/.ssh/config`` has been applied."""

    alias: str  # what the user wrote (a config Host alias or a host name)
    name: str = ""  # the device's name, for messages
    hostname: str
    port: int
    user: str
    key_files: tuple[str, ...] = ()
    known_hosts: Path
    connect_timeout: float = 10.0
    accept_new_host_key: bool = False

    @property
    def label(self) -> str:
        return f"{self.user}@{self.hostname}:{self.port}"


def ssh_config_path() -> Path:
    return Path(os.path.expanduser("~")) / ".ssh" / "config"


def resolve_target(
    host: str,
    *,
    name: str = "",
    port: int | None = None,
    user: str | None = None,
    key: str | None = None,
    known_hosts: str | None = None,
    connect_timeout: float = 10.0,
    accept_new_host_key: bool = False,
    config_path: Path | None = None,
) -> SSHTarget:
    """Apply ``~/.ssh/config`` to ``host``; explicit arguments override it."""
    path = config_path or ssh_config_path()
    found: dict[str, Any] = {}
    if path.is_file():
        try:
            found = dict(paramiko.SSHConfig.from_path(str(path)).lookup(host))
        except (OSError, paramiko.ssh_exception.ConfigParseError, ValueError) as exc:
            raise DeviceError(f"{path}: cannot read SSH config ({exc})") from exc
    keys: list[str] = []
    if key:
        keys.append(os.path.expanduser(key))
    keys += [os.path.expanduser(k) for k in found.get("identityfile", [])]
    hosts_file = known_hosts or (found.get("userknownhostsfile") or "").split(" ")[0] or None
    if hosts_file is None:
        hosts_file = os.path.join(os.path.expanduser("~"), ".ssh", "known_hosts")
    try:
        cfg_port = int(found.get("port", 22))
    except ValueError as exc:
        raise DeviceError(f"{path}: Port for host {host!r} is not a number") from exc
    return SSHTarget(
        alias=host,
        name=name,
        hostname=found.get("hostname", host),
        port=int(port) if port is not None else cfg_port,
        user=user or found.get("user") or getpass.getuser(),
        key_files=tuple(dict.fromkeys(keys)),
        known_hosts=Path(os.path.expanduser(hosts_file)),
        connect_timeout=connect_timeout,
        accept_new_host_key=accept_new_host_key,
    )


class _UnknownHostKey(Exception):
    def __init__(self, name: str, key: paramiko.PKey) -> None:
        super().__init__(name)
        self.name, self.key = name, key


class _HostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Refuse an unknown key, or (``accept_new``) record it in known_hosts."""

    def __init__(self, known_hosts: Path, accept_new: bool) -> None:
        self.known_hosts, self.accept_new = known_hosts, accept_new
        self.recorded: str | None = None

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        if not self.accept_new:
            raise _UnknownHostKey(hostname, key)
        self.known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        line = f"{hostname} {key.get_name()} {key.get_base64()}\n"
        with open(self.known_hosts, "a", encoding="ascii") as fh:
            fh.write(line)
        client.get_host_keys().add(hostname, key.get_name(), key)
        self.recorded = fingerprint(key)


class SSHTransport:
    """One authenticated SSH connection; SFTP for files, exec channels for commands."""

    def __init__(self, target: SSHTarget) -> None:
        self.target = target
        self.label = target.label
        self.emulated: str | None = None
        self.recorded_host_key: str | None = None
        self._client = self._connect()
        self._sftp: paramiko.SFTPClient | None = None

    @classmethod
    def open(cls, device: Device, options: ConnectOptions) -> SSHTransport:
        assert device.host is not None
        return cls(
            resolve_target(
                device.host,
                name=device.name,
                port=device.port,
                user=device.user,
                key=device.key,
                connect_timeout=options.connect_timeout,
                accept_new_host_key=options.accept_new_host_key,
            )
        )

    def notices(self) -> list[str]:
        if self.recorded_host_key:
            return [f"recorded new host key {self.recorded_host_key}"]
        return []

    def _connect(self) -> paramiko.SSHClient:
        t = self.target
        client = paramiko.SSHClient()
        system = Path("/etc/ssh/ssh_known_hosts")
        if system.is_file():
            client.load_system_host_keys(str(system))
        if t.known_hosts.is_file():
            try:
                client.load_host_keys(str(t.known_hosts))
            except (OSError, paramiko.SSHException) as exc:
                raise DeviceError(f"{t.known_hosts}: cannot read known_hosts ({exc})") from exc
        policy = _HostKeyPolicy(t.known_hosts, t.accept_new_host_key)
        client.set_missing_host_key_policy(policy)
        shown = t.name if t.name and t.name != t.alias else t.alias
        where = f"device {shown} ({t.label})" if shown != t.hostname else t.label
        if t.name and t.name == f"{t.user}@{t.hostname}:{t.port}":
            where = t.label  # an ad-hoc user@host:port: the name says it all
        try:
            client.connect(
                t.hostname,
                port=t.port,
                username=t.user,
                key_filename=list(t.key_files) or None,
                allow_agent=True,
                look_for_keys=True,
                timeout=t.connect_timeout,
                banner_timeout=t.connect_timeout,
                auth_timeout=t.connect_timeout,
                channel_timeout=t.connect_timeout,
            )
        except _UnknownHostKey as exc:
            client.close()
            raise DeviceError(
                f"{where}: unknown host key {fingerprint(exc.key)} ({exc.key.get_name()}), "
                f"not in {t.known_hosts}; refusing to connect. Check the fingerprint, then "
                "rerun with --accept-new-host-key to record it"
            ) from None
        except paramiko.BadHostKeyException as exc:
            client.close()
            name = known_hosts_name(t.hostname, t.port)
            raise DeviceError(
                f"{where}: host key CHANGED: the device offers {fingerprint(exc.key)}, "
                f"{t.known_hosts} expects {fingerprint(exc.expected_key)}; refusing to connect "
                f"(possible man-in-the-middle). If the device was reinstalled, remove the old key "
                f"with: ssh-keygen -f {t.known_hosts} -R '{name}'"
            ) from None
        except paramiko.AuthenticationException as exc:
            client.close()
            tried = ", ".join(t.key_files) or "default keys in ~/.ssh"
            raise DeviceError(
                f"{where}: authentication failed for user {t.user!r} (tried {tried} and the "
                f"SSH agent): {exc}; check the user and key, or run ssh-copy-id"
            ) from None
        except (
            paramiko.ssh_exception.NoValidConnectionsError,
            TimeoutError,
            socket.gaierror,
            ConnectionError,
            OSError,
        ) as exc:
            client.close()
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            if isinstance(exc, (socket.timeout, TimeoutError)):
                reason = f"no answer within {t.connect_timeout:g} s"
            raise DeviceError(f"{where}: cannot reach the device: {reason}") from None
        except (paramiko.SSHException, EOFError) as exc:
            client.close()
            raise DeviceError(
                f"{where}: SSH handshake failed: {exc or type(exc).__name__}"
            ) from None
        self.recorded_host_key = policy.recorded
        return client

    def _alive(self) -> bool:
        tr = self._client.get_transport()
        return tr is not None and tr.is_active()

    def _dropped(self, doing: str, exc: BaseException | None = None) -> DeviceError:
        why = f": {exc}" if exc and str(exc) else ""
        return DeviceError(f"{self.label}: connection dropped while {doing}{why}")

    def sftp(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            try:
                self._sftp = self._client.open_sftp()
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise DeviceError(f"{self.label}: cannot open SFTP on the device: {exc}") from exc
        return self._sftp

    def upload(self, local: Path, remote: str, *, progress: ProgressSink | None = None) -> None:
        total = local.stat().st_size
        sent = [0]

        def cb(done: int, size: int) -> None:
            sent[0] = done
            if progress is not None:
                progress(done, size)

        try:
            self.sftp().put(str(local), remote, callback=cb, confirm=True)
        except DeviceError:
            raise
        except (paramiko.SSHException, EOFError, OSError) as exc:
            doing = f"uploading {local.name} ({sent[0]} of {total} bytes sent)"
            if not self._alive() or isinstance(exc, (EOFError, paramiko.SSHException)):
                raise DeviceError(
                    f"{self.label}: connection dropped while {doing}; nothing was deployed, "
                    "run again"
                ) from exc
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise DeviceError(f"{self.label}: upload failed while {doing}: {reason}") from exc

    def download(self, remote: str, local: Path) -> None:
        try:
            self.sftp().get(remote, str(local))
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise DeviceError(f"{self.label}: cannot download {remote!r}: {exc}") from exc

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
        command = quote_command(argv)
        try:
            tr = self._client.get_transport()
            if tr is None or not tr.is_active():
                raise self._dropped(f"starting {argv[0]}")
            chan = tr.open_session(timeout=self.target.connect_timeout)
            chan.exec_command(command)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise self._dropped(f"starting {argv[0]}", exc) from exc
        if stdin:
            self._send(chan, stdin, timeout, progress)
        out = bytearray()
        # The timeout bounds the command, not the upload that fed it.
        start_run = time.monotonic()
        err_lines: list[str] = []
        pending = b""
        timed_out = False

        def take_stderr(data: bytes, final: bool = False) -> None:
            nonlocal pending
            pending += data
            *lines, pending = pending.split(b"\n")
            if final and pending:
                lines.append(pending)
                pending = b""
            for raw in lines:
                line = raw.decode(errors="replace").rstrip("\r")
                err_lines.append(line)
                if on_stderr_line is not None:
                    on_stderr_line(line)

        deadline = start_run + timeout
        while True:
            if chan.recv_ready():
                out += chan.recv(65536)
                continue
            if chan.recv_stderr_ready():
                take_stderr(chan.recv_stderr(65536))
                continue
            # A closed channel also sets the exit status (to -1).
            if chan.exit_status_ready() or not self._alive():
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            select.select([chan], [], [], min(remaining, 0.05))
        # Drain what arrived together with the exit status.
        while chan.recv_ready():
            out += chan.recv(65536)
        while chan.recv_stderr_ready():
            take_stderr(chan.recv_stderr(65536))
        take_stderr(b"", final=True)
        code = chan.exit_status if chan.exit_status_ready() else -1
        chan.close()
        if not timed_out and code == -1 and not self._alive():
            raise self._dropped(f"running {argv[0]}")
        return RunResult(
            exit_code=code,
            stdout=bytes(out),
            stderr="\n".join(err_lines),
            seconds=time.monotonic() - start,
            timed_out=timed_out,
            # OpenSSH reports a signal death as exit-signal, which paramiko
            # leaves as status -1: the name of the signal is not known here.
            signal="unknown" if code == -1 and not timed_out else None,
        )

    def _send(
        self,
        chan: paramiko.Channel,
        files: Sequence[Path],
        timeout: float,
        progress: ProgressSink | None,
    ) -> None:
        """Stream ``files`` into the command's stdin, then close it."""
        total = sum(f.stat().st_size for f in files)
        sent = 0
        chan.settimeout(timeout)  # a device that stops reading must not hang us
        for path in files:
            with open(path, "rb") as fh:
                for chunk in iter(functools.partial(fh.read, 1 << 16), b""):
                    try:
                        chan.sendall(chunk)
                    except (OSError, EOFError, paramiko.SSHException) as exc:
                        if not self._alive():
                            raise DeviceError(
                                f"{self.label}: connection dropped while uploading {path.name} "
                                f"({sent} of {total} bytes sent); nothing was deployed, run again"
                            ) from exc
                        # The command ended early (it failed): its answer says why.
                        return
                    sent += len(chunk)
                    if progress is not None:
                        progress(sent, total)
        with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
            chan.shutdown_write()

    def close(self) -> None:
        if self._sftp is not None:
            # closing a dead connection must not mask the real error
            with contextlib.suppress(Exception):
                self._sftp.close()
        self._client.close()
