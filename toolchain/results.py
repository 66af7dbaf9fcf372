"""The bench result (``results/bench-<device>.json``) as typed, versioned data.

One writer (``edgec bench``, ``deploy.bench.bench_one``) and one reader
(``BenchResult.from_dict``, used by the report's ``BenchRun`` and so by
release) share these frozen dataclasses. The JSON layout is the harness's
document (``steady``, ``memory``, ``runtime``, ...) plus what the host adds:
where it ran (``device_info``, ``remote``), what measured it (``measured``:
arch, CPU, cores, kernel, runtime, threads, emulation) and the budget verdict.

``edgec.bench/1`` files (written before ``measured`` existed) are still read:
their ``measured`` is rebuilt from the harness's ``platform`` section. Any
other schema, or a missing or mistyped field, is one ``InputError`` naming the
file and the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edgec.budgets import BudgetCheck
from edgec.errors import InputError

BENCH_SCHEMA = "edgec.bench/2"
READABLE_SCHEMAS = ("edgec.bench/1", BENCH_SCHEMA)

# uname -m spellings of one architecture (macOS says arm64, Windows AMD64).
_ARCH_ALIASES = {"arm64": "aarch64", "armv8": "aarch64", "amd64": "x86_64", "x64": "x86_64"}


def normalize_arch(machine: str | None) -> str | None:
    if not machine:
        return None
    m = machine.strip().lower()
    return _ARCH_ALIASES.get(m, m)


def doc_section(doc: Mapping[str, Any], key: str) -> dict[str, Any]:
    """The harness document's table ``key``; {} when it is absent or not a table."""
    value = doc.get(key)
    return value if isinstance(value, dict) else {}


def _get(d: Mapping[str, Any], key: str, types: Any, where: str, *, optional: bool = False) -> Any:
    if key not in d or d[key] is None:
        if optional:
            return None
        raise InputError(f"{where}: field {key!r} is missing")
    value = d[key]
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise InputError(f"{where}: field {key!r} = {value!r} has the wrong type")
    if not isinstance(value, types):
        raise InputError(f"{where}: field {key!r} = {value!r} has the wrong type")
    return value


def _section(d: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    return _get(d, key, dict, where)  # type: ignore[no-any-return]


_NUM = (int, float)


@dataclass(frozen=True, kw_only=True)
class Latency:
    """Steady-state invoke times in milliseconds, with the raw samples."""

    count: int
    mean_ms: float | None = None
    std_ms: float | None = None
    min_ms: float | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    samples_ms: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"count": self.count}
        for k in ("mean_ms", "std_ms", "min_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms"):
            if getattr(self, k) is not None:
                out[k] = getattr(self, k)
        if self.samples_ms:
            out["samples_ms"] = list(self.samples_ms)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> Latency:
        w = f"{where}: steady"
        samples = _get(d, "samples_ms", list, w, optional=True) or []
        if not all(isinstance(v, _NUM) and not isinstance(v, bool) for v in samples):
            raise InputError(f"{w}: field 'samples_ms' must hold numbers")
        keys = ("mean_ms", "std_ms", "min_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms")
        stats = {k: _get(d, k, _NUM, w, optional=True) for k in keys}
        return cls(
            count=_get(d, "count", int, w),
            samples_ms=tuple(float(v) for v in samples),
            **{k: float(v) if v is not None else None for k, v in stats.items()},
        )


@dataclass(frozen=True, kw_only=True)
class Memory:
    """The harness process's memory in bytes (Linux: VmRSS, VmHWM)."""

    rss_before_load_bytes: int | None = None
    rss_after_load_bytes: int | None = None
    peak_rss_bytes: int | None = None
    peak_source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "rss_before_load_bytes": self.rss_before_load_bytes,
            "rss_after_load_bytes": self.rss_after_load_bytes,
            "peak_rss_bytes": self.peak_rss_bytes,
            "peak_source": self.peak_source,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> Memory:
        w = f"{where}: memory"
        return cls(
            rss_before_load_bytes=_get(d, "rss_before_load_bytes", int, w, optional=True),
            rss_after_load_bytes=_get(d, "rss_after_load_bytes", int, w, optional=True),
            peak_rss_bytes=_get(d, "peak_rss_bytes", int, w, optional=True),
            peak_source=_get(d, "peak_source", str, w, optional=True),
        )


@dataclass(frozen=True, kw_only=True)
class Measured:
    """What took the measurement: every figure of a result is this machine's.

    ``where`` is "device", or "host" when a microcontroller profile's model ran
    on a host's TFLM interpreter (its latency is the host's, not the MCU's).
    ``emulated`` names the emulator ("qemu-aarch64") and ``emulation_evidence``
    how it was detected; an emulator's latency is never judged.
    """

    where: str
    arch: str | None
    cpu_model: str | None
    cores: int | None
    kernel: str | None
    system: str | None
    runtime: str
    runtime_version: str
    threads: int
    emulated: str | None = None
    emulation_evidence: str | None = None
    profile_arch: str | None = None  # the target profile's arch, when a profile applies
    arch_mismatch: bool = False  # benchmarked anyway (--allow-arch-mismatch)

    @property
    def label(self) -> str:
        """One line for tables: "x86_64, Intel Xeon, 2 cores, Linux 6.1 (emulated: qemu)"."""
        parts = [p for p in (self.arch, self.cpu_model) if p]
        if self.cores:
            parts.append(f"{self.cores} cores")
        if self.kernel:
            parts.append(f"{self.system or ''} {self.kernel}".strip())
        text = ", ".join(parts) or "unknown machine"
        if self.where == "host":
            text = f"host TFLM on {text}"
        if self.emulated:
            text += f" (emulated: {self.emulated})"
        if self.arch_mismatch:
            text += f" (ARCH MISMATCH: profile wants {self.profile_arch})"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "where": self.where,
            "arch": self.arch,
            "cpu_model": self.cpu_model,
            "cores": self.cores,
            "kernel": self.kernel,
            "system": self.system,
            "runtime": self.runtime,
            "runtime_version": self.runtime_version,
            "threads": self.threads,
            "emulated": self.emulated,
            "emulation_evidence": self.emulation_evidence,
            "profile_arch": self.profile_arch,
            "arch_mismatch": self.arch_mismatch,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> Measured:
        w = f"{where}: measured"
        return cls(
            where=_get(d, "where", str, w),
            arch=_get(d, "arch", str, w, optional=True),
            cpu_model=_get(d, "cpu_model", str, w, optional=True),
            cores=_get(d, "cores", int, w, optional=True),
            kernel=_get(d, "kernel", str, w, optional=True),
            system=_get(d, "system", str, w, optional=True),
            runtime=_get(d, "runtime", str, w),
            runtime_version=_get(d, "runtime_version", str, w),
            threads=_get(d, "threads", int, w),
            emulated=_get(d, "emulated", str, w, optional=True),
            emulation_evidence=_get(d, "emulation_evidence", str, w, optional=True),
            profile_arch=_get(d, "profile_arch", str, w, optional=True),
            arch_mismatch=bool(_get(d, "arch_mismatch", bool, w, optional=True)),
        )

    @classmethod
    def from_harness(
        cls,
        doc: Mapping[str, Any],
        *,
        where: str = "device",
        emulated: str | None = None,
        emulation_evidence: str | None = None,
        profile_arch: str | None = None,
        arch_mismatch: bool = False,
    ) -> Measured:
        """From a harness document (its ``machine`` section, else the older ``platform``)."""
        machine = doc_section(doc, "machine")
        platform = doc_section(doc, "platform")
        rt = doc_section(doc, "runtime")
        emu = doc_section(machine, "emulated")
        return cls(
            where=where,
            arch=normalize_arch(machine.get("arch") or platform.get("machine")),
            cpu_model=machine.get("cpu_model"),
            cores=machine.get("cores") or platform.get("cpu_count"),
            kernel=machine.get("kernel") or platform.get("release"),
            system=machine.get("system") or platform.get("system"),
            runtime=str(rt.get("name", "unknown")),
            runtime_version=str(rt.get("version", "unknown")),
            threads=int(doc.get("threads") or 1),
            emulated=emulated or emu.get("name"),
            emulation_evidence=emulation_evidence or emu.get("evidence"),
            profile_arch=profile_arch,
            arch_mismatch=arch_mismatch,
        )


@dataclass(frozen=True, kw_only=True)
class BenchBudgets:
    """The device-side verdict; ``notes`` say which budgets were not judged, and why."""

    profile: str | None = None
    checks: tuple[BudgetCheck, ...] = ()  # edgec.budgets' verdicts
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "profile": self.profile,
            "checks": [c.to_dict() for c in self.checks],
            "ok": self.ok,
        }
        if self.notes:
            out["note"] = "; ".join(self.notes)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> BenchBudgets:
        w = f"{where}: budgets"
        checks = _get(d, "checks", list, w)
        note = _get(d, "note", str, w, optional=True)
        return cls(
            profile=_get(d, "profile", str, w, optional=True),
            checks=tuple(
                BudgetCheck.from_dict(c, f"{w}.checks[{i}]") if isinstance(c, dict) else _bad(w, i)
                for i, c in enumerate(checks)
            ),
            notes=tuple(note.split("; ")) if note else (),
        )


def _bad(where: str, i: int) -> Any:
    raise InputError(f"{where}.checks[{i}] must be an object")


@dataclass(frozen=True, kw_only=True)
class BenchResult:
    """One device's benchmark of one artifact, as stored in ``results/bench-<device>.json``."""

    device: str
    runtime: str
    runtime_version: str
    threads: int
    steady: Latency
    memory: Memory
    measured: Measured
    budgets: BenchBudgets
    init_ms: float | None = None
    first_inference_ms: float | None = None
    schema: str = BENCH_SCHEMA
    harness_schema: str | None = None
    # The rest is kept as the harness and the host wrote it (descriptive, not judged).
    device_info: dict[str, Any] = field(default_factory=dict)
    artifact: dict[str, Any] = field(default_factory=dict)
    remote: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    inputs: tuple[dict[str, Any], ...] = ()
    warmup: dict[str, Any] = field(default_factory=dict)
    output_checksum: dict[str, Any] = field(default_factory=dict)
    op_profile: dict[str, Any] = field(default_factory=dict)
    platform: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)
    runtime_candidates: tuple[dict[str, Any], ...] = ()
    # The device's outputs on fixed inputs against the host reference (edgec.agreement).
    outputs_check: dict[str, Any] | None = None
    edgec_version: str | None = None
    created: str | None = None
    wall_seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schema": self.schema,
            "harness_schema": self.harness_schema,
            "device": self.device,
            "runtime": {"name": self.runtime, "version": self.runtime_version},
            "threads": self.threads,
            "steady": self.steady.to_dict(),
            "memory": self.memory.to_dict(),
            "measured": self.measured.to_dict(),
            "budgets": self.budgets.to_dict(),
            "init_ms": self.init_ms,
            "first_inference_ms": self.first_inference_ms,
            "device_info": self.device_info,
            "artifact": self.artifact,
            "remote": self.remote,
            "model": self.model,
            "params": self.params,
            "inputs": list(self.inputs),
            "warmup": self.warmup,
            "output_checksum": self.output_checksum,
            "op_profile": self.op_profile,
            "platform": self.platform,
            "machine": self.machine,
            "runtime_candidates": list(self.runtime_candidates),
            "outputs_check": self.outputs_check,
            "edgec_version": self.edgec_version,
            "created": self.created,
            "wall_seconds": self.wall_seconds,
        }
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "bench result") -> BenchResult:
        schema = d.get("schema")
        if schema not in READABLE_SCHEMAS:
            raise InputError(
                f"{where}: field 'schema' = {schema!r} is not a bench result "
                f"(readable: {', '.join(READABLE_SCHEMAS)})"
            )
        rt = _section(d, "runtime", where)
        threads = _get(d, "threads", int, where)
        measured = (
            Measured.from_dict(_section(d, "measured", where), where)
            if schema == BENCH_SCHEMA
            else Measured.from_harness(d)
        )
        opt_dict = {
            k: _get(d, k, dict, where, optional=True) or {}
            for k in (
                "device_info",
                "artifact",
                "remote",
                "model",
                "params",
                "warmup",
                "output_checksum",
                "op_profile",
                "platform",
                "machine",
            )
        }
        inputs = _get(d, "inputs", list, where, optional=True) or []
        cands = _get(d, "runtime_candidates", list, where, optional=True) or []
        init = _get(d, "init_ms", _NUM, where, optional=True)
        first = _get(d, "first_inference_ms", _NUM, where, optional=True)
        wall = _get(d, "wall_seconds", _NUM, where, optional=True)
        return cls(
            schema=BENCH_SCHEMA,
            harness_schema=_get(d, "harness_schema", str, where, optional=True),
            device=_get(d, "device", str, where),
            runtime=_get(rt, "name", str, f"{where}: runtime"),
            runtime_version=str(_get(rt, "version", str, f"{where}: runtime", optional=True)),
            threads=threads,
            steady=Latency.from_dict(_section(d, "steady", where), where),
            memory=Memory.from_dict(_section(d, "memory", where), where),
            measured=measured,
            budgets=BenchBudgets.from_dict(_section(d, "budgets", where), where),
            init_ms=float(init) if init is not None else None,
            first_inference_ms=float(first) if first is not None else None,
            inputs=tuple(i for i in inputs if isinstance(i, dict)),
            runtime_candidates=tuple(c for c in cands if isinstance(c, dict)),
            outputs_check=_get(d, "outputs_check", dict, where, optional=True),
            edgec_version=_get(d, "edgec_version", str, where, optional=True),
            created=_get(d, "created", str, where, optional=True),
            wall_seconds=float(wall) if wall is not None else None,
            **opt_dict,
        )
