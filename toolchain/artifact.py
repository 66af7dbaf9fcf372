"""Writing one target's artifact folder atomically, with its manifest.

A folder ``OUT/<model>/<target>/`` holds ``model.tflite`` (plus variants),
``manifest.json``, the reports and, for microcontrollers, ``firmware/``. It is
assembled in a hidden sibling folder and renamed into place only when complete,
so a failed or interrupted build never leaves a half-written artifact that
looks valid; a previous artifact stays until the new one replaces it.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgec.manifest import MANIFEST, SCHEMA, dump_manifest

if TYPE_CHECKING:
    from edgec.manifest import Manifest

__all__ = ["MANIFEST", "SCHEMA", "dump_json", "library_versions", "write_artifact"]


def library_versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for dist in (
        "edgec",
        "tensorflow",
        "keras",
        "ai-edge-litert",
        "litert-quantizer",
        "numpy",
        "tflite-micro",
    ):
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return found


def dump_json(payload: Any) -> str:
    return json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n"


def write_artifact(
    target_dir: Path,
    files: dict[str, bytes],
    manifest: Manifest,
    *,
    finish: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``files`` and ``manifest.json`` into ``target_dir``, all or nothing.

    ``finish(tmp_dir)`` runs on the complete temporary folder before it is moved
    into place (reports and firmware are written there).
    """
    target_dir = Path(target_dir)
    target_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(
        tempfile.mkdtemp(prefix=f".{target_dir.name}.", suffix=".tmp", dir=target_dir.parent)
    )
    try:
        for name, content in files.items():
            path = tmp / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        # A previous artifact's measured results belong to the model they measured:
        # they are kept only if that model is byte-identical to the new one.
        old_results = target_dir / "results"
        if old_results.is_dir() and _same_model(target_dir, files):
            shutil.copytree(old_results, tmp / "results")
        (tmp / MANIFEST).write_text(dump_manifest(manifest), encoding="utf-8")
        if finish is not None:
            finish(tmp)
        for path in tmp.rglob("*"):
            if path.is_file():
                with path.open("rb") as fh:
                    os.fsync(fh.fileno())
        old = None
        if target_dir.exists():
            old = target_dir.with_name(f".{target_dir.name}.old-{os.getpid()}")
            os.replace(target_dir, old)
        os.replace(tmp, target_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target_dir


def _same_model(target_dir: Path, files: dict[str, bytes]) -> bool:
    old = target_dir / "model.tflite"
    return old.is_file() and "model.tflite" in files and old.read_bytes() == files["model.tflite"]
