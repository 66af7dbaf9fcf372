"""A benchmark on one device: deploy if needed, run the harness, store the result.

The flow (``bench_one``): connect, then, when the model and the harness are
already on the device with the same sha256, verify and run in one command
(the fast path). Otherwise the same command answers with the device's plan
(probe and file states); one more command receives what differs, verifies and
renames it, and runs the harness. The harness's JSON goes to the artifact's
``results/bench-<device>.json``, checked against the target profile's latency
and RAM budgets (not on an emulated device, whose timings are an
emulator's). With an outputs check (``--check-outputs``, the default on
emulated devices) the harness also returns the outputs of fixed seeded inputs,
compared with the host reference (``edgec.agreement``). Few commands matter: each SSH command starts the device
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
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edgec import __version__, agreement
from edgec.deploy.devices import Device
from edgec.deploy.options import Artifact, BenchOptions, Log, budget_profile, is_micro, quiet
from edgec.deploy.protocol import NotReady, harness_args, run_harness
from edgec.deploy.provision import facts_of, probe_device, python_candidates, require_ready
from edgec.deploy.publish import deployment, planned_uploads
from edgec.deploy.transport import Transfer, connect, transfer_for
from edgec.errors import DeviceError, EdgecError

BENCH_SCHEMA = "edgec.bench/1"


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """One device's bench: a result document, or the error that stopped it."""

    device: Device
    result: dict[str, Any] | None = None
    error: EdgecError | None = None
    path: Path | None = None  # where the result was stored

    @property
    def ok(self) -> bool:
        return self.error is None and self.result is not None

    @property
    def budgets_ok(self) -> bool:
        return bool(self.result and self.result.get("budgets", {}).get("ok", True))

    @property
    def outputs_ok(self) -> bool:
        return bool(self.result and (self.result.get("outputs_check") or {}).get("ok", True))


def check_budgets(
    doc: dict[str, Any], profile: dict[str, Any] | None, emulated: str | None = None
) -> dict[str, Any]:
    """Latency (steady p50) and RAM (peak RSS) against the profile's budgets.

    On an emulated device neither is judged: its timings and its memory (qemu's
    own included) are the emulator's, not the board's; they are reported as such.
    """
    if not profile:
        return {"profile": None, "checks": [], "ok": True}
    if emulated:
        return {
            "profile": profile.get("name"),
            "checks": [],
            "ok": True,
            "note": f"emulated ({emulated}): latency and memory are the emulator's, "
            "reported but never judged against the profile's budgets",
        }
    budgets = profile.get("budgets") or {}
    checks = []
    latency = budgets.get("latency_ms")
    if latency is not None:
        p50 = doc["steady"]["p50_ms"]
        checks.append({"name": "latency_ms", "limit": latency, "value": p50, "ok": p50 <= latency})
    ram = budgets.get("ram_bytes")
    note = None
    if ram is not None and profile.get("runtime") == "tflm":
        # A microcontroller's RAM budget is the arena, checked by the build's
        # TFLM fit check; a Linux process's RSS says nothing about it.
        note = "ram_bytes of a TFLM target is the arena (checked by the build), not process RSS"
    elif ram is not None:
        peak = doc["memory"].get("peak_rss_bytes")
        if peak is not None:
            checks.append({"name": "ram_bytes", "limit": ram, "value": peak, "ok": peak <= ram})
    out: dict[str, Any] = {
        "profile": profile.get("name"),
        "checks": checks,
        "ok": all(c["ok"] for c in checks),
    }
    if note:
        out["note"] = note
    return out


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
        runtime = "tflm" if micro else "auto"
        uploads = planned_uploads(device, artifact, options.inputs)
        transport = connect(device, options.connect)
        try:
            checking = (
                options.check_outputs
                if options.check_outputs is not None
                else transport.emulated is not None
            )
            stored, check = check_plan(artifact, options) if checking else (None, None)
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
            emulated = transport.emulated
        finally:
            transport.close()
        outputs = (
            check_outputs(artifact, doc, stored, threads=threads, where=f"device {device.name}")
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
    result = {
        **doc,
        "schema": BENCH_SCHEMA,
        "harness_schema": doc.get("schema"),
        "device": device.name,
        "device_info": {**device.to_dict(), "address": dep.label, "python": dep.python},
        "artifact": {
            "path": str(artifact.model),
            "file": artifact.model.name,
            "sha256": dep.model.sha256,
            "bytes": dep.model.bytes,
        },
        "remote": {
            "model": dep.model.remote,
            "harness": dep.harness.remote,
            "uploaded": dep.model.uploaded,
        },
        "emulated": emulated is not None,
        "emulator": emulated,
        "budgets": check_budgets(doc, profile, emulated),
        "edgec_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "wall_seconds": round(time.monotonic() - start, 3),
    }
    if outputs is not None:
        result["outputs_check"] = outputs
    path = None
    if options.save:
        from edgec.report import write_atomic

        path = artifact.results_dir / f"bench-{device.slug}.json"
        write_atomic(path, (json.dumps(result, indent=1, sort_keys=True) + "\n").encode())
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
    stored: dict[str, Any] | None,
    *,
    threads: int,
    where: str,
) -> dict[str, Any]:
    """Compare the harness's ``outputs_check`` with the stored or a fresh host reference.

    The raw outputs leave the result document: it keeps the comparison only.
    """
    from edgec.modelinfo import read_model

    section = doc.pop("outputs_check", None)
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
