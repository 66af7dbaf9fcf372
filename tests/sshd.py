"""A real OpenSSH server for tests: ``/usr/sbin/sshd -D -e -f <config>`` on 127.0.0.1.

Each ``Sshd`` has its own generated host key, listens on a free port and
accepts one generated client key (``ClientKeys``) for the current user (root
in CI). ``StrictModes no`` because the key files live in pytest's temporary
folders; ``UsePAM no`` so no PAM stack is needed in a container.

Never skipped: if sshd or ssh-keygen is missing the helper fails loudly with
the package to install (``openssh-server``).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SSHD = "/usr/sbin/sshd"


def _need(binary: str) -> str:
    path = binary if os.path.isabs(binary) else shutil.which(binary)
    if not path or not os.access(path, os.X_OK):
        raise RuntimeError(
            f"{binary} is missing: install openssh-server (apt-get install -y openssh-server); "
            "the SSH tests must not be skipped"
        )
    return path


def keygen(path: Path, kind: str = "ed25519") -> Path:
    """A passphrase-less key pair at ``path`` and ``path.pub``."""
    subprocess.run(
        [_need("ssh-keygen"), "-q", "-t", kind, "-N", "", "-C", "edgec-test", "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ClientKeys:
    """A client identity and a HOME folder whose ~/.ssh holds it."""

    home: Path
    key: Path

    @classmethod
    def create(cls, home: Path) -> ClientKeys:
        ssh = home / ".ssh"
        ssh.mkdir(parents=True, exist_ok=True, mode=0o700)
        return cls(home=home, key=keygen(ssh / "id_ed25519"))

    @property
    def known_hosts(self) -> Path:
        return self.home / ".ssh" / "known_hosts"

    def trust(self, server: Sshd) -> None:
        """Record the server's host key, as a first `ssh` would."""
        with open(self.known_hosts, "a", encoding="ascii") as fh:
            fh.write(server.known_hosts_line())


class Sshd:
    """One sshd process; ``start()`` returns once the port accepts connections."""

    def __init__(self, root: Path, client: ClientKeys) -> None:
        self.root = root
        self.client = client
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)
        self.host_key = keygen(root / "ssh_host_ed25519_key")
        (root / "authorized_keys").write_text(
            Path(str(client.key) + ".pub").read_text(encoding="ascii"), encoding="ascii"
        )

    @property
    def user(self) -> str:
        return getpass.getuser()

    def known_hosts_line(self) -> str:
        kind, b64 = Path(str(self.host_key) + ".pub").read_text(encoding="ascii").split()[:2]
        return f"[127.0.0.1]:{self.port} {kind} {b64}\n"

    def _config(self) -> Path:
        sftp = "/usr/lib/openssh/sftp-server"
        cfg = self.root / "sshd_config"
        cfg.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {self.host_key}",
                    f"PidFile {self.root / 'sshd.pid'}",
                    f"AuthorizedKeysFile {self.root / 'authorized_keys'}",
                    "StrictModes no",
                    "UsePAM no",
                    "PermitRootLogin prohibit-password",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    f"Subsystem sftp {sftp if os.path.exists(sftp) else 'internal-sftp'}",
                    "MaxStartups 50",
                    "MaxSessions 50",
                    "LogLevel ERROR",
                    "",
                ]
            ),
            encoding="ascii",
        )
        return cfg

    def start(self) -> Sshd:
        _need(SSHD)
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # the privilege-separation dir
        for _attempt in range(5):
            self.port = self.port or free_port()
            cfg = self._config()
            self.proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(cfg)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=open(self.root / "sshd.log", "ab"),  # noqa: SIM115
            )
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
                ):
                    return self
                time.sleep(0.05)
            self.stop()
            self.port = 0  # the port may have been taken meanwhile: pick another
        log = (self.root / "sshd.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"sshd did not start: {log}")

    def session_pids(self) -> list[int]:
        """Processes below this sshd (its per-connection children), deepest last."""
        if self.proc is None:
            return []
        parents: dict[int, int] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                    stat = fh.read()
                parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
        out: list[int] = []
        frontier = [self.proc.pid]
        while frontier:
            kids = [p for p, pp in parents.items() if pp in frontier]
            out += kids
            frontier = kids
        return out

    def kill_sessions(self) -> int:
        """SIGKILL every connection this sshd serves (a dropped link); returns how many."""
        pids = self.session_pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(
            os.path.exists(f"/proc/{p}") and _alive(p) for p in pids
        ):
            time.sleep(0.02)
        return len(pids)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.kill_sessions()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
