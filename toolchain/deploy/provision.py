"""Device setup and checks: which Python a device has, and what it lacks.

``probe_device`` finds the device's interpreter (its ``python``, else the venv
that ``edgec device setup`` made in the work folder, else ``python3``) and asks
it, in the same round trip as the upload plan, whether numpy and a TFLite
runtime are there. ``check_device`` is ``edgec device check``;
``setup_device`` (``edgec device setup``) makes ``<workdir>/venv`` and
pip-installs numpy and a runtime into it, from local wheels when offline.
"""

from __future__ import annotations

import json
import posixpath
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgec.deploy.devices import Device, DeviceKind, resolve_device
from edgec.deploy.options import Log, quiet
from edgec.deploy.transport import (
    NOT_FOUND,
    ConnectOptions,
    Plan,
    Transport,
    Upload,
    connect,
    plan,
    publish,
    sha256_file,
)
from edgec.errors import DeviceError, UsageError


def workdir(device: Device) -> str:
    # "~" would not expand inside a quoted argument; relative paths already
    # start in the remote home, for SFTP and for commands alike.
    w = device.workdir
    if w in ("~", "~/"):
        return "."
    return w[2:] if w.startswith("~/") else w


def venv_python(device: Device) -> str:
    return posixpath.join(workdir(device), "venv", "bin", "python")


def python_candidates(device: Device) -> list[str]:
    if device.python:
        return [device.python]
    if device.kind is DeviceKind.LOCAL:
        return [sys.executable]
    return [venv_python(device), "python3"]


@dataclass(frozen=True, kw_only=True)
class DeviceFacts:
    python: str  # the interpreter command used on the device
    probe: dict[str, Any]
    missing: tuple[str, ...] = ()
    plan: Plan | None = None
    # ``device check``: each runtime loading and running a tiny model (the
    # harness's --check-runtimes): [{"name", "status", "version", "detail"}]
    runtimes: tuple[dict[str, Any], ...] = ()
    notes: tuple[str, ...] = ()  # what the user should know (a venv that is not used)

    @property
    def ok(self) -> bool:
        return not self.missing

    def runtimes_text(self) -> str:
        if not self.runtimes:
            return runtimes_text(self.probe)
        return ", ".join(
            f"{r['name']} {r.get('version') or ''} ok".replace("  ", " ")
            if r["status"] == "ok"
            else f"{r['name']} {r['status'].upper() if r['status'] == 'crashed' else r['status']}"
            + (f" ({r['detail']})" if r["status"] not in ("ok", "not installed") else "")
            for r in self.runtimes
        )

    def to_dict(self, device: Device) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "device": device.name,
            "python": self.python,
            "missing": list(self.missing),
            "runtimes": list(self.runtimes),
            "notes": list(self.notes),
            "probe": self.probe,
        }


def harness_source() -> Path:
    from edgec import harness

    return Path(harness.__file__).with_name("harness.py")


def harness_upload(device: Device) -> Upload:
    """The harness's versioned path on the device: <workdir>/harness/<sha256[:12]>/."""
    src = harness_source()
    digest = sha256_file(src)
    return Upload(
        local=src,
        sha256=digest,
        remote=posixpath.join(workdir(device), "harness", digest[:12], "harness.py"),
    )


def facts_of(python: str, state: Plan, *, need_micro: bool) -> DeviceFacts:
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
        return facts_of(python, state, need_micro=need_micro)
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


def check_runtimes(
    transport: Transport, device: Device, facts: DeviceFacts, *, need_micro: bool, timeout: float
) -> DeviceFacts:
    """Publish the harness and have it load and run a tiny model in each runtime."""
    up = harness_upload(device)
    state = plan(transport, facts.python, [up], timeout=timeout)
    publish(transport, facts.python, [up], state, timeout=timeout)
    res = transport.run([facts.python, up.remote, "--check-runtimes", "--quiet"], timeout=300)
    text = res.stdout.decode(errors="replace")
    try:
        doc = json.loads(text[text.find("{") :]) if "{" in text else None
    except ValueError:
        doc = None
    if res.exit_code != 0 or not isinstance(doc, dict) or "runtimes" not in doc:
        raise DeviceError(
            f"{transport.label}: the runtime check failed: {last_line(res.stderr, res.exit_code)}"
        )
    runs = tuple(r for r in doc["runtimes"] if isinstance(r, dict))
    ok = {r["name"] for r in runs if r.get("status") == "ok"}
    missing = [m for m in facts.missing if "runtime" not in m]
    if need_micro and "tflm" not in ok:
        missing.append("the TFLM runtime that runs (pip install tflite-micro)")
    elif not need_micro and not ok & {"litert", "tflite_runtime"}:
        bad = "; ".join(
            f"{r['name']}: {r['status']}" + (f" ({r['detail']})" if r.get("detail") else "")
            for r in runs
            if r.get("status") != "not installed"
        )
        missing.append(
            "a TFLite runtime that runs (ai-edge-litert or tflite-runtime)"
            + (f": {bad}" if bad else "")
        )
    return replace(facts, runtimes=runs, missing=tuple(missing))


def check_device(
    spec: str,
    *,
    devices_file: Path | None = None,
    need_micro: bool = False,
    options: ConnectOptions | None = None,
) -> DeviceFacts:
    """``edgec device check``: connect, probe, load and run a tiny model in each runtime;
    raise DeviceError if something is missing or no runtime runs."""
    device = resolve_device(spec, devices_file)
    options = options or ConnectOptions()
    transport = connect(device, options)
    try:
        facts = probe_device(
            transport, device, need_micro=need_micro, timeout=options.command_timeout
        )
        if facts.probe.get("numpy"):
            facts = check_runtimes(
                transport, device, facts, need_micro=need_micro, timeout=options.command_timeout
            )
        require_ready(facts, device, transport.label)
        return facts
    finally:
        transport.close()


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
    log: Log = quiet,
) -> DeviceFacts:
    """``edgec device setup``: a venv in the work folder with numpy and a runtime.

    The venv is made by ``python`` (default: the device's ``python``, then
    ``python3``). With ``wheels`` the folder's ``*.whl`` files are uploaded and pip installs
    from them only (``--no-index --find-links``), for devices without internet.
    """
    device = resolve_device(spec, devices_file)
    if device.kind is DeviceKind.EMULATED:
        raise UsageError(
            f"{device.name}: an emulated board is set up by `edgec device emulate "
            f"{device.name.split(':', 1)[1]}` (its rootfs has numpy and ai-edge-litert)"
        )
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
        work = workdir(device)
        venv = posixpath.join(work, "venv")
        venv_py = venv_python(device)
        make_folder(transport, base, work)
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
                f"{last_line(text, res.exit_code)}{hint}"
            )
        pip_args = ["--disable-pip-version-check", "--no-input"]
        if wheels is not None:
            remote_wheels = posixpath.join(work, "wheels")
            ups = [
                Upload.of(w, posixpath.join(remote_wheels, w.name))
                for w in sorted(Path(wheels).glob("*.whl"))
            ]
            make_folder(transport, venv_py, remote_wheels)
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
                f"{last_line(text, res.exit_code)}"
            )
        facts = probe_device(transport, replace(device, python=venv_py))
        require_ready(facts, device, transport.label)
        if device.python and device.python != venv_py:
            # Said plainly: the devices file's python wins over the venv.
            note = (
                f"device {device.name} sets python = {device.python!r}, so bench and deploy "
                f"use that interpreter, not this venv; remove 'python' from the devices file "
                f"(or set it to {venv_py!r}) to use the venv"
            )
            log(f"note: {note}")
            facts = replace(facts, notes=(note,))
        log(
            f"ready: {venv_py} (Python {facts.probe.get('python')}, numpy "
            f"{facts.probe.get('numpy')}, runtimes {runtimes_text(facts.probe)})"
        )
        return facts
    finally:
        transport.close()


def make_folder(transport: Transport, python: str, folder: str) -> None:
    # A plan for a file that is never sent: the helper makes its folder.
    plan(
        transport, python, [Upload(local=Path(), remote=posixpath.join(folder, ".keep"), sha256="")]
    )


def last_line(text: str, code: int) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else f"exit code {code}"


def runtimes_text(probe: dict[str, Any]) -> str:
    rts = probe.get("runtimes") or {}
    return ", ".join(f"{k} {v}" for k, v in rts.items() if v) or "none"
