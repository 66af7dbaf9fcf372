"""Deploy, device checks and setup, benchmarks on one device or a fleet.

The flow for one device (``bench_one``): connect, then, when the model and
the harness are already on the device with the same sha256, verify and run in
one command (the fast path). Otherwise probe the device (Python, numpy, a
TFLite runtime) and plan the upload in one command, upload what differs under
temporary names, then verify, rename into the versioned folders and run the
harness in one more command. The harness runs with a timeout while its progress
streams back; its JSON goes to the artifact's ``results/bench-<device>.json``,
checked against the target profile's latency and RAM budgets. ``bench`` runs
that flow on one device or fans it out to a group with bounded concurrency,
where one failing device does not stop the others, and prints the results side
by side. Few commands matter: each SSH command starts the device user's login
shell, which costs from milliseconds to half a second.

Remote layout, under the device's work folder (default ``.edgec`` in the
remote home)::

    harness/<sha256[:12]>/harness.py
    models/<model>/<sha256[:12]>/model.tflite
    venv/                       (made by `edgec device setup`)
    wheels/                     (offline wheels uploaded by setup --wheels)

Nothing is recorded as a success unless the harness exited 0 and printed a
valid document; every failure is one ``DeviceError`` line.
"""

from __future__ import annotations

import contextlib
import json
import posixpath
import re
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edgec import __version__
from edgec.deploy.devices import Device, DeviceKind, resolve_device, resolve_group
from edgec.deploy.transport import (
    NOT_FOUND,
    Plan,
    Published,
    Transfer,
    Transport,
    Upload,
    device_op,
    not_ready,
    plan,
    publish,
    run_verified_argv,
    sha256_file,
    transfer_failure,
    transfer_for,
)
from edgec.errors import BudgetError, DeviceError, EdgecError, InputError, UsageError
from edgec.modelinfo import require_identifier
from edgec.signing import require_signed

Log = Callable[[str], None]
BENCH_SCHEMA = "edgec.bench/1"
RESULTS_DIR = "results"
# Grace on top of the harness's own watchdog: the host kills only a harness
# that could not even start its watchdog (a hung import, a stuck device).
HOST_GRACE_SECS = 10.0


def _quiet(_line: str) -> None:
    pass


@dataclass(frozen=True, kw_only=True)
class ConnectOptions:
    accept_new_host_key: bool = False
    connect_timeout: float = 10.0
    command_timeout: float = 60.0  # device helper commands (probe, verify, rename)
    local_home: Path | None = None  # the local device's work folder (tests, benchmarks)


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
    save: bool = True
    connect: ConnectOptions = field(default_factory=ConnectOptions)


# ------------------------------------------------------------------ artifacts
@dataclass(frozen=True, kw_only=True)
class Artifact:
    model: Path  # the .tflite file to run
    folder: Path  # where results/ goes
    manifest: dict[str, Any] | None
    name: str  # remote folder name

    @property
    def results_dir(self) -> Path:
        return self.folder / RESULTS_DIR


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "model"


def locate_artifact(path: Path) -> Artifact:
    """An artifact folder (its model.tflite and manifest) or a bare .tflite file."""
    path = Path(path)
    manifest = None
    if path.is_dir():
        model, folder = path / "model.tflite", path
        mpath = path / "manifest.json"
        if mpath.is_file():
            try:
                manifest = json.loads(mpath.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise InputError(f"{mpath}: unreadable manifest ({exc})") from exc
            if not isinstance(manifest, dict):
                raise InputError(f"{mpath}: a manifest must be a JSON object")
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
    if manifest and isinstance(manifest.get("model"), dict) and manifest["model"].get("name"):
        target = (
            manifest.get("target", {}).get("name")
            if isinstance(manifest.get("target"), dict)
            else None
        )
        name = manifest["model"]["name"] + (f"-{target}" if target else "")
    return Artifact(model=model, folder=folder, manifest=manifest, name=_safe(name))


def budget_profile(artifact: Artifact, device: Device, target: str | None) -> dict[str, Any] | None:
    """The profile (as a dict) whose budgets apply: --target, the manifest's, or the device's."""
    from edgec.profiles import load_profile

    if target:
        return load_profile(target).to_dict()
    if artifact.manifest and isinstance(artifact.manifest.get("target"), dict):
        return artifact.manifest["target"]
    if device.profile:
        return load_profile(device.profile).to_dict()
    return None


# ------------------------------------------------------------------ connecting
def connect(device: Device, options: ConnectOptions | None = None) -> Transport:
    """Open the device's transport. Raises DeviceError with one line on failure."""
    options = options or ConnectOptions()
    if device.kind is DeviceKind.LOCAL:
        from edgec.deploy.local import LocalTransport

        return LocalTransport(options.local_home)
    from edgec.deploy.ssh import SSHTransport, resolve_target

    assert device.host is not None
    target = resolve_target(
        device.host,
        name=device.name,
        port=device.port,
        user=device.user,
        key=device.key,
        connect_timeout=options.connect_timeout,
        accept_new_host_key=options.accept_new_host_key,
    )
    return SSHTransport(target)


def _workdir(device: Device) -> str:
    # "~" would not expand inside a quoted argument; relative paths already
    # start in the remote home, for SFTP and for commands alike.
    w = device.workdir
    if w in ("~", "~/"):
        return "."
    return w[2:] if w.startswith("~/") else w


def _venv_python(device: Device) -> str:
    return posixpath.join(_workdir(device), "venv", "bin", "python")


def python_candidates(device: Device) -> list[str]:
    if device.python:
        return [device.python]
    if device.kind is DeviceKind.LOCAL:
        return [sys.executable]
    return [_venv_python(device), "python3"]


@dataclass(frozen=True, kw_only=True)
class DeviceFacts:
    python: str  # the interpreter command used on the device
    probe: dict[str, Any]
    missing: tuple[str, ...] = ()
    plan: Plan | None = None

    @property
    def ok(self) -> bool:
        return not self.missing


def _facts(python: str, state: Plan, *, need_micro: bool) -> DeviceFacts:
    probe = state.probe
    missing = []
    if not probe.get("numpy"):
        missing.append("numpy")
    rts = probe.get("runtimes") or {}
    if need_micro and not rts.get("tflm"):
        missing.append("the TFLM runtime (pip install tflite-micro)")
    elif not need_micro and not (rts.get("litert") or rts.get("tflite_runtime")):
        missing.append("a TFLite runtime (ai-edge-litert or tflite-runtime)")
    return DeviceFacts(python=python, probe=probe, missing=tuple(missing), plan=state)


def probe_device(
    transport: Transport,
    device: Device,
    *,
    need_micro: bool = False,
    uploads: list[Upload] | None = None,
    timeout: float = 60.0,
) -> DeviceFacts:
    """Which Python the device has, whether numpy and a runtime are importable, and
    (same round trip) the state of the paths ``uploads`` will publish to."""
    candidates = python_candidates(device)
    last: DeviceError | None = None
    for python in candidates:
        try:
            state = plan(transport, python, uploads or [], timeout=timeout)
        except DeviceError as exc:
            if "not found on the device" not in str(exc):
                raise
            last = exc
            continue
        return _facts(python, state, need_micro=need_micro)
    assert last is not None
    tried = " or ".join(repr(c) for c in candidates)
    raise DeviceError(
        f"{transport.label}: no Python found on the device (tried {tried}); "
        f"install Python 3 or set 'python' for device {device.name!r}"
    )


def require_ready(facts: DeviceFacts, device: Device, label: str) -> None:
    if facts.ok:
        return
    raise DeviceError(
        f"device {device.name} ({label}): {facts.python} (Python {facts.probe.get('python')}) "
        f"is missing {' and '.join(facts.missing)}; run `edgec device setup {device.name}` to "
        "install them into a virtual environment on the device (--wheels DIR when it is offline)"
    )


def check_device(
    spec: str,
    *,
    devices_file: Path | None = None,
    need_micro: bool = False,
    options: ConnectOptions | None = None,
) -> DeviceFacts:
    """``edgec device check``: connect, probe, raise DeviceError if something is missing."""
    device = resolve_device(spec, devices_file)
    transport = connect(device, options)
    try:
        facts = probe_device(transport, device, need_micro=need_micro)
        require_ready(facts, device, transport.label)
        return facts
    finally:
        transport.close()


# ------------------------------------------------------------------ setup
SETUP_PACKAGES = ("numpy", "ai-edge-litert")


def setup_device(
    spec: str,
    *,
    devices_file: Path | None = None,
    wheels: Path | None = None,
    packages: tuple[str, ...] = SETUP_PACKAGES,
    system_site_packages: bool = False,
    python: str | None = None,
    options: ConnectOptions | None = None,
    log: Log = _quiet,
) -> DeviceFacts:
    """``edgec device setup``: a venv in the work folder with numpy and a runtime.

    The venv is made by ``python`` (default: the device's ``python``, then
    ``python3``). With ``wheels`` the folder's ``*.whl`` files are uploaded and pip installs
    from them only (``--no-index --find-links``), for devices without internet.
    """
    device = resolve_device(spec, devices_file)
    if wheels is not None and not Path(wheels).is_dir():
        raise UsageError(f"--wheels {wheels}: not a directory of .whl files")
    options = options or ConnectOptions()
    transport = connect(device, options)
    try:
        base = (
            python
            or device.python
            or ("python3" if device.kind is DeviceKind.SSH else sys.executable)
        )
        work = _workdir(device)
        venv = posixpath.join(work, "venv")
        venv_py = _venv_python(device)
        _make_folder(transport, base, work)
        log(f"creating {venv} with {base}")
        argv = [
            base,
            "-m",
            "venv",
            *(["--system-site-packages"] if system_site_packages else []),
            venv,
        ]
        res = transport.run(argv, timeout=600, on_stderr_line=log)
        if res.exit_code == NOT_FOUND:
            raise DeviceError(
                f"{transport.label}: python {base!r} not found on the device; "
                "install Python 3 (apt install python3) or set 'python'"
            )
        if res.exit_code != 0:
            text = res.stderr + res.stdout.decode(errors="replace")
            hint = (
                " (install python3-venv: sudo apt install python3-venv)"
                if "ensurepip" in text
                else ""
            )
            raise DeviceError(
                f"{transport.label}: cannot create a venv at {venv!r}: "
                f"{_last_line(text, res.exit_code)}{hint}"
            )
        pip_args = ["--disable-pip-version-check", "--no-input"]
        if wheels is not None:
            remote_wheels = posixpath.join(work, "wheels")
            ups = [
                Upload.of(w, posixpath.join(remote_wheels, w.name))
                for w in sorted(Path(wheels).glob("*.whl"))
            ]
            _make_folder(transport, venv_py, remote_wheels)
            state = plan(transport, venv_py, ups)
            for pub in publish(transport, venv_py, ups, state):
                log(f"{'uploaded' if pub.uploaded else 'already on device'}: {pub.remote}")
            pip_args += ["--no-index", "--find-links", remote_wheels]
        log(f"pip install {' '.join(packages)}")
        res = transport.run(
            [venv_py, "-m", "pip", "install", *pip_args, *packages],
            timeout=1800,
            on_stderr_line=log,
        )
        if res.exit_code != 0:
            text = res.stderr + "\n" + res.stdout.decode(errors="replace")
            raise DeviceError(
                f"{transport.label}: pip install into {venv!r} failed: "
                f"{_last_line(text, res.exit_code)}"
            )
        facts = probe_device(transport, replace(device, python=venv_py))
        require_ready(facts, device, transport.label)
        log(
            f"ready: {venv_py} (Python {facts.probe.get('python')}, numpy "
            f"{facts.probe.get('numpy')}, runtimes {_runtimes(facts.probe)})"
        )
        return facts
    finally:
        transport.close()


def _make_folder(transport: Transport, python: str, folder: str) -> None:
    # A plan for a file that is never sent: the helper makes its folder.
    plan(
        transport, python, [Upload(local=Path(), remote=posixpath.join(folder, ".keep"), sha256="")]
    )


def _last_line(text: str, code: int) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else f"exit code {code}"


def _runtimes(probe: dict[str, Any]) -> str:
    rts = probe.get("runtimes") or {}
    return ", ".join(f"{k} {v}" for k, v in rts.items() if v) or "none"


# ------------------------------------------------------------------ deploy
@dataclass(frozen=True, kw_only=True)
class Deployment:
    device: Device
    label: str
    python: str
    model: Published
    harness: Published
    inputs: Published | None = None
    probe: dict[str, Any] = field(default_factory=dict)


def harness_source() -> Path:
    from edgec import harness

    return Path(harness.__file__).with_name("harness.py")


def planned_uploads(device: Device, artifact: Artifact, inputs: Path | None = None) -> list[Upload]:
    """Model, harness (and inputs) with their versioned remote paths, computed locally."""
    work = _workdir(device)
    digest = sha256_file(artifact.model)
    src = harness_source()
    hdigest = sha256_file(src)
    uploads = [
        Upload(
            local=artifact.model,
            sha256=digest,
            remote=posixpath.join(work, "models", artifact.name, digest[:12], artifact.model.name),
        ),
        Upload(
            local=src,
            sha256=hdigest,
            remote=posixpath.join(work, "harness", hdigest[:12], "harness.py"),
        ),
    ]
    if inputs is not None:
        idigest = sha256_file(inputs)
        uploads.append(
            Upload(
                local=inputs,
                sha256=idigest,
                remote=posixpath.join(work, "inputs", idigest[:12], _safe(inputs.name)),
            )
        )
    return uploads


def _deployment(
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


def _say_deployed(log: Log, model: Published) -> None:
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
    log: Log = _quiet,
    progress: Callable[[int, int], None] | None = None,
    timeout: float = 60.0,
) -> Deployment:
    """Check the device, then publish the model, the harness and inputs (idempotent)."""
    uploads = planned_uploads(device, artifact, inputs)
    facts = probe_device(transport, device, need_micro=need_micro, uploads=uploads, timeout=timeout)
    require_ready(facts, device, transport.label)
    assert facts.plan is not None
    pubs = publish(transport, facts.python, uploads, facts.plan, progress=progress, timeout=timeout)
    _say_deployed(log, pubs[0])
    return _deployment(device, transport.label, facts.python, pubs, facts.probe)


def deploy(
    artifact_path: Path,
    spec: str,
    *,
    devices_file: Path | None = None,
    options: ConnectOptions | None = None,
    allowed_signers: Path | None = None,
    log: Log = _quiet,
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
        with _upload_bar(artifact.model) as progress:
            return deploy_to(
                transport,
                device,
                artifact,
                log=log,
                progress=progress,
                need_micro=_is_micro(budget_profile(artifact, device, None)),
                timeout=options.command_timeout,
            )
    finally:
        transport.close()


class _upload_bar:
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


def _is_micro(profile: dict[str, Any] | None) -> bool:
    return bool(profile) and profile.get("runtime") == "tflm"  # type: ignore[union-attr]


# ------------------------------------------------------------------ bench
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


def check_budgets(doc: dict[str, Any], profile: dict[str, Any] | None) -> dict[str, Any]:
    """Latency (steady p50) and RAM (peak RSS) against the profile's budgets."""
    if not profile:
        return {"profile": None, "checks": [], "ok": True}
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


def harness_args(
    uploads: list[Upload], options: BenchOptions, threads: int, runtime: str
) -> list[str]:
    """The harness command line on the device (after the interpreter)."""
    args = [
        uploads[1].remote,
        uploads[0].remote,
        "--runtime",
        runtime,
        "--threads",
        str(threads),
        "--warmup-runs",
        str(options.warmup),
        "--runs",
        str(options.runs),
        "--min-secs",
        f"{options.min_secs:g}",
        "--max-secs",
        f"{options.max_secs:g}",
        "--seed",
        str(options.seed),
        "--timeout",
        f"{options.timeout:g}",
    ]
    if len(uploads) > 2:
        args += ["--input", uploads[2].remote]
    return args


class _NotReady(Exception):
    """The fast path could not start the harness: deploy and check first."""

    def __init__(self, reason: str, state: Plan | None = None) -> None:
        super().__init__(reason)
        self.state = state  # the device's plan answer, when it sent one


# Harness exit code for "no usable runtime / numpy": the device needs setup.
_HARNESS_NO_RUNTIME = 4


def run_harness(
    transport: Transport,
    device: Device,
    python: str,
    args: list[str],
    options: BenchOptions,
    *,
    transfer: Transfer,
    log: Log = _quiet,
    announce: str = "",
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Send ``transfer``'s files, verify the deployed bytes and run the harness: one command.

    Returns the harness's JSON document. Raises _NotReady when the files are not
    deployed (or the interpreter or runtime is missing), DeviceError on a crash,
    a timeout or bad output.
    """
    pid: list[str] = []
    errors: list[str] = []

    def on_line(line: str) -> None:
        text = line.removeprefix("edgec-harness:").strip()
        if text.startswith("pid ") and not pid:
            pid.append(text[4:].strip())
            if announce:
                log(announce)
            return
        if text.startswith("error: "):
            errors.append(text[len("error: ") :])
        if line.startswith("edgec-harness:"):
            log(text)

    argv = run_verified_argv(python, args, transfer)
    res = transport.run(
        argv,
        timeout=options.timeout + HOST_GRACE_SECS,
        on_stderr_line=on_line,
        stdin=transfer.files,
        progress=progress,
    )
    where = f"device {device.name} ({transport.label})"
    if res.timed_out:
        if pid:
            with contextlib.suppress(DeviceError):  # the harness's own watchdog still fires
                device_op(transport, python, "kill", pid[0], timeout=15)
        raise DeviceError(
            f"{where}: the harness did not finish within {options.timeout:g} s "
            "and was killed; raise --timeout or lower --runs"
        )
    answer = not_ready(res.stdout) if not pid else None
    if answer is not None:
        if answer.get("commit"):
            raise transfer_failure(transport, answer)
        got = answer.get("plan")
        state = Plan(probe=got["probe"], states=got["files"]) if isinstance(got, dict) else None
        raise _NotReady(answer.get("reason", "not deployed"), state)
    if res.exit_code == NOT_FOUND and not pid:
        raise _NotReady(f"python {python!r} not found")
    if res.exit_code == _HARNESS_NO_RUNTIME:
        raise _NotReady(errors[-1] if errors else "no runtime")
    if res.exit_code != 0:
        watchdog = res.seconds >= options.timeout - 0.5 and (
            res.exit_code in (-1, 128 + 14, -14) or res.signal in ("SIGALRM", "unknown")
        )
        if watchdog:
            raise DeviceError(
                f"{where}: the harness did not finish within {options.timeout:g} s "
                "and was killed; raise --timeout or lower --runs"
            )
        if errors:
            raise DeviceError(f"{where}: the harness failed: {errors[-1]}")
        if res.signal or res.exit_code < 0 or res.exit_code > 128:
            sig = res.signal if res.signal and res.signal != "unknown" else "a signal"
            raise DeviceError(
                f"{where}: the harness crashed (killed by {sig}, exit "
                f"{res.exit_code}); nothing was recorded"
            )
        raise DeviceError(
            f"{where}: the harness failed (exit {res.exit_code}): "
            f"{_last_line(res.stderr, res.exit_code)}"
        )
    text = res.stdout.decode(errors="replace")
    # A chatty login shell (an echo in ~/.bashrc) may print before the document.
    text = text[text.find("{") :] if "{" in text else text
    try:
        doc = json.loads(text)
        if not isinstance(doc, dict) or "steady" not in doc:
            raise ValueError("no steady-state section")
    except ValueError as exc:
        raise DeviceError(
            f"{where}: the harness printed no valid JSON document ({exc}); nothing was recorded"
        ) from exc
    return doc


def bench_one(
    artifact: Artifact,
    device: Device,
    options: BenchOptions,
    *,
    log: Log = _quiet,
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
        micro = _is_micro(profile)
        threads = options.threads or (int(profile["threads"]) if profile else 1)
        runtime = "tflm" if micro else "auto"
        uploads = planned_uploads(device, artifact, options.inputs)
        args = harness_args(uploads, options, threads, runtime)
        transport = connect(device, options.connect)
        try:
            if getattr(transport, "recorded_host_key", None):
                log(f"recorded new host key {transport.recorded_host_key}")  # type: ignore[attr-defined]
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
            except _NotReady as first:
                if first.state is not None:  # the device already answered the plan
                    facts = _facts(python, first.state, need_micro=micro)
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
                except _NotReady as exc:
                    raise DeviceError(
                        f"device {device.name} ({transport.label}): the harness "
                        f"could not start after deploying: {exc}"
                    ) from None
            dep = _deployment(device, transport.label, python, pubs)
        finally:
            transport.close()
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
        "budgets": check_budgets(doc, profile),
        "edgec_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "wall_seconds": round(time.monotonic() - start, 3),
    }
    path = None
    if options.save:
        from edgec.report import write_atomic

        path = artifact.results_dir / f"bench-{device.slug}.json"
        write_atomic(path, (json.dumps(result, indent=1, sort_keys=True) + "\n").encode())
    return Outcome(device=device, result=result, path=path)


def summary_rows(outcomes: list[Outcome]) -> list[list[str]]:
    """The side-by-side comparison: one row per device."""
    rows = [
        [
            "device",
            "status",
            "runtime",
            "threads",
            "runs",
            "p50 ms",
            "p90 ms",
            "mean ms",
            "init ms",
            "peak RSS MB",
            "budgets",
        ]
    ]
    for o in outcomes:
        if not o.ok:
            rows.append([o.device.name, "FAILED", *["-"] * 8, str(o.error)])
            continue
        r = o.result or {}
        s, m = r["steady"], r["memory"]
        peak = m.get("peak_rss_bytes")
        b = r["budgets"]
        btxt = (
            "ok"
            if b["ok"]
            else "EXCEEDED: "
            + ", ".join(
                f"{c['name']} {c['value']:.4g} > {c['limit']:.4g}"
                for c in b["checks"]
                if not c["ok"]
            )
        )
        rows.append(
            [
                o.device.name,
                "ok",
                f"{r['runtime']['name']} {r['runtime']['version']}",
                str(r["threads"]),
                str(s["count"]),
                f"{s['p50_ms']:.3f}",
                f"{s['p90_ms']:.3f}",
                f"{s['mean_ms']:.3f}",
                f"{r['init_ms']:.1f}",
                f"{peak / 2**20:.1f}" if peak else "-",
                btxt if b["checks"] else "-",
            ]
        )
    return rows


def format_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows if i < len(r)) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        cells = [c.ljust(widths[i]) if i < len(r) - 1 else c for i, c in enumerate(r)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def bench(
    artifact_path: Path,
    *,
    device: str | None = None,
    group: str | None = None,
    devices_file: Path | None = None,
    options: BenchOptions | None = None,
    allowed_signers: Path | None = None,
    log: Log = _quiet,
    out: Log = _quiet,
) -> list[Outcome]:
    """``edgec bench``: one device or a group; ``out`` gets the side-by-side table.

    Progress goes to ``log``. Raises (after the table) DeviceError when a device
    failed, else BudgetError when a budget was exceeded.
    """
    options = options or BenchOptions()
    if options.runs < 1 or options.warmup < 0 or options.timeout <= 0 or options.jobs < 1:
        raise UsageError("--runs and --jobs must be >= 1, --warmup >= 0, --timeout > 0")
    if options.threads is not None and options.threads < 1:
        raise UsageError("--threads must be >= 1")
    if options.inputs is not None and not Path(options.inputs).is_file():
        raise UsageError(f"--inputs {options.inputs}: no such .npy/.npz file")
    if device and group:
        raise UsageError("give --device or --group, not both")
    require_signed(artifact_path, allowed_signers)
    artifact = locate_artifact(artifact_path)
    devices = (
        resolve_group(group, devices_file)
        if group
        else [resolve_device(device or "local", devices_file)]
    )

    lock = threading.Lock()

    def logger(name: str) -> Log:
        def emit(line: str) -> None:
            with lock:
                log(f"[{name}] {line}" if len(devices) > 1 else line)

        return emit

    if len(devices) == 1:
        with _upload_bar(artifact.model) as progress:
            outcomes = [
                bench_one(
                    artifact, devices[0], options, log=logger(devices[0].name), progress=progress
                )
            ]
    else:
        with ThreadPoolExecutor(max_workers=min(options.jobs, len(devices))) as pool:
            futures = [
                pool.submit(bench_one, artifact, d, options, log=logger(d.name)) for d in devices
            ]
            outcomes = [f.result() for f in futures]

    if any(o.ok for o in outcomes) and options.save and artifact.manifest is not None:
        _refresh_report(artifact, log)
    for o in outcomes:
        if o.path is not None:
            log(f"stored {o.path}")
    failed = [o for o in outcomes if not o.ok]
    if len(devices) == 1 and failed:
        raise failed[0].error  # type: ignore[misc]
    out(format_table(summary_rows(outcomes)))
    if failed:
        names = ", ".join(o.device.name for o in failed)
        raise DeviceError(
            f"{len(failed)} of {len(outcomes)} devices failed ({names}); "
            f"the others' results were stored; first error: {failed[0].error}"
        )
    over = [o for o in outcomes if not o.budgets_ok]
    if over:
        first = over[0].result["budgets"]  # type: ignore[index]
        bad = next(c for c in first["checks"] if not c["ok"])
        raise BudgetError(
            f"device {over[0].device.name}: {bad['name']} budget of profile {first['profile']!r} "
            f"exceeded: measured {bad['value']:.4g}, limit {bad['limit']:.4g}"
            + (f" ({len(over)} devices over budget)" if len(over) > 1 else "")
        )
    return outcomes


def _refresh_report(artifact: Artifact, log: Log) -> None:
    """Re-render the artifact's report so it shows the new latency and memory."""
    try:
        from edgec.report import render_reports

        render_reports(artifact.folder)
    except EdgecError as exc:
        log(f"report not updated: {exc}")
