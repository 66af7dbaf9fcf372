"""The package's one sha256 helper and one atomic file writer.

Everything edgec writes that someone may read while it is written (reports,
firmware sources, bundles, checksum sidecars, pulled results) goes through
``write_atomic``: a temp file in the same folder, fsync, rename. Every digest
is ``sha256_bytes`` / ``sha256_file`` / ``sha256_path`` (lowercase hex).
Whole artifact folders are written by ``edgec.artifact.write_artifact``,
which uses the same temp-then-rename idea one level up.

Only the on-device harness (``benchmarks/harness``) keeps its own copy, since
it must import nothing of edgec.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

_CHUNK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_path(path: str | Path) -> str:
    """sha256 of a file, or of a directory's sorted relative paths and contents."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode() + b"\0")
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
                h.update(chunk)
    return h.hexdigest()


def write_atomic(path: str | Path, data: bytes | str, *, mode: int = 0o644) -> Path:
    """Write ``data`` to ``path`` through a temp file in the same folder and a rename."""
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)  # mkstemp makes 0600; these are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
