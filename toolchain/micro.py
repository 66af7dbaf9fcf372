"""Microcontroller fit: the real TFLM interpreter on the host, flash and RAM budgets.

For a microcontroller profile (``runtime = "tflm"``) this module answers "will it
run?" and "will it fit?" before anything is flashed:

* ``run_tflm`` loads the flatbuffer into TensorFlow Lite for Microcontrollers
  (the ``tflite-micro`` package) **in a child process**, because a bad model can
  crash TFLM's C++ code. The child runs inference, reads the recording
  allocator's report (``print_allocations`` writes it from C++ to a file descriptor) and
  hands back exact arena bytes (total, head, tail), the persistent allocations,
  raw outputs and invoke times. It then proves the recommended arena size is
  enough by loading the model again into an arena of exactly that size.
* ``fit_report`` compares TFLM's outputs with LiteRT's on the same artifact,
  estimates flash (model bytes + runtime and kernel code for the ops used) and
  RAM (arena incl. persistent buffers + margin + interpreter objects), and checks
  both against the profile. ``MicroReport.raise_for_failures`` turns a miss
  into a ``BudgetError`` naming the numbers and the biggest contributors.
* ``choose_smallest`` compares converter choices (per-channel against per-tensor
  fully connected weights) and keeps the smallest artifact that still agrees.

It works for any ``.tflite``, not only for ones edgec built.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgec.errors import BudgetError, ConversionError, EdgecError, InputError
from edgec.modelinfo import ModelInfo, Tensor, read_model
from edgec.profiles import Profile

# --- flash estimate -------------------------------------------------------------------------
#
# Approximate Cortex-M4/M7 code bytes (Thumb-2, -Os, CMSIS-NN kernels where TFLM has them)
# of TFLM itself and of each kernel. These are edgec's estimates from typical TFLM builds, not
# a linker map of your firmware: a profile can replace the whole runtime+kernel figure with
# ``[micro] runtime_code_bytes``. Kernels sharing code (the pooling ops) are counted per op,
# which errs on the safe side.
RUNTIME_BASE_CODE_BYTES = 30_000  # MicroInterpreter, allocator, memory planner, flatbuffer access
DEFAULT_KERNEL_CODE_BYTES = 3_000  # any op missing from the table below
KERNEL_CODE_BYTES: dict[str, int] = {
    "CONV_2D": 12_000,
    "DEPTHWISE_CONV_2D": 10_000,
    "TRANSPOSE_CONV": 8_000,
    "FULLY_CONNECTED": 6_000,
    "BATCH_MATMUL": 6_000,
    "UNIDIRECTIONAL_SEQUENCE_LSTM": 12_000,
    "SVDF": 5_000,
    "AVERAGE_POOL_2D": 3_000,
    "MAX_POOL_2D": 3_000,
    "L2_POOL_2D": 2_000,
    "ADD": 4_000,
    "SUB": 3_500,
    "MUL": 3_500,
    "SOFTMAX": 3_000,
    "LOG_SOFTMAX": 2_500,
    "LOGISTIC": 2_000,
    "TANH": 2_500,
    "RELU": 1_500,
    "RELU6": 1_500,
    "LEAKY_RELU": 1_500,
    "PRELU": 2_000,
    "HARD_SWISH": 2_500,
    "QUANTIZE": 2_500,
    "DEQUANTIZE": 2_000,
    "MEAN": 4_000,
    "SUM": 3_000,
    "REDUCE_MAX": 3_000,
    "CONCATENATION": 2_000,
    "PAD": 2_000,
    "PADV2": 2_000,
    "STRIDED_SLICE": 2_000,
    "SLICE": 1_500,
    "TRANSPOSE": 2_000,
    "RESIZE_NEAREST_NEIGHBOR": 1_500,
    "RESIZE_BILINEAR": 2_500,
    "RESHAPE": 600,
    "SQUEEZE": 500,
    "EXPAND_DIMS": 500,
    "SHAPE": 400,
    "PACK": 1_000,
    "UNPACK": 1_000,
    "SPLIT": 1_000,
    "SPLIT_V": 1_000,
    "GATHER": 1_500,
    "MAXIMUM": 1_500,
    "MINIMUM": 1_500,
}
# RAM outside the arena: the MicroInterpreter object and the op resolver (one registration,
# builtin code and parser pointer per op, 32-bit pointers). An estimate, stated as such.
INTERPRETER_RAM_BYTES = 256
RESOLVER_RAM_BYTES_PER_OP = 48

ARENA_ALIGN = 16
TFLM_TIMEOUT_S = 600.0
_ALLOC_RE = re.compile(
    r"'(?P<name>[^']+)' used (?P<used>\d+) bytes with alignment overhead "
    r"\(requested (?P<requested>\d+) bytes for (?P<count>\d+) (?P<what>[^)]*)\)"
)
_TOTAL_RE = re.compile(r"Arena allocation (?P<part>total|head|tail) (?P<n>\d+) bytes")
_MISSING_OP_RE = re.compile(r"Didn't find op for builtin opcode '(?P<op>[^']+)'")
# TFLM's message for an unregistered custom op is only the generic one below.
_MISSING_CUSTOM_RE = re.compile(r"Failed to get registration from op code (?P<op>\S+)")
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
    "int4": 1,
}


def recommended_arena(total: int, margin: float) -> int:
    """``total`` × (1 + margin), rounded up to the 16-byte arena alignment."""
    return int(math.ceil(total * (1.0 + margin) / ARENA_ALIGN) * ARENA_ALIGN)


def tensor_bytes(t: Tensor) -> int:
    return t.elements * _DTYPE_BYTES.get(t.dtype, 4)


def layer_of(name: str) -> str:
    """The Keras layer a converted tensor came from: ``model/layer/Op;...`` -> ``layer``."""
    first = name.split(";")[0]
    parts = [p for p in first.split("/") if p]
    if len(parts) >= 3:
        return parts[1]
    return parts[0] if parts else name


# --- the TFLM child process -----------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Allocation:
    """One line of TFLM's recording allocator: persistent data of one kind."""

    name: str  # e.g. "Persistent buffer data", "NodeAndRegistration struct"
    bytes: int  # used, with alignment overhead
    requested: int
    count: int
    what: str = "allocations"  # the unit of ``count``, as TFLM prints it

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "bytes": self.bytes,
            "requested": self.requested,
            "count": self.count,
            "what": self.what,
        }


@dataclass(frozen=True, kw_only=True)
class TFLMRun:
    """What one TFLM load-and-run measured."""

    arena_total: int  # "Arena allocation total": head + tail
    arena_head: int  # non-persistent: activations and scratch, reused across ops
    arena_tail: int  # persistent: tensor structs, quantization params, kernel op data
    allocations: tuple[Allocation, ...]
    outputs: np.ndarray | None  # raw output tensor 0 for every input row
    invoke_ms: tuple[float, ...]
    arena_required: int  # the smallest arena TFLM loads and runs in (>= total: init temporaries)
    arena_checked: int | None = None  # an arena of this size was proven enough (None: not tried)
    crashed_arenas: tuple[int, ...] = ()  # too-small arenas in which TFLM crashed, not failed
    tflm_version: str = ""

    @property
    def persistent_bytes(self) -> int:
        return sum(a.bytes for a in self.allocations)


_CHILD = r"""
import sys
from edgec.micro import _child_main
_child_main(sys.argv[1])
"""


def _child_main(folder: str) -> None:
    """Runs in the child: load into TFLM, invoke, read the allocations, verify the arena size."""
    import ctypes
    import time

    from tflite_micro.python.tflite_micro import runtime

    work = Path(folder)
    req = json.loads((work / "request.json").read_text())
    content = (work / "model.tflite").read_bytes()
    x = np.load(work / "inputs.npy")
    it = runtime.Interpreter.from_bytes(content, arena_size=int(req["arena_size"]))
    n_inputs = int(req["n_inputs"])

    def feed(interp: Any, row: np.ndarray) -> None:
        for k in range(n_inputs):
            # Extra inputs (rare on microcontrollers) get zeros of their own shape.
            d = interp.get_input_details(k)
            interp.set_input(row[None] if k == 0 else np.zeros(d["shape"], d["dtype"]), k)

    outs, times = [], []
    for row in x:
        feed(it, row)
        t0 = time.perf_counter()
        it.invoke()
        times.append((time.perf_counter() - t0) * 1e3)
        outs.append(np.array(it.get_output(0)))
    for _ in range(int(req["repeats"])):
        t0 = time.perf_counter()
        it.invoke()
        times.append((time.perf_counter() - t0) * 1e3)
    # print_allocations writes from C++ (MicroPrintf, to stderr in this build; the docstring
    # and older builds say stdout): point fds 1 and 2 at one file for the call.
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with open(work / "allocations.txt", "wb") as f:
        for fd in saved:
            os.dup2(f.fileno(), fd)
        try:
            it.print_allocations()
            ctypes.CDLL(None).fflush(None)
        finally:
            for fd, keep in saved.items():
                os.dup2(keep, fd)
                os.close(keep)
    usage = _parse_allocations((work / "allocations.txt").read_text(errors="replace"))

    def loads(size: int) -> bool:
        # Each try runs in a fork: TFLM can segfault instead of failing cleanly when the
        # arena is a few bytes short (seen with per-channel FULLY_CONNECTED).
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                interp = runtime.Interpreter.from_bytes(content, arena_size=size)
                if len(x):
                    feed(interp, x[0])
                interp.invoke()
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            crashes.append(size)
        return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0

    crashes: list[int] = []
    required = checked = None
    if usage is not None:
        # The reported total is the final layout; init can need more for temporary
        # allocations (tiny models especially). Find the smallest arena TFLM accepts:
        # grow the step until one loads, then bisect.
        required = usage[0]
        if req["find_required"] and not loads(required):
            lo, step = required + 1, 16
            while not loads(required + step):
                lo = required + step + 1
                step *= 2
                if required + step > int(req["arena_size"]):
                    raise RuntimeError("TFLM loads in no arena up to the measuring size")
            hi = required + step
            while lo < hi:
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if loads(mid) else (mid + 1, hi)
            required = lo
        if req.get("margin") is not None:
            # Prove the size handed to firmware is enough: a fresh arena of exactly that size.
            size = recommended_arena(required, float(req["margin"]))
            checked = size if loads(size) else None
    np.save(work / "outputs.npy", np.stack(outs) if outs else np.zeros((0,), np.int8))
    (work / "result.json").write_text(
        json.dumps(
            {
                "invoke_ms": times,
                "arena_checked": checked,
                "arena_required": required,
                "crashed_arenas": sorted(set(crashes)),
                "usage": None
                if usage is None
                else [usage[0], usage[1], usage[2], [a.to_dict() for a in usage[3]]],
            }
        )
    )


def _tflm_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"tflite-micro {version('tflite-micro')}"
    except PackageNotFoundError:
        return "tflite-micro (version unknown)"


def run_tflm(
    content: bytes,
    inputs: np.ndarray,
    *,
    info: ModelInfo | None = None,
    where: str = "model",
    margin: float | None = None,
    repeats: int = 0,
    arena_size: int | None = None,
    find_required: bool = True,
    timeout: float = TFLM_TIMEOUT_S,
) -> TFLMRun:
    """Load ``content`` into the TFLM interpreter in a child process and run ``inputs``.

    ``inputs`` are rows already in the model's input dtype (int8 for a full-int8
    model; quantize with ``TFLiteModel.quantize_input``); ``repeats`` adds timed
    invokes of the last row. With ``margin``, the recommended arena is proven by a
    second load into an arena of exactly that size; ``find_required=False`` skips
    the search for the smallest working arena (timing runs). An op TFLM cannot resolve
    raises ``ConversionError`` naming the op and the layer it came from.
    """
    import importlib.util

    if importlib.util.find_spec("tflite_micro") is None:
        raise EdgecError(
            "microcontroller targets run the model in TensorFlow Lite Micro, which is not "
            "installed: pip install tflite-micro (Linux x86-64 wheels)"
        )
    info = info or read_model(content, where)
    # The measuring arena only has to be big enough; TFLM reports what it used of it.
    arena = arena_size or max(32 << 20, 16 * len(content))
    with tempfile.TemporaryDirectory(prefix="edgec-tflm-") as tmp:
        work = Path(tmp)
        (work / "model.tflite").write_bytes(content)
        np.save(work / "inputs.npy", np.asarray(inputs))
        req = {
            "arena_size": arena,
            "repeats": repeats,
            "n_inputs": max(len(info.inputs), 1),
            "margin": margin,
            "find_required": find_required,
        }
        (work / "request.json").write_text(json.dumps(req))
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        try:
            proc = subprocess.run(
                [sys.executable, "-c", _CHILD, str(work)],
                capture_output=True,
                timeout=timeout,
                env=env,
            )
        except subprocess.TimeoutExpired as exc:
            raise ConversionError(f"{where}: TFLM did not finish within {timeout:.0f} s") from exc
        if proc.returncode != 0:
            raise _tflm_failure(proc.stderr.decode(errors="replace"), proc.returncode, where, info)
        result = json.loads((work / "result.json").read_text())
        outputs = np.load(work / "outputs.npy")
    if result["usage"] is None:
        raise ConversionError(f"{where}: TFLM ran but printed no arena report")
    total, head, tail, allocs = result["usage"]
    return TFLMRun(
        arena_total=total,
        arena_head=head,
        arena_tail=tail,
        allocations=tuple(Allocation(**a) for a in allocs),
        outputs=outputs,
        arena_required=int(result["arena_required"]),
        invoke_ms=tuple(result["invoke_ms"]),
        arena_checked=result["arena_checked"],
        crashed_arenas=tuple(result["crashed_arenas"]),
        tflm_version=_tflm_version(),
    )


def _tflm_failure(stderr: str, code: int, where: str, info: ModelInfo) -> ConversionError:
    missing = _MISSING_OP_RE.findall(stderr) + _MISSING_CUSTOM_RE.findall(stderr)
    if missing:
        op = missing[0]
        if op == "CUSTOM" or not any(o.name == op for o in info.ops):
            op = next((o.name for o in info.ops if o.custom), op)
        sources = [info.tensors[o.outputs[0]].name for o in info.ops if o.name == op and o.outputs]
        src = sources[0].split(";")[0] if sources else "?"
        return ConversionError(
            f"{where}: TFLM has no kernel for op {op} (from layer {layer_of(src)!r}, tensor "
            f"{src!r}); replace that layer with one TFLM supports, or use a non-micro target"
        )
    # Keep TFLM's own messages and the final exception line, not the Python traceback frames.
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    tflm_lines = [ln.strip() for ln in lines if not ln.startswith(("Traceback", " "))]
    if code < 0:
        reason = f"TFLM crashed (signal {-code})"
    else:
        reason = "; ".join(tflm_lines[-3:]) if tflm_lines else f"exit code {code}"
    return ConversionError(f"{where}: TFLM could not run this model: {reason[:400]}")


def _parse_allocations(stdout: str) -> tuple[int, int, int, tuple[Allocation, ...]] | None:
    parts = {m["part"]: int(m["n"]) for m in _TOTAL_RE.finditer(stdout)}
    if "total" not in parts:
        return None
    allocs = tuple(
        Allocation(
            name=m["name"],
            bytes=int(m["used"]),
            requested=int(m["requested"]),
            count=int(m["count"]),
            what=m["what"].strip(),
        )
        for m in _ALLOC_RE.finditer(stdout)
    )
    return parts["total"], parts.get("head", 0), parts.get("tail", 0), allocs


# --- the fit report -------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Check:
    name: str
    limit: int | None
    value: int
    ok: bool

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "limit": self.limit, "value": self.value, "ok": self.ok}


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


def _decisive_top1(a: np.ndarray, ref: np.ndarray) -> tuple[float | None, int]:
    """Top-1 agreement over the rows whose reference top-1 leads by more than the row's
    largest difference (a near-tie can flip under any rounding), and how many such rows."""
    a2 = a.reshape(len(a), -1).astype(np.int64)
    r2 = ref.reshape(len(ref), -1).astype(np.int64)
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
    checks: tuple[Check, ...]
    agreement: Agreement | None
    inputs_source: str  # "given" or "synthetic (seeded random)"
    invoke_ms_median: float | None
    largest_activations: tuple[tuple[str, int], ...]
    largest_weights: tuple[tuple[str, int], ...]
    tflm_version: str
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks) and (self.agreement is None or self.agreement.ok)

    def failures(self) -> list[str]:
        """One line per failed check, each with the numbers and the biggest contributors."""
        out = []
        for c in self.checks:
            if c.ok:
                continue
            est = " (estimate)" if self.runtime_code_estimated else ""
            if c.name == "flash_bytes":
                top = ", ".join(f"{n!r} {b:,} B" for n, b in self.largest_weights[:3])
                out.append(
                    f"flash {c.value:,} bytes > flash_bytes {c.limit:,} of profile "
                    f"{self.profile!r} (model {self.model_bytes:,} + runtime and kernels "
                    f"{self.runtime_code_bytes:,}{est}"
                    f"); largest weights: {top or 'none'}; prune, cluster or shrink those layers"
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
            f"{' (estimate)' if self.runtime_code_estimated else ''}"
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
        details = {
            c.name: line
            for c, line in zip([c for c in self.checks if not c.ok], self.failures(), strict=True)
        }
        return [
            {
                **c.to_dict(),
                "estimate": c.name == "flash_bytes" and self.runtime_code_estimated,
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
                "measured_on": "host (64-bit) TFLM; persistent structs are smaller on 32-bit MCUs",
            },
            "persistent": [a.to_dict() for a in self.persistent],
            "flash": {
                "bytes": self.flash_bytes,
                "model_bytes": self.model_bytes,
                "runtime_code_bytes": self.runtime_code_bytes,
                "runtime_code_source": "estimate (edgec per-op table)"
                if self.runtime_code_estimated
                else "profile micro.runtime_code_bytes",
                "kernel_code_bytes": self.kernel_code_bytes,
            },
            "ram": {
                "bytes": self.ram_bytes,
                "arena_recommended": self.arena_recommended,
                "interpreter_estimate": self.interpreter_ram_bytes,
            },
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
        est = " (estimate)" if self.runtime_code_estimated else " (profile)"
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


def runtime_code(ops: Mapping[str, int], profile: Profile) -> tuple[int, bool, dict[str, int]]:
    """Flash for TFLM and the kernels of ``ops``: (bytes, is_estimate, per-kernel table)."""
    kernels = {op: KERNEL_CODE_BYTES.get(op, DEFAULT_KERNEL_CODE_BYTES) for op in sorted(ops)}
    override = profile.micro.runtime_code_bytes if profile.micro else None
    if override is not None:
        return int(override), False, kernels
    return RUNTIME_BASE_CODE_BYTES + sum(kernels.values()), True, kernels


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
) -> MicroReport:
    """Run ``content`` in TFLM and LiteRT, measure the arena, and check the profile's budgets.

    ``inputs`` are float rows (validation or calibration data); without them,
    seeded random rows over the input's range are used and the report says so.
    At most ``max_rows`` rows are run. TFLM agrees when no output differs from
    LiteRT's reference kernels by more than ``max_diff_steps`` quantization steps
    and top-1 matches on ``min_top1_agreement`` of the decisive rows (those not a
    near-tie; see ``Agreement``).
    ``trusted=False`` (any user file) first loads the model into LiteRT in a child.
    Raises ``InputError`` for a corrupt file and ``ConversionError`` if TFLM cannot
    run it; budget misses are in the report (``raise_for_failures`` raises them).
    """
    from edgec.runtime import TFLiteModel, probe_tflite

    info = read_model(content, where)
    if not trusted:
        probe_tflite(content, where)
    if not info.inputs:
        raise InputError(f"{where}: the model has no inputs")
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
        content, info, profile, lite, x, run, margin, source, min_top1_agreement, max_diff_steps
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
        decisive, n_decisive = _decisive_top1(tflm, ref)
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
    interp_ram = INTERPRETER_RAM_BYTES + RESOLVER_RAM_BYTES_PER_OP * len(info.op_counts)
    flash = len(content) + code
    ram = arena_rec + interp_ram
    b = profile.budgets
    checks = (
        Check(
            name="flash_bytes",
            limit=b.flash_bytes,
            value=flash,
            ok=b.flash_bytes is None or flash <= b.flash_bytes,
        ),
        Check(
            name="ram_bytes",
            limit=b.ram_bytes,
            value=ram,
            ok=b.ram_bytes is None or ram <= b.ram_bytes,
        ),
    )
    if estimated:
        notes.append(
            "flash for TFLM and kernels is an estimate (edgec per-op table for Cortex-M, "
            "-Os, CMSIS-NN); set [micro] runtime_code_bytes from your linker map"
        )
    if run.crashed_arenas:
        notes.append(
            f"TFLM crashed (segfault) instead of failing cleanly in an arena of "
            f"{max(run.crashed_arenas):,} bytes (it needs {run.arena_required:,}): "
            "never give it less than kTensorArenaSize"
        )
    notes.append(
        "arena measured by TFLM on the 64-bit host: persistent structs hold pointers, "
        "so the tail is usually smaller on a 32-bit MCU (the host figure is an upper bound)"
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
    )


# --- the smallest artifact that fits ---------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Candidate:
    """One converter choice, measured: the rows of the comparison table."""

    label: str
    model_bytes: int
    arena_required: int
    flash_bytes: int
    ram_bytes: int
    fits: bool
    tflm_matches_litert: bool
    top1_vs_reference: float | None
    max_abs_diff_vs_reference: float
    agrees: bool
    kept: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True, kw_only=True)
class Choice:
    label: str
    content: bytes
    report: MicroReport
    table: tuple[Candidate, ...]
    reference: str  # what the outputs were compared against

    def to_dict(self) -> dict[str, Any]:
        """For the manifest's ``micro.choice`` key."""
        return {
            "kept": self.label,
            "reference": self.reference,
            "candidates": [c.to_dict() for c in self.table],
        }

    def format_text(self) -> str:
        lines = [f"converter choices (outputs compared with {self.reference}):"]
        for c in self.table:
            t1 = "n/a" if c.top1_vs_reference is None else f"{c.top1_vs_reference:.2%}"
            lines.append(
                f"  {'*' if c.kept else ' '} {c.label:<18} {c.model_bytes:>9,} B  arena "
                f"{c.arena_required:>8,} B  top-1 {t1:>7}  "
                f"max diff {c.max_abs_diff_vs_reference:.3g}"
                f"{'' if c.agrees else '  (disagrees)'}{'' if c.fits else '  (over budget)'}"
            )
        return "\n".join(lines)


def micro_candidates(
    source: Any, profile: Profile, calibration: np.ndarray, **extra: Any
) -> dict[str, bytes]:
    """Conversions of ``source`` in the profile's scheme that differ only in dense weight scales.

    Per-tensor scales store one float per dense layer instead of one per output
    unit; on TFLM that means smaller flatbuffers and smaller persistent op data.
    ``extra`` goes to ``ConvertOptions`` (e.g. the int4 layers of mixed-int4).
    """
    from edgec.convert import ConvertOptions, convert

    out: dict[str, bytes] = {}
    for label, per_channel in (("per-channel dense", True), ("per-tensor dense", False)):
        opts = ConvertOptions(
            quantization=profile.quantization,
            input_dtype=profile.input_dtype,
            output_dtype=profile.output_dtype,
            per_channel_dense=per_channel,
            float_fallback=profile.float_fallback,
            **extra,
        )
        content = convert(source, opts, calibration)
        if content not in out.values():  # a model without dense layers converts the same way
            out[label] = content
    return out


def choose_smallest(
    candidates: Mapping[str, bytes],
    profile: Profile,
    inputs: np.ndarray,
    *,
    reference_outputs: np.ndarray | None = None,
    max_agreement_loss: float = 0.01,
    trusted: bool = True,
    report: Callable[..., MicroReport] | None = None,
) -> Choice:
    """Measure every candidate and keep the smallest that still agrees and, if any can, fits.

    Outputs are compared (LiteRT, float space) with ``reference_outputs`` (e.g. the
    float model's) or else with the first candidate's. A candidate agrees if its
    top-1 agreement is within ``max_agreement_loss`` of the first candidate's and
    TFLM matches LiteRT on it. Among those, one that fits the budgets wins over one
    that does not; then fewer model bytes, then a smaller arena.
    """
    from edgec.runtime import TFLiteModel

    if not candidates:
        raise ConversionError("no candidate artifacts to choose from")
    make = report or fit_report
    x = np.asarray(inputs, dtype=np.float32)
    labels = list(candidates)
    preds = {k: TFLiteModel(candidates[k]).predict(x) for k in labels}
    ref = reference_outputs if reference_outputs is not None else preds[labels[0]]
    ref_name = "the given reference outputs" if reference_outputs is not None else labels[0]
    reports = {k: make(candidates[k], profile, x, where=k, trusted=trusted) for k in labels}

    def top1(p: np.ndarray) -> float | None:
        if p.ndim < 2 or p.shape[-1] < 2:
            return None
        a, b = p.reshape(len(p), -1), np.asarray(ref).reshape(len(ref), -1)
        return float(np.mean(a.argmax(-1) == b.argmax(-1)))

    base = top1(preds[labels[0]])
    rows = []
    for k in labels:
        r, t1 = reports[k], top1(preds[k])
        diff = float(np.max(np.abs(preds[k].astype(np.float64) - np.asarray(ref, np.float64))))
        agrees = (r.agreement is None or r.agreement.ok) and (
            t1 is None or base is None or t1 >= base - max_agreement_loss
        )
        rows.append(
            Candidate(
                label=k,
                model_bytes=r.model_bytes,
                arena_required=r.arena_required,
                flash_bytes=r.flash_bytes,
                ram_bytes=r.ram_bytes,
                fits=all(c.ok for c in r.checks),
                tflm_matches_litert=r.agreement is None or r.agreement.ok,
                top1_vs_reference=t1,
                max_abs_diff_vs_reference=diff,
                agrees=agrees,
            )
        )
    pool = [c for c in rows if c.agrees] or rows[:1]  # nothing agrees: keep the reference
    best = min(pool, key=lambda c: (not c.fits, c.model_bytes, c.arena_required))
    table = tuple(Candidate(**{**c.__dict__, "kept": c.label == best.label}) for c in rows)
    return Choice(
        label=best.label,
        content=candidates[best.label],
        report=reports[best.label],
        table=table,
        reference=ref_name,
    )
