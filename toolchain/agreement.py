"""Output agreement: a device's outputs on fixed inputs against the host reference.

``edgec bench --check-outputs`` (the default on emulated boards) asks the
harness for the raw outputs of a fixed set of seeded inputs (the harness's own
``random_inputs`` with seeds ``SEED .. SEED+N-1``) and compares them with the
host reference: the same harness, run on this machine with LiteRT (TFLM for a
microcontroller artifact) on the same inputs. The build stores that reference
in the artifact (``reference-outputs.json``, named in the manifest), so an
artifact whose model was changed after the build is caught by what it computes;
without a stored reference the host runs it at bench time.

Differences are counted in quantization steps: the raw integers of an int8
output, or ``|a - b| / scale`` of a float output that a DEQUANTIZE makes from
an integer tensor. Pure float outputs are compared relative to the reference's
largest magnitude. Top-1 agreement is reported over all rows and over the
decisive ones (the reference's top-1 leads by more than twice the row's
largest difference): a flip there is never rounding.

Tolerances depend on the pair of runtimes and are stated in every result
(``TOLERANCES``: what was measured, and the margin on top).
"""

from __future__ import annotations

import base64
import json
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgec.errors import InputError, VerifyError
from edgec.manifest import Manifest
from edgec.modelinfo import ModelInfo

REFERENCE_FILE = "reference-outputs.json"
REFERENCE_SCHEMA = "edgec.reference-outputs/1"
DEFAULT_COUNT = 16
DEFAULT_SEED = 0
HOST_TIMEOUT_S = 300.0


@dataclass(frozen=True, kw_only=True)
class Tolerance:
    """How far a device may be from the reference for one pair of runtimes, and why."""

    max_steps: int  # quantized outputs (and float outputs dequantized from integers)
    max_relative: float  # pure float outputs: max |a - b| / max |reference|
    basis: str

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "decisive_top1": 1.0}


# (device runtime, reference runtime) -> tolerance.
TOLERANCES: dict[tuple[str, str], Tolerance] = {
    ("litert", "litert"): Tolerance(
        max_steps=2,
        max_relative=1e-4,
        basis="measured: ai-edge-litert 2.3 on emulated aarch64 (qemu cortex-a72) vs x86-64 "
        "differed by at most 1 step over 100 ResNet-8 inputs; 1 step of margin",
    ),
    ("tflite_runtime", "litert"): Tolerance(
        max_steps=24,
        max_relative=1e-2,
        basis="measured: tflite-runtime 2.14 (older kernels) vs ai-edge-litert 2.3 differed "
        "by up to 17 steps on ResNet-8; about 40% of margin",
    ),
    ("tflm", "tflm"): Tolerance(
        max_steps=1,
        max_relative=1e-5,
        basis="TFLM's reference kernels are integer-exact on any instruction set: 0 steps "
        "expected; 1 step allows a different TFLM version",
    ),
}
FALLBACK = Tolerance(
    max_steps=24,
    max_relative=1e-2,
    basis="no measurement for this pair of runtimes: the widest tolerance edgec uses",
)


def tolerance_for(device: dict[str, Any], reference: dict[str, Any]) -> Tolerance:
    """The tolerance for a device runtime ({"name", "version"}) against the reference's."""
    tol = TOLERANCES.get((str(device.get("name")), str(reference.get("name"))), FALLBACK)
    same_kind = device.get("name") == reference.get("name")
    if same_kind and tol is not FALLBACK and device.get("version") != reference.get("version"):
        return Tolerance(
            max_steps=FALLBACK.max_steps,
            max_relative=FALLBACK.max_relative,
            basis=f"{device.get('name')} {device.get('version')} on the device vs "
            f"{reference.get('version')} on the host: kernels may differ between versions, "
            "so the widest tolerance",
        )
    return tol


def reference_runtime(device_runtime: str) -> str:
    """The host runtime that is the reference for a device runtime."""
    return "tflm" if device_runtime == "tflm" else "litert"


# ------------------------------------------------------------------ decoding
def decode(section: dict[str, Any], where: str) -> list[np.ndarray]:
    """The stacked raw outputs of a harness ``outputs_check`` section."""
    try:
        return [
            np.frombuffer(base64.b64decode(o["data"]), dtype=np.dtype(o["dtype"])).reshape(
                o["shape"]
            )
            for o in section["outputs"]
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise VerifyError(f"{where}: the outputs check carries no valid outputs ({exc})") from exc


# ------------------------------------------------------------------ comparing
def _step_of(info: ModelInfo, k: int) -> float | None:
    """The quantization step of output ``k``: its own scale, or that of the integer
    tensor a DEQUANTIZE turns into it; None for a plain float output."""
    tensor = info.output_tensors[k]
    if tensor.scales and tensor.dtype in ("int8", "uint8", "int16", "int32"):
        return 1.0  # raw integers: one unit is one step
    for op in info.ops:
        if op.name == "DEQUANTIZE" and tensor.index in op.outputs and op.inputs:
            source = info.tensors[op.inputs[0]]
            if source.scales and len(source.scales) == 1:
                return float(source.scales[0])
    return None


def decisive_top1(a: np.ndarray, ref: np.ndarray) -> tuple[float | None, int]:
    """Top-1 agreement over the rows whose reference top-1 leads by more than twice the
    row's largest difference (a near-tie can flip under any rounding), and their count."""
    a2 = a.reshape(len(a), -1).astype(np.float64)
    r2 = ref.reshape(len(ref), -1).astype(np.float64)
    if r2.shape[1] < 2:
        return None, 0
    top2 = np.sort(r2, axis=1)[:, -2:]
    lead = top2[:, 1] - top2[:, 0]
    row_diff = np.abs(a2 - r2).max(axis=1)
    decisive = lead > 2 * row_diff
    if not decisive.any():
        return None, 0
    same = a2.argmax(-1) == r2.argmax(-1)
    return float(np.mean(same[decisive])), int(decisive.sum())


def _compare_one(
    k: int, got: np.ndarray, ref: np.ndarray, step: float | None, tol: Tolerance
) -> dict[str, Any]:
    g64, r64 = got.astype(np.float64), ref.astype(np.float64)
    diff = np.abs(g64 - r64)
    max_abs = float(diff.max()) if diff.size else 0.0
    flat_ref = r64.reshape(len(r64), -1)
    top1 = (
        float(np.mean(g64.reshape(len(g64), -1).argmax(-1) == flat_ref.argmax(-1)))
        if flat_ref.shape[1] > 1
        else None
    )
    decisive, rows = decisive_top1(got, ref)
    out: dict[str, Any] = {
        "index": k,
        "dtype": got.dtype.name,
        "shape": list(got.shape[1:]),
        "max_abs": max_abs,
        "top1_agreement": top1,
        "decisive_top1": decisive,
        "decisive_rows": rows,
    }
    if step is not None:
        steps = round(max_abs / step) if step > 0 else 0
        out.update(unit="steps", step=step, max_steps=steps)
        within = steps <= tol.max_steps
    else:
        scale = float(np.abs(r64).max()) if r64.size else 0.0
        rel = max_abs / scale if scale > 0 else max_abs
        out.update(unit="relative", max_relative=rel)
        within = rel <= tol.max_relative
    out["ok"] = bool(within and (decisive is None or decisive >= 1.0))
    return out


def compare(
    device_section: dict[str, Any],
    device_runtime: dict[str, Any],
    reference: dict[str, Any],
    info: ModelInfo,
    *,
    where: str,
) -> dict[str, Any]:
    """The agreement of a device's ``outputs_check`` with a reference (``host_reference``)."""
    ref_section = reference["outputs_check"]
    for key in ("generator", "seed", "count"):
        if device_section.get(key) != ref_section.get(key):
            raise VerifyError(
                f"{where}: the device ran other check inputs than the reference "
                f"({key} {device_section.get(key)!r} vs {ref_section.get(key)!r})"
            )
    got, want = decode(device_section, where), decode(ref_section, "the reference")
    if [g.shape for g in got] != [w.shape for w in want]:
        raise VerifyError(
            f"{where}: the device's outputs have shapes {[list(g.shape) for g in got]}, the "
            f"reference's {[list(w.shape) for w in want]}"
        )
    tol = tolerance_for(device_runtime, reference["runtime"])
    outs = [
        _compare_one(k, g, w, _step_of(info, k) if k < len(info.outputs) else None, tol)
        for k, (g, w) in enumerate(zip(got, want, strict=True))
    ]
    steps = [o["max_steps"] for o in outs if o["unit"] == "steps"]
    return {
        "ok": all(o["ok"] for o in outs),
        "inputs": {k: ref_section[k] for k in ("generator", "seed", "count")},
        "device_runtime": {
            "name": device_runtime.get("name"),
            "version": device_runtime.get("version"),
        },
        "reference": {k: v for k, v in reference.items() if k != "outputs_check"},
        "tolerance": tol.to_dict(),
        "max_steps": max(steps) if steps else None,
        "top1_agreement": outs[0]["top1_agreement"] if outs else None,
        "outputs": outs,
    }


def summary(check: dict[str, Any]) -> str:
    """One line: "ok: max 1 step (tolerance 2), top-1 16/16 vs litert 2.3.0 on x86_64"."""
    tol = check["tolerance"]
    n = check["inputs"]["count"]
    parts = []
    if check.get("max_steps") is not None:
        parts.append(f"max {check['max_steps']} step(s) (tolerance {tol['max_steps']})")
    rel = [o["max_relative"] for o in check["outputs"] if o["unit"] == "relative"]
    if rel:
        parts.append(f"max relative {max(rel):.2g} (tolerance {tol['max_relative']:g})")
    top1 = check.get("top1_agreement")
    if top1 is not None:
        parts.append(f"top-1 {round(top1 * n)}/{n}")
    ref = check["reference"]
    rt = ref.get("runtime") or {}
    parts.append(f"vs {rt.get('name')} {rt.get('version')} on {ref.get('machine')}")
    return f"{'ok' if check['ok'] else 'MISMATCH'}: " + ", ".join(parts)


def mismatch_error(check: dict[str, Any], where: str) -> VerifyError:
    bad = next(o for o in check["outputs"] if not o["ok"])
    tol = check["tolerance"]
    if bad["unit"] == "steps":
        what = f"output {bad['index']} differs by {bad['max_steps']} steps (tolerance {tol['max_steps']})"
    else:
        what = (
            f"output {bad['index']} differs by {bad['max_relative']:.3g} of its range "
            f"(tolerance {tol['max_relative']:g})"
        )
    if bad["decisive_top1"] is not None and bad["decisive_top1"] < 1.0:
        what += f", decisive top-1 agreement {bad['decisive_top1']:.0%}"
    ref = check["reference"]
    return VerifyError(
        f"{where}: outputs differ from the reference ({ref.get('source')}): {what} over "
        f"{check['inputs']['count']} seeded inputs; tolerance basis: {tol['basis']}"
    )


# ------------------------------------------------------------------ the host reference
def host_reference(
    model: Path,
    *,
    runtime: str = "litert",
    count: int = DEFAULT_COUNT,
    seed: int = DEFAULT_SEED,
    threads: int = 1,
    source: str = "host",
) -> dict[str, Any]:
    """Run the harness on this machine (a child process) for the check inputs' outputs.

    The same program as on the device, so inputs and runner are the same code.
    """
    from edgec.deploy.provision import harness_source

    argv = [sys.executable, str(harness_source()), str(model), "--runtime", runtime]
    argv += ["--threads", str(threads), "--runs", "1", "--warmup-runs", "0", "--quiet"]
    argv += ["--check-outputs", str(count), "--check-seed", str(seed)]
    argv += ["--timeout", f"{HOST_TIMEOUT_S:g}"]
    try:
        res = subprocess.run(argv, capture_output=True, timeout=HOST_TIMEOUT_S + 10, check=False)
    except subprocess.TimeoutExpired:
        raise InputError(f"{model}: the host reference run did not finish") from None
    lines = [ln for ln in res.stderr.decode(errors="replace").splitlines() if ln.strip()]
    if res.returncode != 0:
        reason = lines[-1] if lines else f"exit code {res.returncode}"
        raise InputError(f"{model}: the host reference run ({runtime}) failed: {reason}")
    doc = json.loads(res.stdout)
    return {
        "schema": REFERENCE_SCHEMA,
        "source": source,
        "runtime": doc["runtime"],
        "machine": platform.machine(),
        "threads": doc["threads"],
        "model_sha256": doc["model"]["sha256"],
        "outputs_check": doc["outputs_check"],
    }


def stored_reference(folder: Path, manifest: Manifest | None) -> dict[str, Any] | None:
    """The reference the build stored in an artifact folder, if its manifest names one."""
    entry = manifest.reference_outputs if manifest is not None else None
    if not isinstance(entry, dict):
        return None
    path = folder / str(entry.get("file", REFERENCE_FILE))
    try:
        ref = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise VerifyError(f"{path}: the stored reference outputs are unreadable ({exc})") from exc
    if not isinstance(ref, dict) or ref.get("schema") != REFERENCE_SCHEMA:
        raise VerifyError(f"{path}: not an edgec reference-outputs file")
    return ref


def build_reference(content: bytes, *, micro: bool, threads: int) -> tuple[bytes, dict[str, Any]]:
    """At build time: the file to store beside the model and its manifest entry."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="edgec-ref-") as tmp:
        path = Path(tmp) / "model.tflite"
        path.write_bytes(content)
        ref = host_reference(
            path,
            runtime="tflm" if micro else "litert",
            threads=threads,
            source="stored at build",
        )
    data = (json.dumps(ref, indent=1, sort_keys=True) + "\n").encode()
    entry = {
        "file": REFERENCE_FILE,
        "inputs": {k: ref["outputs_check"][k] for k in ("generator", "seed", "count")},
        "runtime": ref["runtime"],
        "machine": ref["machine"],
        "threads": ref["threads"],
    }
    return data, entry
