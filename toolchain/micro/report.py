"""The fit report: will it run, will it fit, and TFLM against LiteRT on the same artifact.

``fit_report`` runs an artifact in TFLM (``edgec.micro.tflm``) and in LiteRT on
the same quantized inputs, compares the outputs, estimates flash (model bytes +
runtime and kernel code, ``edgec.micro.costs``) and RAM (arena incl. persistent
buffers + margin + interpreter objects), and checks both against the profile.
``MicroReport.raise_for_failures`` turns a miss into a ``BudgetError`` naming the
numbers and the biggest contributors. It works for any ``.tflite``, not only for
ones edgec built.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgec.agreement import decisive_top1
from edgec.budgets import (
    BudgetCheck,
    Figure,
    Measurements,
    Source,
    check_budgets,
    flash_figure,
)
from edgec.errors import BudgetError, ConversionError, InputError
from edgec.micro.costs import cost_table, runtime_code
from edgec.micro.elf import ElfSizes, read_elf
from edgec.micro.tflm import Allocation, TFLMRun, recommended_arena, run_tflm
from edgec.modelinfo import ModelInfo, Tensor, read_model
from edgec.profiles import Profile

_DTYPE_BYTES = {
    "float32": 4,
    "int32": 4,
    "uint32": 4,
    "float16": 2,
    "int16": 2,
    "int8": 1,
    "uint8": 1,
    "bool": 1,
    "int64": 8,
    "float64": 8,
}


def tensor_bytes(t: Tensor) -> int:
    if t.dtype == "int4":  # two weights a byte in the flatbuffer (TFLM unpacks them in RAM)
        return (t.elements + 1) // 2
    return t.elements * _DTYPE_BYTES.get(t.dtype, 4)


@dataclass(frozen=True, kw_only=True)
class Agreement:
    """TFLM against LiteRT on the same artifact and the same quantized inputs.

    The check is against LiteRT's *reference* kernels (``BUILTIN_REF``), which do
    the same integer arithmetic as TFLM's: a real difference there is a TFLM or
    model bug. LiteRT's default optimized kernels (XNNPACK, ruy) round
    differently, and on deep int8 nets drift by tens of output steps; that figure
    is reported too, but does not fail anything.
    """

    rows: int
    top1_agreement: float | None  # vs LiteRT reference kernels; None for a single output
    max_abs_diff: float  # vs LiteRT reference kernels, in dequantized output units
    max_diff_steps: int  # vs LiteRT reference kernels, in output quantization steps
    ok: bool
    optimized_top1_agreement: float | None = None  # vs LiteRT's default (optimized) kernels
    optimized_max_diff_steps: int | None = None
    # Rows whose reference top-1 leads the runner-up by more than twice the row's largest
    # difference: only there must top-1 agree (a near-tie may flip under any rounding).
    decisive_rows: int = 0
    decisive_top1_agreement: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "against": "LiteRT reference kernels (BUILTIN_REF)",
            "top1_agreement": self.top1_agreement,
            "max_abs_diff": self.max_abs_diff,
            "max_diff_steps": self.max_diff_steps,
            "decisive_rows": self.decisive_rows,
            "decisive_top1_agreement": self.decisive_top1_agreement,
            "ok": self.ok,
            "litert_optimized": {
                "top1_agreement": self.optimized_top1_agreement,
                "max_diff_steps": self.optimized_max_diff_steps,
            },
        }


def litert_raw_outputs(content: bytes, rows: np.ndarray, *, reference_kernels: bool) -> np.ndarray:
    """Raw output tensor 0 of LiteRT for each of ``rows`` (already in the input dtype)."""
    from edgec.runtime import interpreter_class

    cls, _ = interpreter_class()
    kwargs: dict[str, Any] = {}
    if reference_kernels:
        import importlib

        module = importlib.import_module(cls.__module__)
        kind = getattr(module, "OpResolverType", None)
        if kind is not None:
            kwargs["experimental_op_resolver_type"] = kind.BUILTIN_REF
    it = cls(model_content=content, **kwargs)
    it.allocate_tensors()
    i = it.get_input_details()[0]["index"]
    o = it.get_output_details()[0]["index"]
    outs = []
    for row in rows:
        it.set_tensor(i, row[None])
        it.invoke()
        outs.append(np.array(it.get_tensor(o)))
    return np.stack(outs)


def _compare(a: np.ndarray, b: np.ndarray) -> tuple[float | None, int]:
    """(top-1 agreement or None, max difference) of two raw output batches."""
    a2, b2 = a.reshape(len(a), -1), b.reshape(len(b), -1)
    top1 = float(np.mean(a2.argmax(-1) == b2.argmax(-1))) if a2.shape[1] > 1 else None
    return top1, int(np.abs(a2.astype(np.int64) - b2.astype(np.int64)).max())


@dataclass(frozen=True, kw_only=True)
class MicroReport:
    """Will it fit, will it run: everything the build and ``inspect --target`` show."""

    profile: str
    model_bytes: int
    ops: dict[str, int]
    arena_total: int
    arena_head: int
    arena_tail: int
    arena_required: int  # smallest arena TFLM runs in: total, or more if init needs temporaries
    persistent: tuple[Allocation, ...]
    arena_margin: float
    arena_recommended: int
    arena_verified: bool
    runtime_code_bytes: int
    runtime_code_estimated: bool  # True: edgec's per-op table; False: the profile's figure
    kernel_code_bytes: dict[str, int]
    interpreter_ram_bytes: int
    flash_bytes: int
    ram_bytes: int
    checks: tuple[BudgetCheck, ...]  # edgec.budgets judged them (see ``figures``)
    agreement: Agreement | None
    inputs_source: str  # "given" or "synthetic (seeded random)"
    invoke_ms_median: float | None
    largest_activations: tuple[tuple[str, int], ...]
    largest_weights: tuple[tuple[str, int], ...]
    tflm_version: str
    notes: tuple[str, ...] = field(default_factory=tuple)
    # int4 weights: TFLM unpacks each into an int8 arena scratch buffer while its op
    # runs; the largest such buffer is a lower bound of what that costs (in the arena).
    int4_unpack_bytes: int = 0
    # A linked firmware's sizes: flash and static RAM are then measured, not estimated.
    firmware: ElfSizes | None = None
    code_uncertainty: float | None = None  # of the code estimate, as a fraction

    @property
    def measured(self) -> bool:
        """Flash and RAM come from a linked ELF (``--firmware-elf``)."""
        return self.firmware is not None

    def figures(self) -> Measurements:
        """Flash and RAM as the budget model's figures, each with what measured it and, for
        a failed check, the line that names the numbers (``check_budgets`` input)."""
        details = self._details()
        return measurements(
            model_bytes=self.model_bytes,
            code=self.runtime_code_bytes,
            ram=self.ram_bytes,
            flash_source=self.flash_source,
            measured=self.measured,
            flash_detail=details.get("flash_bytes", ""),
            ram_detail=details.get("ram_bytes", ""),
        )

    def _details(self) -> dict[str, str]:
        failed = [c for c in self.checks if not c.ok]
        return {c.name: line for c, line in zip(failed, self.failures(), strict=True)}

    @property
    def flash_source(self) -> str:
        if self.firmware is not None:
            return "measured"
        return "estimate" if self.runtime_code_estimated else "profile"

    def _how(self, what: str) -> str:
        if self.firmware is not None:
            return f" (measured from {Path(self.firmware.path).name})"
        if what == "flash" and not self.runtime_code_estimated:
            return " (profile)"
        unc = (
            ""
            if self.code_uncertainty is None or what != "flash"
            else f" ±{self.code_uncertainty:.0%}"
        )
        return f" (estimate{unc})"

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks) and (self.agreement is None or self.agreement.ok)

    def failures(self) -> list[str]:
        """One line per failed check, each with the numbers and the biggest contributors."""
        out = []
        for c in self.checks:
            if c.ok:
                continue
            est = self._how("flash")
            if c.name == "flash_bytes":
                top = ", ".join(f"{n!r} {b:,} B" for n, b in self.largest_weights[:3])
                out.append(
                    f"flash {c.value:,} bytes > flash_bytes {c.limit:,} of profile "
                    f"{self.profile!r} (model {self.model_bytes:,} + runtime and kernels "
                    f"{self.runtime_code_bytes:,}{est}"
                    f"); largest weights: {top or 'none'}; prune, cluster or shrink those layers"
                )
            elif c.name == "ram_bytes" and self.firmware is not None:
                top = ", ".join(f"{n!r} {b:,} B" for n, b in self.largest_activations[:3])
                fw = self.firmware
                out.append(
                    f"static RAM {c.value:,} bytes > ram_bytes {c.limit:,} of profile "
                    f"{self.profile!r} (measured: {Path(fw.path).name} data {fw.data:,} + bss "
                    f"{fw.bss:,}, with kTensorArenaSize {self.arena_recommended:,} for this model); "
                    f"largest activations: {top or 'none'}; reduce input size or early layer width"
                )
            elif c.name == "ram_bytes":
                top = ", ".join(f"{n!r} {b:,} B" for n, b in self.largest_activations[:3])
                out.append(
                    f"RAM {c.value:,} bytes > ram_bytes {c.limit:,} of profile {self.profile!r} "
                    f"(TFLM arena {self.arena_total:,} = head {self.arena_head:,} + persistent "
                    f"tail {self.arena_tail:,}, needs {self.arena_required:,}, "
                    f"+ {self.arena_margin:.0%} margin = "
                    f"{self.arena_recommended:,}, + interpreter {self.interpreter_ram_bytes:,}); "
                    f"largest activations: {top or 'none'}; reduce input size or early layer width"
                )
        return out

    @property
    def arena_note(self) -> str:
        """Where ``kTensorArenaSize`` comes from, for the firmware header."""
        return (
            f"= {self.arena_required:,} bytes TFLM needed for this model (measured on the host) "
            f"x (1 + {self.arena_margin:.0%} margin), rounded up to 16"
        )

    def summary_line(self) -> str:
        """One line for the build log."""
        limits = {c.name: c.limit for c in self.checks}

        def of(name: str) -> str:
            return "" if limits.get(name) is None else f" / {limits[name]:,}"

        line = (
            f"arena {self.arena_required:,} B (kTensorArenaSize {self.arena_recommended:,}, "
            f"+{self.arena_margin:.0%}), RAM {self.ram_bytes:,}{of('ram_bytes')} B, flash "
            f"{self.flash_bytes:,}{of('flash_bytes')} B"
            f"{'' if self.flash_source == 'profile' else self._how('flash')}"
        )
        if self.agreement is not None:
            a = self.agreement
            t1 = "n/a" if a.top1_agreement is None else f"{a.top1_agreement:.0%}"
            line += (
                f", TFLM vs LiteRT top-1 {t1}, max diff {a.max_diff_steps} steps"
                f"{'' if a.ok else ' (DISAGREE)'}"
            )
        return line

    def budget_checks(self) -> list[dict[str, Any]]:
        """The flash and RAM checks for the manifest's ``budgets.checks``; a failed one
        carries ``detail``: the numbers and the biggest contributors, one line."""
        details = self._details()
        return [
            {
                **c.to_dict(),
                "measured": self.measured,
                **({"detail": details[c.name]} if c.name in details else {}),
            }
            for c in self.checks
        ]

    def raise_for_failures(self) -> None:
        """Raise ``ConversionError`` if TFLM disagrees with LiteRT, ``BudgetError`` on a miss."""
        if self.agreement is not None and not self.agreement.ok:
            a = self.agreement
            d1 = "n/a" if a.decisive_top1_agreement is None else f"{a.decisive_top1_agreement:.2%}"
            raise ConversionError(
                f"TFLM and LiteRT (reference kernels) disagree on this artifact: top-1 agreement "
                f"{d1} over {a.decisive_rows} decisive of {a.rows} rows, max difference "
                f"{a.max_diff_steps} quantization steps ({a.max_abs_diff:.4g})"
            )
        fails = self.failures()
        if fails:
            raise BudgetError("; and ".join(fails))

    def to_dict(self) -> dict[str, Any]:
        """The manifest's ``micro`` key."""
        return {
            "profile": self.profile,
            "model_bytes": self.model_bytes,
            "ops": self.ops,
            "arena": {
                "total": self.arena_total,
                "head": self.arena_head,
                "tail": self.arena_tail,
                "required": self.arena_required,
                "margin": self.arena_margin,
                "recommended": self.arena_recommended,
                "recommended_verified": self.arena_verified,
                "measured_on": "host (64-bit) TFLM: an upper bound for a 32-bit core, whose "
                "persistent structs hold 4-byte pointers",
            },
            "persistent": [a.to_dict() for a in self.persistent],
            "flash": {
                "bytes": self.flash_bytes,
                "model_bytes": self.model_bytes,
                "runtime_code_bytes": self.runtime_code_bytes,
                "runtime_code_source": {
                    "estimate": "estimate (edgec per-op table, targets/costs/)",
                    "profile": "profile micro.runtime_code_bytes",
                    "measured": "measured (firmware ELF: text + rodata + data, less its g_model)",
                }[self.flash_source],
                "kernel_code_bytes": self.kernel_code_bytes,
                "source": self.flash_source,
                "estimate_uncertainty": self.code_uncertainty
                if self.flash_source == "estimate"
                else None,
            },
            "ram": {
                "bytes": self.ram_bytes,
                "arena_recommended": self.arena_recommended,
                "interpreter_estimate": self.interpreter_ram_bytes,
                "int4_unpack_scratch_bytes": self.int4_unpack_bytes,
                "source": "measured (firmware ELF: data + bss)" if self.measured else "estimate",
            },
            "firmware_elf": None if self.firmware is None else self.firmware.to_dict(),
            "checks": [c.to_dict() for c in self.checks],
            "ok": self.ok,
            "agreement": self.agreement.to_dict() if self.agreement else None,
            "inputs": self.inputs_source,
            "host_invoke_ms_median": self.invoke_ms_median,
            "largest_activations": [{"name": n, "bytes": b} for n, b in self.largest_activations],
            "largest_weights": [{"name": n, "bytes": b} for n, b in self.largest_weights],
            "tflm": self.tflm_version,
            "notes": list(self.notes),
        }

    def format_text(self) -> str:
        """A human report, a few lines wide."""
        est = self._how("flash")
        lines = [
            f"TFLM fit for {self.profile}  ({self.tflm_version}, run on the host)",
            f"  ops           {', '.join(f'{k} x{v}' for k, v in self.ops.items())}",
            f"  arena         {self.arena_total:,} B measured = head {self.arena_head:,} "
            f"(activations, scratch) + tail {self.arena_tail:,} (persistent)"
            + (
                ""
                if self.arena_required == self.arena_total
                else f"; init needs {self.arena_required:,}"
            ),
            f"  kTensorArenaSize  {self.arena_recommended:,} B = {self.arena_required:,} x (1 + "
            f"{self.arena_margin:.0%} margin), 16-byte aligned"
            f"{', verified by TFLM' if self.arena_verified else ''}",
        ]
        for a in self.persistent:
            lines.append(f"    persistent  {a.name}: {a.bytes:,} B ({a.count} {a.what})")
        lines.append(
            f"  flash         {self.flash_bytes:,} B = model {self.model_bytes:,} + runtime and "
            f"kernels {self.runtime_code_bytes:,}{est}"
        )
        if self.firmware is not None:
            fw = self.firmware
            lines.append(
                f"  firmware      {fw.path}: text {fw.text:,} + rodata {fw.rodata:,} + data "
                f"{fw.data:,} B in flash, data + bss {fw.data:,} + {fw.bss:,} B static RAM"
            )
            lines.append(
                f"  static RAM    {self.ram_bytes:,} B (measured: data + bss, with "
                f"kTensorArenaSize {self.arena_recommended:,} for this model)"
            )
        else:
            lines.append(
                f"  RAM           {self.ram_bytes:,} B = arena {self.arena_recommended:,} + "
                f"interpreter objects {self.interpreter_ram_bytes:,} (estimate)"
            )
        for c in self.checks:
            limit = "unchecked" if c.limit is None else f"limit {c.limit:,}"
            lines.append(f"  {'ok  ' if c.ok else 'FAIL'}  {c.name:<12} {c.value:,} B  ({limit})")
        if self.agreement is not None:
            a = self.agreement
            t1 = "n/a" if a.top1_agreement is None else f"{a.top1_agreement:.2%}"
            lines.append(
                f"  TFLM vs LiteRT reference kernels  top-1 agreement {t1} "
                f"({a.decisive_rows} decisive rows: "
                f"{'n/a' if a.decisive_top1_agreement is None else f'{a.decisive_top1_agreement:.2%}'})"
                f", max diff {a.max_diff_steps} steps ({a.max_abs_diff:.3g}) over {a.rows} rows "
                f"of {self.inputs_source} inputs"
            )
            if a.optimized_top1_agreement is not None or a.optimized_max_diff_steps is not None:
                o1 = a.optimized_top1_agreement
                lines.append(
                    f"  TFLM vs LiteRT optimized kernels  top-1 agreement "
                    f"{'n/a' if o1 is None else f'{o1:.2%}'}, max diff "
                    f"{a.optimized_max_diff_steps} steps (different rounding, informative)"
                )
        if self.invoke_ms_median is not None:
            lines.append(
                f"  host invoke   {self.invoke_ms_median:.3f} ms median (x86 host, not the MCU)"
            )
        for n in self.notes:
            lines.append(f"  note: {n}")
        return "\n".join(lines)


def synthetic_inputs(info: ModelInfo, rows: int, seed: int = 0) -> np.ndarray:
    """Seeded random float rows spanning the first input's quantized range (or [0, 1))."""
    t = info.input_tensors[0]
    shape = tuple(max(int(d), 1) for d in t.shape[1:])
    rng = np.random.default_rng(seed)
    if t.scales and t.dtype in ("int8", "uint8", "int16"):
        lim = np.iinfo(t.dtype)
        lo = (lim.min - t.zero_points[0]) * t.scales[0]
        hi = (lim.max - t.zero_points[0]) * t.scales[0]
        return rng.uniform(lo, hi, size=(rows, *shape)).astype(np.float32)
    return rng.random((rows, *shape), dtype=np.float32)


def _largest(info: ModelInfo, constant: bool, n: int = 5) -> tuple[tuple[str, int], ...]:
    ts = [t for t in info.tensors if t.constant == constant]
    ts.sort(key=tensor_bytes, reverse=True)
    return tuple((t.name.split(";")[0], tensor_bytes(t)) for t in ts[:n])


# Ops whose output may share its input's buffer: left out of the activation lower bound, so
# that it stays a lower bound whatever the memory planner does.
_MAY_ALIAS = frozenset({"RESHAPE", "SQUEEZE", "EXPAND_DIMS"})


@dataclass(frozen=True, kw_only=True)
class LowerBounds:
    """Flash and RAM that any TFLM build of a model needs at least, known without running it.

    Flash holds at least the flatbuffer. RAM holds at least the tensors one op reads and
    writes at the same time (its activation inputs and outputs): the largest such set over
    the graph. TFLM's arena is never smaller, so a miss here is a miss for certain.
    """

    flash_bytes: int  # the model's bytes
    ram_bytes: int  # the largest activation set of one op
    op: str  # that op, e.g. "CONV_2D"
    tensors: tuple[tuple[str, int], ...]  # its activations: (name, bytes)

    def failures(self, profile: Profile) -> list[str]:
        b = profile.budgets
        out = []
        if b.flash_bytes is not None and self.flash_bytes > b.flash_bytes:
            out.append(
                f"the model alone is {self.flash_bytes:,} bytes > flash_bytes "
                f"{b.flash_bytes:,} of profile {profile.name!r}"
            )
        if b.ram_bytes is not None and self.ram_bytes > b.ram_bytes:
            pair = " + ".join(f"{n!r} {v:,} B" for n, v in self.tensors)
            out.append(
                f"op {self.op} alone holds {self.ram_bytes:,} bytes of activations ({pair}) "
                f"> ram_bytes {b.ram_bytes:,} of profile {profile.name!r}"
            )
        return out


def lower_bounds(content: bytes, info: ModelInfo) -> LowerBounds:
    """The flash and RAM lower bounds of ``content`` (see ``LowerBounds``)."""
    best: tuple[int, str, tuple[tuple[str, int], ...]] = (0, "", ())
    for op in info.ops:
        if op.name in _MAY_ALIAS:
            continue
        seen = sorted({i for i in (*op.inputs, *op.outputs) if i >= 0})
        acts = [info.tensors[i] for i in seen if not info.tensors[i].constant]
        total = sum(tensor_bytes(t) for t in acts)
        if total > best[0]:
            named = tuple((t.name.split(";")[0], tensor_bytes(t)) for t in acts)
            best = (total, op.name, named)
    return LowerBounds(flash_bytes=len(content), ram_bytes=best[0], op=best[1], tensors=best[2])


def measurements(
    *,
    model_bytes: int,
    code: int,
    ram: int,
    flash_source: str,
    measured: bool,
    flash_detail: str = "",
    ram_detail: str = "",
) -> Measurements:
    """The fit report's flash and RAM as ``edgec.budgets`` figures.

    Flash counted from a linked ELF or the profile's own code figure is an artifact
    count; from edgec's table, an estimate. RAM is the arena TFLM measured on the host
    (the target's runtime off the target: ``Source.EMULATOR``) plus RAM outside it,
    which is estimated unless a linked ELF measured it.
    """
    if flash_source == "measured":
        flash_fig = Figure(
            value=model_bytes + code,
            source=Source.ARTIFACT,
            what=f"model {model_bytes:,} + code {code:,} measured from the firmware ELF",
        )
    else:
        flash_fig = flash_figure(
            model_bytes=model_bytes,
            runtime_code_bytes=code,
            runtime_code_estimated=flash_source == "estimate",
        )
    ram_fig = Figure(
        value=ram,
        source=Source.EMULATOR,
        estimate=not measured,
        what="firmware ELF data + bss, arena by TFLM on the host"
        if measured
        else "TFLM arena on the host + interpreter objects (estimate)",
    )
    return Measurements(
        flash_bytes=replace(flash_fig, detail=flash_detail),
        ram_bytes=replace(ram_fig, detail=ram_detail),
    )


def measured_sizes(
    elf: ElfSizes, model_bytes: int, arena_bytes: int
) -> tuple[int, int, int, list[str]]:
    """(code, flash, static RAM, notes) of ``elf`` carrying this model and this arena.

    The ELF may have been linked with an earlier build's model and arena: where its
    symbol table has them, ``g_model`` and the arena are replaced by this artifact's
    ``model_bytes`` and ``arena_bytes`` (kTensorArenaSize), so the figures are the
    firmware's own code and statics plus this build. Without an arena symbol the arena
    is taken to live outside the static RAM (heap, another region) and is added.
    """
    name = Path(elf.path).name
    notes = []
    if elf.model_bytes is not None:
        code = elf.flash_bytes - elf.model_bytes
        if elf.model_bytes != model_bytes:
            notes.append(
                f"{name} holds a {elf.model_bytes:,} B g_model, this artifact is {model_bytes:,} B: "
                "flash counts this artifact in its place (relink with this build's firmware/)"
            )
    else:
        code = elf.flash_bytes - model_bytes
        if code < 0:
            raise InputError(
                f"--firmware-elf {elf.path}: its flash ({elf.flash_bytes:,} B) is smaller than "
                f"the model ({model_bytes:,} B), so it cannot hold it; give the firmware linked "
                "with firmware/model_data.cc"
            )
        notes.append(f"{name} has no g_model symbol: it is taken to hold this model")
    if elf.arena is not None:
        arena_name, arena_size = elf.arena
        ram = elf.static_ram_bytes - arena_size + arena_bytes
        if arena_size < arena_bytes:
            notes.append(
                f"{name}'s arena {arena_name!r} is {arena_size:,} B, this model needs "
                f"kTensorArenaSize {arena_bytes:,} B: relink with this build's model_data.h"
            )
    else:
        ram = elf.static_ram_bytes + arena_bytes
        notes.append(
            f"no arena symbol in {name}: kTensorArenaSize {arena_bytes:,} B is added to its "
            "static RAM (data + bss)"
        )
    notes.append(
        f"flash and static RAM measured from {name} ({elf.machine}): text {elf.text:,}, "
        f"rodata {elf.rodata:,}, data {elf.data:,}, bss {elf.bss:,} B; the stack counts only "
        "if the linker script reserves it"
    )
    return code, code + model_bytes, ram, notes


def check_lower_bounds(content: bytes, info: ModelInfo, profile: Profile, where: str) -> None:
    """Raise ``BudgetError`` if ``content`` cannot fit ``profile`` whatever TFLM does.

    Runs before TFLM: a model far too big for a microcontroller gets the numbers, not a
    TFLM crash in an arena it could never have.
    """
    fails = lower_bounds(content, info).failures(profile)
    if fails:
        raise BudgetError(
            f"{where}: too big for {profile.name} before TFLM runs: {'; and '.join(fails)}; "
            "prune, cluster or shrink the model, or reduce the input size"
        )


def fit_report(
    content: bytes,
    profile: Profile,
    inputs: np.ndarray | None = None,
    *,
    where: str = "model.tflite",
    max_rows: int = 32,
    seed: int = 0,
    trusted: bool = False,
    min_top1_agreement: float = 0.99,
    max_diff_steps: int = 16,
    firmware_elf: str | Path | None = None,
) -> MicroReport:
    """Run ``content`` in TFLM and LiteRT, measure the arena, and check the profile's budgets.

    ``inputs`` are float rows (validation or calibration data); without them,
    seeded random rows over the input's range are used and the report says so.
    At most ``max_rows`` rows are run. TFLM agrees when no output differs from
    LiteRT's reference kernels by more than ``max_diff_steps`` quantization steps
    and top-1 matches on ``min_top1_agreement`` of the decisive rows (those not a
    near-tie; see ``Agreement``).
    ``trusted=False`` (any user file) first loads the model into LiteRT in a child.
    With ``firmware_elf`` (a linked firmware around ``firmware/``), flash and static RAM
    are measured from its sections instead of estimated (see ``measured_sizes``).
    Raises ``InputError`` for a corrupt file and ``ConversionError`` if TFLM cannot
    run it; budget misses are in the report (``raise_for_failures`` raises them).
    """
    from edgec.runtime import TFLiteModel, probe_tflite

    info = read_model(content, where)
    if not trusted:
        probe_tflite(content, where)
    if not info.inputs:
        raise InputError(f"{where}: the model has no inputs")
    check_lower_bounds(content, info, profile, where)
    elf = None if firmware_elf is None else read_elf(firmware_elf, arch=profile.arch)
    source = "given"
    if inputs is None or len(inputs) == 0:
        inputs = synthetic_inputs(info, min(max_rows, 16), seed)
        source = "synthetic (seeded random)"
    x = np.asarray(inputs, dtype=np.float32)[:max_rows]
    lite = TFLiteModel(content)
    want = tuple(max(int(d), 1) for d in lite.inputs[0].shape[1:])
    if x.shape[1:] != want:
        raise InputError(f"{where}: inputs have shape {x.shape[1:]}, the model takes {want}")
    margin = profile.micro.arena_margin if profile.micro else 0.10
    run = run_tflm(content, lite.quantize_input(x), info=info, where=where, margin=margin)
    return _report(
        content,
        info,
        profile,
        lite,
        x,
        run,
        margin,
        source,
        min_top1_agreement,
        max_diff_steps,
        elf,
    )


def _report(
    content: bytes,
    info: ModelInfo,
    profile: Profile,
    lite: Any,
    x: np.ndarray,
    run: TFLMRun,
    margin: float,
    source: str,
    min_top1: float,
    max_steps: int,
    elf: ElfSizes | None = None,
) -> MicroReport:
    notes = []
    agreement = None
    if len(info.inputs) == 1 and run.outputs is not None and len(run.outputs):
        q = lite.quantize_input(x)
        tflm = run.outputs.reshape(len(x), -1)
        ref = litert_raw_outputs(content, q, reference_kernels=True).reshape(len(x), -1)
        fast = litert_raw_outputs(content, q, reference_kernels=False).reshape(len(x), -1)
        quantized = lite.outputs[0].quantized
        if quantized:
            top1, steps = _compare(tflm, ref)
            fast_top1, fast_steps = _compare(tflm, fast)
        else:  # a float output: compare values, there are no steps
            top1, _ = _compare(tflm, ref)
            fast_top1, _ = _compare(tflm, fast)
            steps = fast_steps = 0
        decisive, n_decisive = decisive_top1(tflm, ref)
        diff = np.abs(lite.dequantize_output(tflm) - lite.dequantize_output(ref))
        ok = (decisive is None or decisive >= min_top1) and steps <= max_steps
        if not quantized:
            ok = ok and bool(np.allclose(tflm, ref, rtol=1e-3, atol=1e-4))
        agreement = Agreement(
            rows=len(x),
            top1_agreement=top1,
            max_abs_diff=float(diff.max()),
            max_diff_steps=steps,
            ok=ok,
            optimized_top1_agreement=fast_top1,
            optimized_max_diff_steps=fast_steps if quantized else None,
            decisive_rows=n_decisive,
            decisive_top1_agreement=decisive,
        )
    else:
        notes.append("multi-input model: TFLM ran with zeros for inputs 2+, agreement not measured")
    code, estimated, kernels = runtime_code(info.op_counts, profile)
    arena_rec = recommended_arena(run.arena_required, margin)
    interp_ram = cost_table().interpreter_ram(info.op_counts)
    flash = len(content) + code
    ram = arena_rec + interp_ram
    if elf is not None:
        code, flash, ram, elf_notes = measured_sizes(elf, len(content), arena_rec)
        estimated = False
        notes += elf_notes
    checks = check_budgets(
        profile.budgets,
        measurements(
            model_bytes=len(content),
            code=code,
            ram=ram,
            flash_source="measured" if elf else ("estimate" if estimated else "profile"),
            measured=elf is not None,
        ),
    ).checks
    table = cost_table()
    if estimated:
        notes.append(
            f"flash for TFLM and kernels is an estimate, ±{table.uncertainty:.0%} ({table.file}: "
            "per-kernel type paths from TFLM's sources, scaled to a real Cortex-M4F link, "
            f"+{table.code_margin:.0%} margin); give --firmware-elf FW.elf (your linked firmware) "
            "or set [micro] runtime_code_bytes from your linker map"
        )
        if profile.arch not in table.arches:
            notes.append(
                f"no TFLM cost table exists for {profile.arch}: the flash estimate uses "
                f"{table.file} ({', '.join(table.arches)}) as a stand-in, and its "
                f"±{table.uncertainty:.0%} does not cover another instruction set and its kernels"
            )
    if run.crashed_arenas:
        notes.append(
            f"TFLM crashed (segfault) instead of failing cleanly in an arena of "
            f"{max(run.crashed_arenas):,} bytes (it needs {run.arena_required:,}): "
            "never give it less than kTensorArenaSize"
        )
    notes.append(
        "arena measured by TFLM on the 64-bit host, an upper bound for a 32-bit core: "
        "persistent structs hold pointers, so the tail is smaller there (ResNet-8: 55,984 B "
        "on the host, arena_used_bytes() 54,996 B on a Cortex-M4F)"
    )
    int4 = [t.elements for t in info.tensors if t.constant and t.dtype == "int4"]
    if int4:
        notes.append(
            f"int4 weights in {len(int4)} layers: TFLM unpacks each into an int8 scratch buffer "
            f"in the arena while its op runs (one byte per weight; largest {max(int4):,} B), "
            "counted in the measured arena and RAM"
        )
    return MicroReport(
        profile=profile.name,
        model_bytes=len(content),
        ops=info.op_counts,
        arena_total=run.arena_total,
        arena_head=run.arena_head,
        arena_tail=run.arena_tail,
        arena_required=run.arena_required,
        persistent=run.allocations,
        arena_margin=margin,
        arena_recommended=arena_rec,
        arena_verified=run.arena_checked == arena_rec,
        runtime_code_bytes=code,
        runtime_code_estimated=estimated,
        kernel_code_bytes=kernels,
        interpreter_ram_bytes=interp_ram,
        flash_bytes=flash,
        ram_bytes=ram,
        checks=checks,
        agreement=agreement,
        inputs_source=source,
        invoke_ms_median=float(np.median(run.invoke_ms)) if run.invoke_ms else None,
        largest_activations=_largest(info, constant=False),
        largest_weights=_largest(info, constant=True),
        tflm_version=run.tflm_version,
        notes=tuple(notes),
        int4_unpack_bytes=max(int4, default=0),
        firmware=elf,
        code_uncertainty=table.uncertainty if estimated else None,
    )


# --- the smallest artifact that fits ---------------------------------------------------------
