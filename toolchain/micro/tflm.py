"""The TFLM child runner: the real TensorFlow Lite Micro interpreter, in a child process.

``run_tflm`` loads a flatbuffer into TFLM (the ``tflite-micro`` package) **in a
child process**, because a bad model can crash TFLM's C++ code. The child runs
inference, reads the recording allocator's report (``print_allocations`` writes
it from C++ to a file descriptor) and hands back exact arena bytes (total, head,
tail), the persistent allocations, raw outputs and invoke times. It then proves
the recommended arena size is enough by loading the model again into an arena
of exactly that size. An op TFLM cannot resolve, a crash or a time-out becomes a
``ConversionError`` naming the op, the layer or the signal.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgec.errors import ConversionError, EdgecError
from edgec.modelinfo import ModelInfo, read_model

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


def recommended_arena(total: int, margin: float) -> int:
    """``total`` × (1 + margin), rounded up to the 16-byte arena alignment."""
    return int(math.ceil(total * (1.0 + margin) / ARENA_ALIGN) * ARENA_ALIGN)


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
from edgec.micro.tflm import _child_main
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
