"""Devices: the devices TOML file, ``--device`` specs and groups.

A devices file names the boards a team benchmarks on::

    [devices.pi4-a]
    host = "10.0.0.21"         # or a Host alias from ~/.ssh/config
    port = 22                  # optional, default from ~/.ssh/config, then 22
    user = "pi"                # optional, same
    key = "~/.ssh/id_ed25519"  # optional, same; the SSH agent is also tried
    profile = "rpi4"           # optional: the target profile of this board
    python = "/usr/bin/python3"  # optional: default <workdir>/venv/bin/python, then python3
    workdir = ".edgec"         # optional: relative to the remote home
    groups = ["lab", "arm"]    # optional

``--device`` takes ``local``, ``emulated:BOARD`` (a board prepared by ``edgec
device emulate``, see ``edgec.deploy.emulate``), a name from that file, or
``[user@]host[:port]`` (a host may be a ``~/.ssh/config`` alias). The file is ``--devices PATH``,
else ``$EDGEC_DEVICES``, else ``~/.config/edgec/devices.toml`` when present.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

from edgec.errors import UsageError

ENV = "EDGEC_DEVICES"
LOCAL = "local"
EMULATED_PREFIX = "emulated:"


class DeviceKind(StrEnum):
    LOCAL = "local"
    SSH = "ssh"
    EMULATED = "emulated"


@dataclass(frozen=True, kw_only=True)
class Device:
    name: str
    kind: DeviceKind = DeviceKind.SSH
    host: str | None = None
    port: int | None = None
    user: str | None = None
    key: str | None = None
    profile: str | None = None
    python: str | None = None
    workdir: str = ".edgec"
    groups: tuple[str, ...] = ()

    @property
    def slug(self) -> str:
        """The name made safe for a file name (results/bench-<slug>.json)."""
        return re.sub(r"[^A-Za-z0-9._@-]+", "_", self.name).strip("_") or "device"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": str(self.kind),
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "profile": self.profile,
            "python": self.python,
            "workdir": self.workdir,
            "groups": list(self.groups),
        }


_KEYS = {f.name for f in fields(Device)} - {"name", "kind"}


def edgec_cache() -> Path:
    """edgec's cache folder: ``$XDG_CACHE_HOME/edgec``, default ``~/.cache/edgec``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "edgec"


def local_workdir() -> Path:
    """The local device's work folder: ``$XDG_CACHE_HOME/edgec/local`` (default
    ``~/.cache``), so ``--device local`` never writes into the working directory."""
    return edgec_cache() / "local"


def local_device(python: str | None = None, workdir: str | None = None) -> Device:
    return Device(
        name=LOCAL,
        kind=DeviceKind.LOCAL,
        python=python,
        workdir=workdir or str(local_workdir()),
    )


def emulated_device(spec: str) -> Device:
    """``emulated:BOARD``: its python is the board's qemu wrapper (it may not be prepared yet)."""
    from edgec.deploy.emulate import board_named, layout

    board = board_named(spec)
    return Device(
        name=f"{EMULATED_PREFIX}{board.name}",
        kind=DeviceKind.EMULATED,
        profile=board.profile,
        python=str(layout().wrapper(board)),
        workdir=str(layout().work(board)),
    )


def default_devices_file() -> Path | None:
    env = os.environ.get(ENV)
    if env:
        return Path(env)
    path = Path(os.path.expanduser("~")) / ".config" / "edgec" / "devices.toml"
    return path if path.is_file() else None


def load_devices(path: Path) -> dict[str, Device]:
    """Read and check a devices file strictly: unknown keys and bad types are errors."""
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"devices file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"devices file {path}: cannot read it ({exc})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"devices file {path}: not valid TOML ({exc})") from exc
    extra = sorted(set(raw) - {"devices"})
    if extra:
        raise UsageError(
            f"{path}: unknown top-level key {extra[0]!r}; valid: [devices.NAME] tables"
        )
    table = raw.get("devices", {})
    if not isinstance(table, dict):
        raise UsageError(f"{path}: 'devices' must be tables: [devices.NAME]")
    out: dict[str, Device] = {}
    for name, entry in table.items():
        where = f"{path}: devices.{name}"
        if name == LOCAL or name.startswith(EMULATED_PREFIX):
            raise UsageError(
                f"{where}: the names 'local' and 'emulated:*' are reserved for this machine"
            )
        if not isinstance(entry, dict):
            raise UsageError(f"{where} must be a table")
        unknown = sorted(set(entry) - _KEYS)
        if unknown:
            raise UsageError(
                f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(_KEYS))}"
            )
        host = entry.get("host")
        if not isinstance(host, str) or not host:
            what = "is required" if host is None else f"= {host!r} must be a non-empty string"
            raise UsageError(
                f"{where}: key 'host' {what} (a host name, address or ~/.ssh/config alias)"
            )
        for key in ("user", "key", "profile", "python", "workdir"):
            if key in entry and not isinstance(entry[key], str):
                raise UsageError(f"{where}: key {key!r} = {entry[key]!r} must be a string")
        port = entry.get("port")
        if port is not None and (
            isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536
        ):
            raise UsageError(f"{where}: key 'port' = {port!r} must be a number from 1 to 65535")
        groups = entry.get("groups", [])
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            raise UsageError(f"{where}: key 'groups' must be a list of strings")
        out[name] = Device(
            name=name,
            host=entry["host"],
            port=port,
            user=entry.get("user"),
            key=entry.get("key"),
            profile=entry.get("profile"),
            python=entry.get("python"),
            workdir=entry.get("workdir", ".edgec"),
            groups=tuple(groups),
        )
    return out


_SPEC = re.compile(r"^(?:(?P<user>[^@\s]+)@)?(?P<host>\[[^\]]+\]|[^:@\s]+)(?::(?P<port>\d+))?$")


def parse_spec(spec: str) -> Device:
    """``[user@]host[:port]`` (IPv6 in brackets) as an ad-hoc SSH device."""
    m = _SPEC.match(spec.strip())
    if not m:
        raise UsageError(
            f"--device {spec!r}: expected 'local', a name from the devices file, "
            "or [user@]host[:port]"
        )
    port = int(m["port"]) if m["port"] else None
    if port is not None and not 0 < port < 65536:
        raise UsageError(f"--device {spec!r}: port {port} must be from 1 to 65535")
    return Device(name=spec.strip(), host=m["host"].strip("[]"), port=port, user=m["user"])


def resolve_device(spec: str, devices_file: Path | None = None) -> Device:
    """``local``, ``emulated:BOARD``, a name in the devices file, or ``[user@]host[:port]``."""
    if spec == LOCAL:
        return local_device()
    if spec.startswith(EMULATED_PREFIX):
        return emulated_device(spec)
    path = devices_file or default_devices_file()
    if path is not None:
        devices = load_devices(path)
        if spec in devices:
            return devices[spec]
    return parse_spec(spec)


def resolve_group(group: str, devices_file: Path | None = None) -> list[Device]:
    path = devices_file or default_devices_file()
    if path is None:
        raise UsageError(
            f"--group {group!r} needs a devices file: pass --devices PATH or set ${ENV}"
        )
    devices = load_devices(path)
    members = [d for d in devices.values() if group in d.groups]
    if not members:
        known = sorted({g for d in devices.values() for g in d.groups})
        raise UsageError(
            f"--group {group!r}: no device in {path} has it; groups there: "
            f"{', '.join(known) or '(none)'}"
        )
    return members


def list_devices(devices_file: Path | None = None) -> list[str]:
    """``edgec devices``: one line per device of the devices file."""
    path = devices_file or default_devices_file()
    if path is None:
        raise UsageError(
            f"no devices file: pass --devices PATH, set ${ENV}, or write "
            "~/.config/edgec/devices.toml"
        )
    lines = []
    for d in load_devices(path).values():
        where = f"{d.user + '@' if d.user else ''}{d.host}{':' + str(d.port) if d.port else ''}"
        lines.append(f"{d.name:<16} {where:<28} {d.profile or '-':<10} {','.join(d.groups) or '-'}")
    return lines
