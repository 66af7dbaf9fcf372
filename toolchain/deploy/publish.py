"""Deploy: publish an artifact's model, the harness (and inputs) on a device.

Remote layout, under the device's work folder (default ``.edgec`` in the
remote home)::

    harness/<sha256[:12]>/harness.py
    models/<model>/<sha256[:12]>/model.tflite
    inputs/<sha256[:12]>/<file>
    venv/                       (made by `edgec device setup`)
    wheels/                     (offline wheels uploaded by setup --wheels)

The paths are computed locally from the sha256 (``planned_uploads``), so a
deployed model is recognised without a listing; the transfer itself (temporary
names, verify, rename) is ``transport.publish``.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgec.deploy.devices import Device, resolve_device
from edgec.deploy.options import (
    Artifact,
    Log,
    budget_profile,
    is_micro,
    locate_artifact,
    quiet,
    safe_name,
)
from edgec.deploy.provision import harness_upload, probe_device, require_ready, workdir
from edgec.deploy.transport import (
    ConnectOptions,
    Published,
    Transport,
    Upload,
    connect,
    publish,
    sha256_file,
)
from edgec.signing import require_signed


@dataclass(frozen=True, kw_only=True)
class Deployment:
    device: Device
    label: str
    python: str
    model: Published
    harness: Published
    inputs: Published | None = None
    probe: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        def pub(p: Published | None) -> dict[str, Any] | None:
            if p is None:
                return None
            return {
                "remote": p.remote,
                "sha256": p.sha256,
                "bytes": p.bytes,
                "uploaded": p.uploaded,
            }

        return {
            "device": self.device.name,
            "address": self.label,
            "python": self.python,
            "model": pub(self.model),
            "harness": pub(self.harness),
            "inputs": pub(self.inputs),
        }


def planned_uploads(device: Device, artifact: Artifact, inputs: Path | None = None) -> list[Upload]:
    """Model, harness (and inputs) with their versioned remote paths, computed locally."""
    work = workdir(device)
    digest = sha256_file(artifact.model)
    uploads = [
        Upload(
            local=artifact.model,
            sha256=digest,
            remote=posixpath.join(work, "models", artifact.name, digest[:12], artifact.model.name),
        ),
        harness_upload(device),
    ]
    if inputs is not None:
        idigest = sha256_file(inputs)
        uploads.append(
            Upload(
                local=inputs,
                sha256=idigest,
                remote=posixpath.join(work, "inputs", idigest[:12], safe_name(inputs.name)),
            )
        )
    return uploads


def deployment(
    device: Device,
    label: str,
    python: str,
    pubs: list[Published],
    probe: dict[str, Any] | None = None,
) -> Deployment:
    return Deployment(
        device=device,
        label=label,
        python=python,
        model=pubs[0],
        harness=pubs[1],
        inputs=pubs[2] if len(pubs) > 2 else None,
        probe=probe or {},
    )


def say_deployed(log: Log, model: Published) -> None:
    log(
        f"{'uploaded' if model.uploaded else 'already on device (same sha256), not re-uploaded'}:"
        f" {model.remote}"
    )


def deploy_to(
    transport: Transport,
    device: Device,
    artifact: Artifact,
    *,
    inputs: Path | None = None,
    need_micro: bool = False,
    log: Log = quiet,
    progress: Callable[[int, int], None] | None = None,
    timeout: float = 60.0,
) -> Deployment:
    """Check the device, then publish the model, the harness and inputs (idempotent)."""
    uploads = planned_uploads(device, artifact, inputs)
    facts = probe_device(transport, device, need_micro=need_micro, uploads=uploads, timeout=timeout)
    require_ready(facts, device, transport.label)
    assert facts.plan is not None
    pubs = publish(transport, facts.python, uploads, facts.plan, progress=progress, timeout=timeout)
    say_deployed(log, pubs[0])
    return deployment(device, transport.label, facts.python, pubs, facts.probe)


def deploy(
    artifact_path: Path,
    spec: str,
    *,
    devices_file: Path | None = None,
    options: ConnectOptions | None = None,
    allowed_signers: Path | None = None,
    log: Log = quiet,
) -> Deployment:
    """``edgec deploy``: publish an artifact (and the harness) on one device.

    When signing is configured (``allowed_signers`` or ``$EDGEC_ALLOWED_SIGNERS``),
    an unsigned or tampered artifact is refused before anything is sent.
    """
    signer = require_signed(artifact_path, allowed_signers)
    if signer is not None:
        log(f"signature ok: signed by {signer}")
    artifact = locate_artifact(artifact_path)
    device = resolve_device(spec, devices_file)
    options = options or ConnectOptions()
    transport = connect(device, options)
    try:
        with upload_bar(artifact.model) as progress:
            return deploy_to(
                transport,
                device,
                artifact,
                log=log,
                progress=progress,
                need_micro=is_micro(budget_profile(artifact, device, None)),
                timeout=options.command_timeout,
            )
    finally:
        transport.close()


class upload_bar:
    """A progress bar for one upload (a no-op when stderr is not a terminal)."""

    def __init__(self, model: Path) -> None:
        self._name = model.name
        self._cm: Any = None

    def __enter__(self) -> Callable[[int, int], None]:
        from edgec.progress import progress

        self._cm = progress(f"uploading {self._name}", total=None)
        bar = self._cm.__enter__()
        return lambda done, total: bar.update(completed=done, total=total)

    def __exit__(self, *exc: Any) -> None:
        self._cm.__exit__(*exc)
