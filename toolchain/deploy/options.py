"""What a bench or deploy is asked to do: its options, and the artifact it runs.

``BenchOptions`` are the harness's method and the fleet's concurrency (the
connection's own options are ``transport.ConnectOptions``). ``locate_artifact``
turns an artifact folder or a bare ``.tflite`` into the model to run, the
folder its ``results/`` go to and its manifest; ``budget_profile`` picks the
profile whose budgets apply (``--target``, the manifest's, else the device's).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgec.deploy.devices import Device
from edgec.deploy.transport import ConnectOptions
from edgec.errors import InputError
from edgec.manifest import MANIFEST, Manifest, read_manifest
from edgec.modelinfo import require_identifier

Log = Callable[[str], None]
RESULTS_DIR = "results"


def quiet(_line: str) -> None:
    pass


@dataclass(frozen=True, kw_only=True)
class BenchOptions:
    runs: int = 50
    warmup: int = 1
    threads: int | None = None  # default: the target profile's threads, else 1
    timeout: float = 300.0
    min_secs: float = 0.0
    max_secs: float = 150.0
    seed: int = 0
    inputs: Path | None = None  # a .npy/.npz file uploaded next to the model
    target: str | None = None  # profile for budgets; default the artifact's manifest target
    jobs: int = 4  # devices benchmarked at once in a fleet
    runtime: str = "auto"  # auto | litert | tflite-runtime | tflm
    allow_arch_mismatch: bool = False  # store (labelled, unjudged) results of another arch
    save: bool = True
    # Outputs of fixed seeded inputs compared with the host reference (edgec.agreement);
    # None: on for emulated devices, off for others.
    check_outputs: bool | None = None
    check_count: int | None = None  # default: the stored reference's count, else 16
    connect: ConnectOptions = field(default_factory=ConnectOptions)


@dataclass(frozen=True, kw_only=True)
class Artifact:
    model: Path  # the .tflite file to run
    folder: Path  # where results/ goes
    manifest: Manifest | None  # edgec.manifest's typed form, when the folder has one
    name: str  # remote folder name

    @property
    def results_dir(self) -> Path:
        return self.folder / RESULTS_DIR


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "model"


def locate_artifact(path: Path) -> Artifact:
    """An artifact folder (its model.tflite and manifest) or a bare .tflite file."""
    path = Path(path)
    manifest = None
    if path.is_dir():
        model, folder = path / "model.tflite", path
        if (path / MANIFEST).is_file():
            manifest = read_manifest(path)  # the one reader: a foreign manifest is one line
        if not model.is_file():
            raise InputError(
                f"{path}: no model.tflite inside; give an artifact folder or a .tflite"
            )
    elif path.is_file():
        model, folder = path, path.parent
    else:
        raise InputError(f"{path}: no such artifact folder or .tflite file")
    with open(model, "rb") as fh:
        head = fh.read(8)
    require_identifier(head, str(model))
    name = model.stem if path.is_file() else path.name
    if manifest is not None and manifest.model.name:
        target = manifest.target_name
        name = manifest.model.name + (f"-{target}" if target else "")
    return Artifact(model=model, folder=folder, manifest=manifest, name=safe_name(name))


def budget_profile(artifact: Artifact, device: Device, target: str | None) -> dict[str, Any] | None:
    """The profile (as a dict) whose budgets apply: --target, the manifest's, or the device's."""
    from edgec.profiles import load_profile

    if target:
        return load_profile(target).to_dict()
    if artifact.manifest is not None and artifact.manifest.target:
        return artifact.manifest.target
    if device.profile:
        return load_profile(device.profile).to_dict()
    return None


def is_micro(profile: dict[str, Any] | None) -> bool:
    return bool(profile) and profile.get("runtime") == "tflm"  # type: ignore[union-attr]
