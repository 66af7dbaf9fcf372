"""A benchmark on one device: deploy if needed, run the harness, store the result.

The flow (``bench_one``): connect, then, when the model and the harness are
already on the device with the same sha256, verify and run in one command
(the fast path). Otherwise the same command answers with the device's plan
(probe and file states); one more command receives what differs, verifies and
renames it, and runs the harness. The harness's JSON goes to the artifact's
``results/bench-<device>.json``, checked against the target profile's latency
and RAM budgets. With an outputs check (``--check-outputs``, the default on
emulated devices) the harness also returns the outputs of fixed seeded inputs,
compared with the host reference (``edgec.agreement``); a difference beyond
the runtimes' tolerance is stored and then fails the run (exit 7). Few commands matter: each SSH command starts the device
user's login shell, which costs from milliseconds to half a second.

Nothing is recorded as a success unless the harness exited 0 and printed a
valid document; every failure is one ``DeviceError`` line, kept in the
``Outcome`` so that a fleet (``fleet.bench``) carries on with the others.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edgec import __version__, agreement
from edgec.budgets import Figure, Measurements, Source
from edgec.budgets import check_budgets as judge
from edgec.deploy.devices import Device
from edgec.deploy.options import Artifact, BenchOptions, Log, budget_profile, is_micro, quiet
from edgec.deploy.protocol import NotReady, harness_args, run_harness
from edgec.deploy.provision import facts_of, probe_device, python_candidates, require_ready
from edgec.deploy.publish import deployment, planned_uploads
from edgec.deploy.transport import Transfer, Transport, connect, transfer_for
from edgec.errors import DeviceError, EdgecError, InputError
from edgec.profiles import Budgets
from edgec.results import (
    BENCH_SCHEMA,
    BenchBudgets,
    BenchResult,
    Measured,
    doc_section,
    normalize_arch,
)

HARNESS_RUNTIME = {"tflite-runtime": "tflite_runtime"}


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """One device's bench: a result document, or the error that stopped it."""

    device: Device
    result: BenchResult | None = None
    error: EdgecError | None = None
    path: Path | None = None  # where the result was stored

    @property
    def ok(self) -> bool:
        return self.error is None and self.result is not None

    @property
    def budgets_ok(self) -> bool:
        return self.result is None or self.result.budgets.ok

    @property
    def outputs_ok(self) -> bool:
        check = self.result.outputs_check if self.result is not None else None
        return check is None or bool(check.get("ok"))

    def to_dict(self) -> dict[str, Any]:
        """The machine-readable outcome: the result, or the failure and its exit code."""
        if self.result is not None:
            return {
                "device": self.device.name,
                "ok": True,
                "stored": str(self.path) if self.path else None,
                "result": self.result.to_dict(),
            }
        assert self.error is not None
        return {
            "device": self.device.name,
            "ok": False,
            "error": str(self.error),
            "exit_code": int(self.error.exit_code),
        }


def check_budgets(
    doc: dict[str, Any], profile: dict[str, Any] | None, measured: Measured
) -> BenchBudgets:
    """Latency (steady p50) and RAM (peak RSS) against the profile's budgets.

    The judgement is ``edgec.budgets``'s, from figures that say what measured
    them: only the device's own latency is judged (not an emulator's, nor a host
    TFLM's standing in for a microcontroller), and nothing of a device whose arch
    is not the profile's.
    """
    if not profile:
        return BenchBudgets()
    raw = profile.get("budgets") or {}
    limits = Budgets(**{f.name: raw.get(f.name) for f in fields(Budgets)})
    notes: list[str] = []
    if measured.arch_mismatch:
        if limits.latency_ms is not None or limits.ram_bytes is not None:
            notes.append(
                f"not judged: measured on {measured.arch}, the profile is for "
                f"{measured.profile_arch} (--allow-arch-mismatch)"
            )
        return BenchBudgets(profile=profile.get("name"), notes=tuple(notes))
    what = f"steady p50 over {doc['steady']['count']} runs, {measured.threads} thread(s)"
    if measured.where == "host":
        source, what = Source.EMULATOR, f"{what} on a host's TFLM, not the microcontroller"
    elif measured.emulated:
        source, what = Source.EMULATOR, f"{what} on an emulator ({measured.emulated})"
    else:
        source = Source.DEVICE
    latency = Figure(value=doc["steady"]["p50_ms"], source=source, what=what)
    peak = doc["memory"].get("peak_rss_bytes")
    ram = None
    if measured.where == "host":
        # A microcontroller's RAM budget is the arena, checked by the build's
        # TFLM fit check; a Linux process's RSS says nothing about it.
        if limits.ram_bytes is not None:
            notes.append(
                "ram_bytes of a TFLM target is the arena (checked by the build), not process RSS"
            )
    elif measured.emulated:
        # Under qemu-user the process's RSS holds the emulator and its translated code too,
        # so it is not the board's figure: recorded in the result, never judged.
        if limits.ram_bytes is not None:
            notes.append(
                f"ram_bytes not judged: the peak RSS on an emulator ({measured.emulated}) "
                "includes the emulator's own memory"
            )
    elif peak is not None:
        ram = Figure(value=peak, source=source, what="peak RSS of the harness process")
    report = judge(limits, Measurements(latency_ms=latency, ram_bytes=ram))
    return BenchBudgets(
        profile=profile.get("name"), checks=report.checks, notes=(*report.notes, *notes)
    )


def check_arch(
    device: Device,
    label: str,
    profile: dict[str, Any] | None,
    machine: str | None,
    *,
    allow: bool,
) -> bool:
    """Whether the device's machine (uname -m) differs from the profile's ``arch``.

    Raises DeviceError (exit 6) on a mismatch unless ``allow``. A microcontroller
    profile runs on a host's TFLM interpreter, so its arch is not compared.
    """
    if not profile or is_micro(profile) or not profile.get("arch") or not machine:
        return False
    want, got = normalize_arch(str(profile["arch"])), normalize_arch(machine)
    if want == got:
        return False
    if allow:
        return True
    raise DeviceError(
        f"device {device.name} ({label}) is {got}, profile {profile.get('name')!r} is for "
        f"{want}: its results would not be the target's; benchmark on a {want} device, "
        "or pass --allow-arch-mismatch to store them labelled as mismatched"
    )


def _measured(
    doc: dict[str, Any], profile: dict[str, Any] | None, transport: Transport, mismatch: bool
) -> Measured:
    emulated = transport.emulated
    return Measured.from_harness(
        doc,
        where="host" if is_micro(profile) else "device",
        emulated=emulated,
        emulation_evidence=f"the {transport.label} transport" if emulated else None,
        profile_arch=normalize_arch(str(profile["arch"]))
        if profile and profile.get("arch")
        else None,
        arch_mismatch=mismatch,
    )


def bench_one(
    artifact: Artifact,
    device: Device,
    options: BenchOptions,
    *,
    log: Log = quiet,
    progress: Callable[[int, int], None] | None = None,
) -> Outcome:
    """The whole flow on one device; failures become the Outcome's error, never a result.

    Fast path, one command: when the model and harness are already deployed (same
    sha256), verify and run at once; when not, that same command answers with the
    device's plan (probe and file states). Then one more command receives what
    differs on stdin, verifies and renames it, and runs the harness.
    """
    start = time.monotonic()
    try:
        profile = budget_profile(artifact, device, options.target)
        micro = is_micro(profile)
        threads = options.threads or (int(profile["threads"]) if profile else 1)
        runtime = HARNESS_RUNTIME.get(options.runtime, options.runtime)
        if runtime == "auto" and micro:
            runtime = "tflm"
        uploads = planned_uploads(device, artifact, options.inputs)
        transport = connect(device, options.connect)
        try:
            checking = (
                options.check_outputs
                if options.check_outputs is not None
                else transport.emulated is not None
            )
            stored, check = check_plan(artifact, options) if checking else (None, None)
            if runtime == "auto" and transport.emulated:
                # An emulated board's rootfs holds exactly one runtime (edgec.deploy.emulate):
                # the auto probe would only cost one more emulated interpreter start.
                runtime = "litert"
            args = harness_args(uploads, options, threads, runtime, check)
            for notice in transport.notices():
                log(notice)
            running = (
                f"running the harness: {options.runs} runs, {threads} thread(s), "
                f"timeout {options.timeout:g} s"
            )
            python = python_candidates(device)[0]
            try:
                doc = run_harness(
                    transport,
                    device,
                    python,
                    args,
                    options,
                    transfer=(fast := Transfer.verify_only(uploads)),
                    log=log,
                    announce=f"already on device (same sha256), not re-uploaded: "
                    f"{uploads[0].remote}; {running}",
                )
                pubs = fast.published
            except NotReady as first:
                if first.state is not None:  # the device already answered the plan
                    facts = facts_of(python, first.state, need_micro=micro)
                else:
                    facts = probe_device(
                        transport,
                        device,
                        need_micro=micro,
                        uploads=uploads,
                        timeout=options.connect.command_timeout,
                    )
                require_ready(facts, device, transport.label)
                # Refuse before running: the probe already knows the machine.
                check_arch(
                    device,
                    transport.label,
                    profile,
                    facts.probe.get("machine"),
                    allow=options.allow_arch_mismatch,
                )
                assert facts.plan is not None
                python = facts.python
                transfer = transfer_for(transport, uploads, facts.plan)
                pubs = transfer.published
                if transfer.files:
                    log(f"uploading {', '.join(f.name for f in transfer.files)}")
                try:
                    doc = run_harness(
                        transport,
                        device,
                        python,
                        args,
                        options,
                        transfer=transfer,
                        log=log,
                        announce=f"{'uploaded' if pubs[0].uploaded else 'already on device'}: "
                        f"{pubs[0].remote}; {running}",
                        progress=progress,
                    )
                except NotReady as exc:
                    raise DeviceError(
                        f"device {device.name} ({transport.label}): the harness "
                        f"could not start after deploying: {exc}"
                    ) from None
            dep = deployment(device, transport.label, python, pubs)
            machine = doc_section(doc, "machine")
            mismatch = check_arch(
                device,
                transport.label,
                profile,
                machine.get("arch"),
                allow=options.allow_arch_mismatch,
            )
            measured = _measured(doc, profile, transport, mismatch)
        finally:
            transport.close()
        section = doc.pop("outputs_check", None)
        outputs = (
            check_outputs(
                artifact, doc, section, stored, threads=threads, where=f"device {device.name}"
            )
            if check is not None
            else None
        )
        if outputs is not None:
            log(f"outputs {agreement.summary(outputs)}")
    except EdgecError as exc:
        msg = str(exc)
        named = f"device {device.name} " in msg or f"device {device.name}:" in msg
        if not named and not msg.startswith(device.name):  # say which device, once
            m = re.match(r"(\S+@\S+:\d+|local): (.*)", msg)
            msg = f"({m[1]}): {m[2]}" if m else f": {msg}"
            exc = type(exc)(f"device {device.name} {msg}".replace(" :", ":"))
        return Outcome(device=device, error=exc)
    if mismatch:
        log(
            f"ARCH MISMATCH: measured on {measured.arch}, not {measured.profile_arch}; "
            "stored labelled as mismatched, no budget judged"
        )
    try:
        result = BenchResult.from_dict(
            {
                **doc,
                "schema": BENCH_SCHEMA,
                "harness_schema": doc.get("schema"),
                "device": device.name,
                "measured": measured.to_dict(),
                "budgets": check_budgets(doc, profile, measured).to_dict(),
                "outputs_check": outputs,
                "edgec_version": __version__,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "wall_seconds": round(time.monotonic() - start, 3),
            },
            f"the harness's answer from device {device.name}",
        )
    except InputError as exc:
        return Outcome(device=device, error=DeviceError(f"{exc}; nothing was recorded"))
    result = replace(
        result,
        device_info={**device.to_dict(), "address": dep.label, "python": dep.python},
        artifact={
            "path": str(artifact.model),
            "file": artifact.model.name,
            "sha256": dep.model.sha256,
            "bytes": dep.model.bytes,
        },
        remote={
            "model": dep.model.remote,
            "harness": dep.harness.remote,
            "uploaded": dep.model.uploaded,
        },
    )
    path = None
    if options.save:
        from edgec.report import write_atomic

        path = artifact.results_dir / f"bench-{device.slug}.json"
        text = json.dumps(result.to_dict(), indent=1, sort_keys=True) + "\n"
        write_atomic(path, text.encode())
    return Outcome(device=device, result=result, path=path)


def check_plan(
    artifact: Artifact, options: BenchOptions
) -> tuple[dict[str, Any] | None, tuple[int, int]]:
    """The reference the build stored (if it fits the asked count) and the check inputs
    (count, seed) the device must run: the stored reference's, else the defaults."""
    stored = agreement.stored_reference(artifact.folder, artifact.manifest)
    if stored is not None:
        inputs = stored["outputs_check"]
        if options.check_count in (None, inputs["count"]):
            return stored, (int(inputs["count"]), int(inputs["seed"]))
    count = options.check_count or agreement.DEFAULT_COUNT
    return None, (count, agreement.DEFAULT_SEED)


def check_outputs(
    artifact: Artifact,
    doc: dict[str, Any],
    section: Any,
    stored: dict[str, Any] | None,
    *,
    threads: int,
    where: str,
) -> dict[str, Any]:
    """Compare the harness's ``outputs_check`` with the stored or a fresh host reference.

    Only the comparison goes into the result, not the raw outputs.
    """
    from edgec.modelinfo import read_model

    if not isinstance(section, dict):
        raise DeviceError(f"{where}: the harness returned no outputs for the outputs check")
    reference = stored or agreement.host_reference(
        artifact.model,
        runtime=agreement.reference_runtime(doc["runtime"]["name"]),
        count=int(section.get("count", 0)),
        seed=int(section.get("seed", 0)),
        threads=threads,
    )
    content = artifact.model.read_bytes()
    result = agreement.compare(
        section, doc["runtime"], reference, read_model(content, str(artifact.model)), where=where
    )
    result["reference"]["model_changed_since"] = reference["model_sha256"] != doc["model"]["sha256"]
    return result
