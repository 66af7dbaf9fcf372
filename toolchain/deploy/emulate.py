"""Emulated 64-bit ARM boards: a cached Debian arm64 root file system run under qemu-user.

``edgec device emulate rpi4`` prepares, once, a Debian arm64 root file system
with python3, numpy and the aarch64 ``ai-edge-litert`` wheel, and a small
folder per board; ``--device emulated:rpi4`` then benchmarks on it through the
ordinary ``Transport`` protocol (``EmulatedTransport``), whose ``python`` is a
host script that runs the Debian python3 under ``qemu-aarch64-static -cpu
cortex-a72 -L BOARD``. Everything it measures is emulated: the results say so
(``EDGEC_EMULATED``) and latency is never judged against a budget.

Layout under ``$XDG_CACHE_HOME/edgec/emulate`` (default ``~/.cache``)::

    rootfs/            the Debian tree + wheels (complete whenever it exists)
    boards/<board>/    symlinks to rootfs/*, its own proc/cpuinfo, and python3 (the wrapper)
    work/<board>/      the device's work folder (models, harness)
    wheels/            wheels downloaded for the last preparation
    .lock              serializes preparations (tests and people share the cache)

Every tree is assembled under a hidden temporary name and renamed into place,
so a preparation killed half-way leaves nothing that is ever used.

Facts this rests on (measured with qemu 7.2 and ai-edge-litert 2.3):

- there is no binfmt_misc here, so ``debootstrap --foreign`` is followed by
  ``dpkg -x`` of the downloaded debs instead of a second stage run in a chroot;
- qemu-user shows the host's x86 ``/proc/cpuinfo``, and LiteRT then segfaults
  in ``Interpreter()``; under ``-L BOARD`` qemu reads ``BOARD/proc/cpuinfo``
  first, so each board carries its core's cpuinfo (one shared rootfs, one small
  board folder per CPU);
- ``os.execv(sys.executable)`` (the transport's verify-then-run helper does
  it) fails with "Exec format error" unless ``sys.executable`` is a script the
  host can run: qemu's ``-0 WRAPPER`` sets the guest's argv[0] to the wrapper;
- ``pip download --platform`` does not widen manylinux tags: every
  ``manylinux_2_N_aarch64`` up to the rootfs's glibc is listed.

Under ``-L`` a path missing from the board falls through to the host's file,
so the wrapper passes ``-E -s -B`` (no host PYTHON* variables, no user site, no
bytecode written), the rootfs has empty ``/usr/local`` site folders that hide
the host's, and its Python is byte-compiled when it is prepared.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edgec.deploy.devices import EMULATED_PREFIX as PREFIX
from edgec.deploy.devices import Device, edgec_cache
from edgec.deploy.local import LocalTransport
from edgec.deploy.transport import ConnectOptions
from edgec.errors import DeviceError, UsageError

Log = Callable[[str], None]

QEMU = "qemu-aarch64-static"
# The value of EDGEC_EMULATED, which the harness reports as its "emulated" fact.
EMULATOR = "qemu-aarch64"
SUITE = "bookworm"
ARCH = "arm64"
# Sections of /etc/apt that name Debian's own suites (not Ubuntu's, not a vendor repo).
DEBIAN_SUITES = frozenset(
    {"bullseye", "bookworm", "trixie", "forky", "sid", "oldstable", "stable", "testing", "unstable"}
)
PACKAGES = ("numpy", "ai-edge-litert")
WRAPPER = "python3"
ROOTFS_INFO = "edgec-rootfs.json"
# Bumped when a rootfs built by an older edgec lacks something: it is then rebuilt.
ROOTFS_FORMAT = 2
BOARD_INFO = "board.json"


def _quiet(_line: str) -> None:
    pass


# ------------------------------------------------------------------ boards
@dataclass(frozen=True, kw_only=True)
class Board:
    """One emulated board: the qemu CPU model and what its /proc/cpuinfo says."""

    name: str
    profile: str  # the target profile whose artifacts it runs
    cpu: str  # qemu -cpu
    description: str
    part: int  # MIDR part number, as the kernel prints it ("CPU part")
    variant: int
    revision: int
    features: str
    cores: int = 4
    hardware: str | None = None
    model: str | None = None

    def cpuinfo(self) -> str:
        """The arm64 kernel's /proc/cpuinfo for this board (what LiteRT's cpuinfo parses)."""
        blocks = [
            f"processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: {self.features}\n"
            f"CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: {self.variant:#x}\n"
            f"CPU part\t: {self.part:#05x}\nCPU revision\t: {self.revision}\n"
            for i in range(self.cores)
        ]
        tail = ""
        if self.hardware:
            tail += f"Hardware\t: {self.hardware}\n"
        if self.model:
            tail += f"Model\t\t: {self.model}\n"
        return "\n".join(blocks) + "\n" + tail


_A76_FEATURES = (
    "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm "
    "lrcpc dcpop asimddp"
)
BOARDS: dict[str, Board] = {
    b.name: b
    for b in (
        Board(
            name="rpi4",
            profile="rpi4",
            cpu="cortex-a72",
            description="Raspberry Pi 4 (4x Cortex-A72)",
            part=0xD08,
            variant=0,
            revision=3,
            features="fp asimd evtstrm crc32 cpuid",
            hardware="BCM2835",
            model="Raspberry Pi 4 Model B (emulated by qemu-aarch64, cortex-a72)",
        ),
        Board(
            name="rpi5",
            profile="rpi5",
            cpu="cortex-a76",
            description="Raspberry Pi 5 (4x Cortex-A76)",
            part=0xD0B,
            variant=4,
            revision=1,
            features=_A76_FEATURES,
            model="Raspberry Pi 5 Model B (emulated by qemu-aarch64, cortex-a76)",
        ),
        # A phone's big core; the userland is Debian's, not Android's.
        Board(
            name="phone",
            profile="phone",
            cpu="cortex-a76",
            description="arm64-v8a phone big cores (Cortex-A76), Debian userland",
            part=0xD0B,
            variant=4,
            revision=1,
            features=_A76_FEATURES,
            model="arm64-v8a phone (emulated by qemu-aarch64, cortex-a76)",
        ),
    )
}


def board_named(name: str) -> Board:
    board = BOARDS.get(name.removeprefix(PREFIX))
    if board is None:
        raise UsageError(f"unknown emulated board {name!r}; valid: {', '.join(BOARDS)}")
    return board


# ------------------------------------------------------------------ layout
def emulate_cache() -> Path:
    return edgec_cache() / "emulate"


@dataclass(frozen=True, kw_only=True)
class Layout:
    root: Path

    @property
    def rootfs(self) -> Path:
        return self.root / "rootfs"

    @property
    def wheels(self) -> Path:
        return self.root / "wheels"

    def board(self, board: Board) -> Path:
        return self.root / "boards" / board.name

    def wrapper(self, board: Board) -> Path:
        return self.board(board) / WRAPPER

    def work(self, board: Board) -> Path:
        return self.root / "work" / board.name


def layout(root: Path | None = None) -> Layout:
    return Layout(root=Path(root) if root is not None else emulate_cache())


@dataclass(frozen=True, kw_only=True)
class Prepared:
    """A ready board: where it is and what its rootfs holds."""

    board: Board
    folder: Path
    python: Path  # the host-runnable wrapper, the device's ``python``
    workdir: Path
    rootfs: dict[str, Any]  # the rootfs's edgec-rootfs.json
    built: bool  # False: it was already prepared (cached)
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "board": self.board.name,
            "cpu": self.board.cpu,
            "emulator": f"{QEMU} -cpu {self.board.cpu}",
            "folder": str(self.folder),
            "python": str(self.python),
            "workdir": str(self.workdir),
            "rootfs": self.rootfs,
            "built": self.built,
            "seconds": round(self.seconds, 1),
        }


def prepared(board: Board, root: Path | None = None) -> Prepared | None:
    """The board as it is in the cache, or None when it was never (fully) prepared."""
    lay = layout(root)
    info = lay.rootfs / ROOTFS_INFO
    wrapper = lay.wrapper(board)
    if not (info.is_file() and wrapper.is_file() and (lay.board(board) / BOARD_INFO).is_file()):
        return None
    rootfs = json.loads(info.read_text(encoding="utf-8"))
    meta = json.loads((lay.board(board) / BOARD_INFO).read_text(encoding="utf-8"))
    if rootfs.get("format") != ROOTFS_FORMAT or meta.get("format") != ROOTFS_FORMAT:
        return None
    return Prepared(
        board=board,
        folder=lay.board(board),
        python=wrapper,
        workdir=lay.work(board),
        rootfs=rootfs,
        built=False,
        seconds=0.0,
    )


def require_prepared(board: Board, root: Path | None = None) -> Prepared:
    ready = prepared(board, root)
    if ready is None:
        raise DeviceError(
            f"emulated board {board.name!r} is not prepared; run `edgec device emulate "
            f"{board.name}` first (about a minute, once; --wheels DIR offline)"
        )
    return ready


# ------------------------------------------------------------------ the apt mirror
def _source_entries(text: str, deb822: bool) -> Iterator[tuple[str, list[str], list[str]]]:
    """(uri, suites, components) of each ``deb`` entry of one apt sources file."""
    if deb822:
        for stanza in re.split(r"\n\s*\n", text):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line or line[:1].isspace():
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            if "deb" not in fields.get("types", "").split():
                continue
            if fields.get("enabled", "yes").lower() == "no":
                continue
            for uri in fields.get("uris", "").split():
                yield uri, fields.get("suites", "").split(), fields.get("components", "").split()
        return
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        words = words[1:]
        if words and words[0].startswith("["):  # options: [arch=amd64 signed-by=...]
            while words and not words[0].endswith("]"):
                words.pop(0)
            words = words[1:]
        if len(words) >= 2:
            yield words[0], [words[1]], words[2:]


def apt_mirror(etc_apt: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this machine's apt uses (read at run time, never stored).

    The first ``deb`` entry for a Debian suite (not -security or -updates) with
    the ``main`` component, from sources.list, then sources.list.d/*.list and *.sources.
    """
    files = [etc_apt / "sources.list"]
    folder = etc_apt / "sources.list.d"
    if folder.is_dir():
        files += sorted(p for p in folder.iterdir() if p.suffix in (".list", ".sources"))
    for path in files:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for uri, suites, components in _source_entries(text, path.suffix == ".sources"):
            if "main" in components and any(s in DEBIAN_SUITES for s in suites):
                return uri
    raise UsageError(
        f"no Debian mirror found in {etc_apt}/sources.list or sources.list.d/ (a 'deb' entry "
        "for a Debian suite with 'main'); pass --mirror URL (http://, https:// or file://)"
    )


# ------------------------------------------------------------------ preparing
def _need_tool(name: str, package: str) -> str:
    found = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.access(p, os.X_OK)), None
    )
    if not found:
        raise DeviceError(
            f"{name} not found; install it (apt-get install {package}) to emulate ARM boards"
        )
    return found


def _run(argv: list[str], what: str, *, timeout: float) -> str:
    """Run a preparation step; its failure is one line naming the step and its last output."""
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise DeviceError(f"{what} did not finish within {timeout:g} s") from None
    if res.returncode != 0:
        lines = [ln.strip() for ln in (res.stderr + "\n" + res.stdout).splitlines() if ln.strip()]
        # pip's and debootstrap's last lines are usually the reason; skip pip's root warning
        useful = [ln for ln in lines if "Running pip as the 'root' user" not in ln]
        raise DeviceError(
            f"{what} failed (exit {res.returncode}): {useful[-1] if useful else 'no output'}"
        )
    return res.stdout


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def _staging(final: Path) -> Iterator[Path]:
    """A hidden sibling folder that replaces ``final`` only if the block succeeds."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        if final.exists() or final.is_symlink():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _stale_temporaries(root: Path) -> None:
    # Left by a preparation that was killed; the lock is held, so nobody is writing them.
    for parent in (root, root / "boards"):
        if parent.is_dir():
            for p in parent.iterdir():
                if p.name.startswith(".") and (".tmp-" in p.name or ".old-" in p.name):
                    shutil.rmtree(p, ignore_errors=True)


def _glibc_minor(debs: list[Path]) -> int:
    for deb in debs:
        m = re.match(r"libc6_2\.(\d+)-", deb.name)
        if m:
            return int(m[1])
    raise DeviceError("the Debian root file system has no libc6 package; cannot pick wheel tags")


def platform_tags(glibc_minor: int) -> list[str]:
    """Every manylinux tag an aarch64 wheel may carry for this glibc (pip does not widen them)."""
    tags = ["manylinux2014_aarch64"]
    tags += [f"manylinux_2_{m}_aarch64" for m in range(17, glibc_minor + 1)]
    return tags


def _pip_target_args(python_version: str, tags: list[str]) -> list[str]:
    abi = "cp" + python_version.replace(".", "")
    args = ["--only-binary=:all:", "--python-version", python_version]
    args += ["--implementation", "cp", "--abi", abi]
    for tag in tags:
        args += ["--platform", tag]
    return args


def host_requirements() -> tuple[str, ...]:
    """numpy and ai-edge-litert at the host's versions: the device runs what the reference runs."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for dist in PACKAGES:
        try:
            out.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:
            out.append(dist)
    return tuple(out)


def _build_rootfs(
    final: Path,
    *,
    mirror: str,
    wheels: Path | None,
    cache_wheels: Path,
    log: Log,
) -> dict[str, Any]:
    debootstrap = _need_tool("debootstrap", "debootstrap")
    _need_tool(QEMU, "qemu-user-static")
    if os.geteuid() != 0:
        raise DeviceError(
            "debootstrap needs root to build the emulated root file system "
            "(CI runs as root); run `edgec device emulate` as root once"
        )
    start = time.monotonic()
    with _staging(final) as tree:
        log(f"debootstrap --foreign {SUITE} {ARCH} (minbase + python3) from {mirror}")
        _run(
            [
                debootstrap,
                "--foreign",
                f"--arch={ARCH}",
                "--variant=minbase",
                "--include=python3",
                SUITE,
                str(tree),
                mirror,
            ],
            "debootstrap",
            timeout=1200,
        )
        archives = tree / "var" / "cache" / "apt" / "archives"
        debs = sorted(archives.glob("*.deb"))
        if not debs:
            raise DeviceError(f"debootstrap downloaded no packages into {archives}")
        # No binfmt_misc, so no second stage: unpack every deb (python3 and its
        # dependencies were downloaded but not all unpacked by the first stage).
        log(f"unpacking {len(debs)} packages")
        for deb in debs:
            _run(["dpkg-deb", "-x", str(deb), str(tree)], f"dpkg-deb -x {deb.name}", timeout=300)
        glibc = _glibc_minor(debs)
        python_version = _rootfs_python(tree)
        for deb in debs:
            deb.unlink()
        # Host folders Python would otherwise see through qemu's -L fall-through.
        for sub in (f"usr/local/lib/python{python_version}/dist-packages", "usr/local/bin"):
            (tree / sub).mkdir(parents=True, exist_ok=True)
        tags = platform_tags(glibc)
        target = _pip_target_args(python_version, tags)
        if wheels is None:
            requirements = host_requirements()
            shutil.rmtree(cache_wheels, ignore_errors=True)
            cache_wheels.mkdir(parents=True)
            log(f"pip download {' '.join(requirements)} (aarch64, Python {python_version})")
            _run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "-q",
                    "-d",
                    str(cache_wheels),
                    *target,
                    *requirements,
                ],
                "pip download of the aarch64 wheels",
                timeout=900,
            )
            source, found = cache_wheels, "downloaded"
        else:
            requirements = PACKAGES
            source, found = Path(wheels), f"from {wheels}"
        site = tree / "usr" / "lib" / "python3" / "dist-packages"
        log(f"installing {' '.join(requirements)} into the rootfs ({found})")
        install_wheels(site, source=source, requirements=requirements, target=target)
        log("compiling the Python sources (the emulated python writes no bytecode)")
        _precompile(tree, python_version)
        info = {
            "format": ROOTFS_FORMAT,
            "suite": SUITE,
            "arch": ARCH,
            "variant": "minbase",
            "python": python_version,
            "glibc": f"2.{glibc}",
            "packages": _installed(site),
            "wheels": found,
            "platform_tags": tags,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "seconds": round(time.monotonic() - start, 1),
        }
        (tree / ROOTFS_INFO).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    return info


def install_wheels(
    site: Path, *, source: Path, requirements: tuple[str, ...], target: list[str]
) -> dict[str, str]:
    """pip-install aarch64 wheels from a folder only (offline) into ``site``; their versions."""
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--find-links",
            str(source),
            "--target",
            str(site),
            "--no-compile",
            *target,
            *requirements,
        ],
        f"pip install of the aarch64 wheels from {source}",
        timeout=900,
    )
    return _installed(site)


def _precompile(tree: Path, python_version: str) -> None:
    """Byte-compile the rootfs's Python (dpkg -x runs no py3compile).

    Under ``-L`` a file missing from the rootfs falls through to the host's, so
    a guest writing ``__pycache__/x.pyc`` would write into the host's
    /usr/lib/python3.X when the rootfs lacks that folder. So every source
    folder gets its ``__pycache__`` here, compiled by the host's Python when
    it is the same version (same bytecode), else by the emulated one; the
    wrapper then runs with ``-B``.
    """
    roots = [
        tree / "usr" / "lib" / f"python{python_version}",
        tree / "usr/lib/python3/dist-packages",
    ]
    for root in roots:
        for folder in {p.parent for p in root.rglob("*.py")}:
            (folder / "__pycache__").mkdir(exist_ok=True)
    host = f"{sys.version_info.major}.{sys.version_info.minor}"
    if host == python_version:
        argv = [sys.executable, "-m", "compileall", "-q", "-j", "2", *map(str, roots)]
    else:  # another bytecode version: the emulated python compiles its own (slower)
        guest = ["/" + str(r.relative_to(tree)) for r in roots]
        python = str(tree / "usr" / "bin" / f"python{python_version}")
        argv = [_need_tool(QEMU, "qemu-user-static"), "-L", str(tree), python, "-E", "-s"]
        argv += ["-m", "compileall", "-q", *guest]
    _run(argv, "byte-compiling the rootfs's Python", timeout=1800)


def _rootfs_python(tree: Path) -> str:
    link = tree / "usr" / "bin" / "python3"
    name = os.readlink(link) if link.is_symlink() else ""
    m = re.fullmatch(r"(?:.*/)?python(\d+\.\d+)", name)
    if not m:
        raise DeviceError(f"the Debian root file system has no python3 ({link})")
    return m[1]


def _installed(site: Path) -> dict[str, str]:
    out = {}
    for dist in site.glob("*.dist-info"):
        name, _, ver = dist.name.removesuffix(".dist-info").partition("-")
        out[name.lower().replace("_", "-")] = ver
    return dict(sorted(out.items()))


def wrapper_script(board: Board, folder: Path, python_version: str, qemu: str) -> str:
    """The host-runnable ``python3`` of a board: the Debian python under qemu.

    It is also the guest's ``sys.executable`` (qemu ``-0``), so a Python that
    re-executes itself (``os.execv(sys.executable, ...)``) comes back through it.
    """
    me = folder / WRAPPER
    argv = [qemu, "-cpu", board.cpu, "-L", str(folder), "-0", str(me)]
    argv += [str(folder / "usr" / "bin" / f"python{python_version}"), "-E", "-s", "-B"]
    return (
        "#!/bin/sh\n"
        f"# edgec emulated board {board.name}: Debian {ARCH} python3 under {QEMU} -cpu "
        f"{board.cpu}.\n# Written by `edgec device emulate`; rewritten on each preparation.\n"
        f"EDGEC_EMULATED={EMULATOR}; export EDGEC_EMULATED\n"
        f"EDGEC_EMULATED_CPU={board.cpu}; export EDGEC_EMULATED_CPU\n"
        f'exec {" ".join(shlex.quote(a) for a in argv)} "$@"\n'
    )


def _board_current(board: Board, lay: Layout, rootfs: dict[str, Any]) -> bool:
    """Whether the board's folder is what this edgec would write (else it is rewritten)."""
    folder = lay.board(board)
    try:
        cpuinfo = (folder / "proc" / "cpuinfo").read_text(encoding="utf-8")
        script = (folder / WRAPPER).read_text(encoding="utf-8")
    except OSError:
        return False
    want = wrapper_script(board, folder, rootfs["python"], _need_tool(QEMU, "qemu-user-static"))
    return cpuinfo == board.cpuinfo() and script == want


def _build_board(board: Board, lay: Layout, rootfs: dict[str, Any]) -> None:
    final = lay.board(board)
    qemu = _need_tool(QEMU, "qemu-user-static")
    with _staging(final) as tree:
        for entry in sorted(lay.rootfs.iterdir()):
            if entry.name != "proc":
                (tree / entry.name).symlink_to(Path("..", "..", "rootfs", entry.name))
        (tree / "proc").mkdir()
        (tree / "proc" / "cpuinfo").write_text(board.cpuinfo(), encoding="utf-8")
        # The wrapper names the final folder: it only runs once the rename is done.
        script = tree / WRAPPER
        script.write_text(wrapper_script(board, final, rootfs["python"], qemu), encoding="utf-8")
        script.chmod(0o755)
        meta = {
            "board": board.name,
            "cpu": board.cpu,
            "profile": board.profile,
            "format": ROOTFS_FORMAT,
        }
        (tree / BOARD_INFO).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")


def prepare(
    name: str,
    *,
    wheels: Path | None = None,
    mirror: str | None = None,
    rebuild: bool = False,
    root: Path | None = None,
    log: Log = _quiet,
) -> Prepared:
    """``edgec device emulate BOARD``: the cached rootfs (built once) and the board's folder."""
    board = board_named(name)
    if wheels is not None and not any(Path(wheels).glob("*.whl")):
        raise UsageError(f"--wheels {wheels}: no .whl files there")
    lay = layout(root)
    start = time.monotonic()
    with _locked(lay.root):
        _stale_temporaries(lay.root)
        ready = None if rebuild else prepared(board, lay.root)
        if ready is not None and _board_current(board, lay, ready.rootfs):
            return ready
        info_path = lay.rootfs / ROOTFS_INFO
        current = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
        built = rebuild or current.get("format") != ROOTFS_FORMAT
        if built:
            _build_rootfs(
                lay.rootfs,
                mirror=mirror or apt_mirror(),
                wheels=wheels,
                cache_wheels=lay.wheels,
                log=log,
            )
        rootfs = json.loads(info_path.read_text(encoding="utf-8"))
        _build_board(board, lay, rootfs)
        lay.work(board).mkdir(parents=True, exist_ok=True)
    ready = prepared(board, lay.root)
    assert ready is not None
    return Prepared(
        **{**ready.__dict__, "built": built, "seconds": time.monotonic() - start},
    )


# ------------------------------------------------------------------ the transport
class EmulatedTransport(LocalTransport):
    """A board emulated on this machine: child processes whose ``python`` runs under qemu.

    Same protocol and work-folder semantics as ``LocalTransport`` (files are
    copied, commands run as host processes in their own session); the board's
    ``python`` is the wrapper that starts the Debian arm64 python3 under
    ``qemu-aarch64-static -cpu CPU -L BOARD`` with ``EDGEC_EMULATED`` set, so
    the harness runs on the board's instruction set and says it was emulated.
    """

    def __init__(self, ready: Prepared, home: Path | None = None) -> None:
        super().__init__(home or ready.workdir)
        self.prepared = ready
        self.python = str(ready.python)
        self.label = f"{PREFIX}{ready.board.name} ({QEMU} -cpu {ready.board.cpu})"
        self.emulated = f"{EMULATOR} -cpu {ready.board.cpu}"

    @classmethod
    def open(cls, device: Device, options: ConnectOptions) -> EmulatedTransport:
        # The board's python is the wrapper path; it must exist (prepared) to be used.
        return cls(require_prepared(board_named(device.name)), Path(device.workdir))
