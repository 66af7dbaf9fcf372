"""The on-device benchmark harness: one TFLite model in, one JSON document out.

This file is copied alone to a device and run there as ``python harness.py
MODEL [options]``. It must only need the standard library, numpy and one TFLite
runtime, so it never imports edgec, click or TensorFlow (a test checks that).

Method (after TFLite's ``benchmark_model``): the model is loaded (init time),
run once (first inference), run ``--warmup-runs`` times and at least
``--warmup-min-secs`` (discarded, reported as a mean), then run ``--runs``
times, at least ``--min-secs`` and at most ``--max-secs`` (steady state). Only
``invoke()`` is inside the timed region; inputs are set once before it, so the
harness does not measure its own copies. Raw steady-state samples are kept.

Runtimes, in order of preference for ``--runtime auto``: ``ai_edge_litert``,
``tflite_runtime``, then ``tflite_micro`` (the TFLM interpreter, for
microcontroller artifacts run on a Linux host). In ``auto`` each candidate
first loads the model and runs it once in a child process: one that crashes
(a segfault has been seen with some LiteRT wheels on aarch64) or cannot load
the model is skipped, and the JSON names it (``runtime_candidates``) next to
the one that ran. ``--check-runtimes`` does the same with a tiny model
embedded here, for ``edgec device check``: "ok" means the runtime runs.

What measured it: the ``machine`` section holds the device's arch (``uname
-m``), CPU model, core count, kernel, and whether it is an emulator
(``$EDGEC_EMULATED``, set by an emulated board's transport, or a QEMU CPU or
machine seen in /proc and /sys).

Outputs check (``--check-outputs N``): after the benchmark, the model runs
the fixed inputs ``random_inputs(specs, SEED + i)`` for i < N (``--check-seed``)
and the document's ``outputs_check`` carries every raw output, so a host can
compare them with its own run of the same inputs (``edgec bench --check-outputs``).

Output: the JSON document on stdout (or ``--out FILE``); progress lines on
stderr, each starting with ``edgec-harness:``, so a host can stream them.
Exit codes: 0 ok, 2 bad arguments or inputs, 3 the model cannot be loaded or
run, 4 no usable runtime. A crash (a signal) is the runtime's: Python's
faulthandler prints where it happened on stderr.
"""

from __future__ import annotations

import argparse
import base64
import faulthandler
import hashlib
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from typing import Any

SCHEMA = "edgec.harness/2"
CHECK_SCHEMA = "edgec.runtime-check/1"
RUNTIMES = ("auto", "litert", "tflite_runtime", "tflm")
AUTO_ORDER = ("litert", "tflite_runtime", "tflm")
PROGRESS_PREFIX = "edgec-harness:"
EMULATED_ENV = "EDGEC_EMULATED"  # e.g. "qemu-aarch64", set by an emulated board's transport
# Seconds a runtime may take to load and run a model once in the child.
LOAD_CHECK_SECS = 120.0

# A float32 [1, 2] -> x + 1 model (one ADD), 728 bytes, made with the TFLite
# converter: loaded and run in each runtime by --check-runtimes.
TINY_MODEL = base64.b64decode(
    "HAAAAFRGTDMUACAAHAAYABQAEAAMAAAACAAEABQAAAAcAAAAHAAAAHQAAAA8AQAATAEAAJQC"
    "AAADAAAAAAAAAAIAAAA0AAAABAAAANz///8FAAAABAAAABMAAABDT05WRVJTSU9OX01FVEFE"
    "QVRBAAgADAAIAAQACAAAAAQAAAAEAAAAEwAAAG1pbl9ydW50aW1lX3ZlcnNpb24ABgAAAMQA"
    "AAC8AAAAqAAAAJgAAAB0AAAABAAAAG7///8EAAAAYAAAABAAAAAAAAAACAAOAAgABAAIAAAA"
    "EAAAACQAAAAAAAYACAAEAAYAAAAEAAAAAAAAAAwAGAAUABAADAAEAAwAAACiizxWq3mHQwMA"
    "AAACAAAABAAAAAYAAAAyLjIxLjAAANr///8EAAAAEAAAADEuNS4wAAAAAAAAAAAAAAAEAAYA"
    "BAAAAAAABgAIAAQABgAAAAQAAAAEAAAAAACAP5D+//+U/v//DwAAAE1MSVIgQ29udmVydGVk"
    "LgABAAAAFAAAAAAADgAYABQAEAAMAAgABAAOAAAAFAAAABwAAABcAAAAYAAAAGQAAAAEAAAA"
    "bWFpbgAAAAABAAAAFAAAAAAADgAUAAAAEAAMAAsABAAOAAAAEAAAAAAAAAsMAAAAEAAAABT/"
    "//8BAAAAAgAAAAIAAAAAAAAAAQAAAAEAAAACAAAAAQAAAAAAAAADAAAAiAAAAEAAAAAEAAAA"
    "mv///wAAAAEQAAAAEAAAAAMAAAAYAAAAZP///wgAAABJZGVudGl0eQAAAAACAAAAAQAAAAIA"
    "AADS////AAAAARAAAAAQAAAAAgAAABQAAACc////BQAAAGFkZC95AAAAAAAAAAAAFgAYABQA"
    "AAAQAAwACAAAAAAAAAAHABYAAAAAAAABEAAAABAAAAABAAAAEAAAAOD///8BAAAAeAAAAAIA"
    "AAABAAAAAgAAAAEAAAAIAAAABAAEAAQAAAA="
)


class HarnessError(Exception):
    """A failure reported as one line on stderr with an exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def log(message: str) -> None:
    print(f"{PROGRESS_PREFIX} {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ memory
def _status_bytes(field: str) -> int | None:
    """A ``kB`` field of /proc/self/status in bytes (Linux); None elsewhere."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _maxrss_bytes() -> int | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes.
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def rss_bytes() -> int | None:
    return _status_bytes("VmRSS")


def peak_rss() -> tuple[int | None, str]:
    hwm = _status_bytes("VmHWM")
    if hwm is not None:
        return hwm, "VmHWM"
    return _maxrss_bytes(), "ru_maxrss"


# ------------------------------------------------------------------ machine
def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return ""


def _cpu_model(cpuinfo: str) -> str | None:
    """The CPU's name from /proc/cpuinfo (x86: model name; Arm: Model, else its part number)."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    for key in ("model name", "Model", "Hardware", "cpu model", "cpu"):
        if fields.get(key):
            return fields[key]
    if fields.get("CPU part"):
        return f"Arm CPU implementer {fields.get('CPU implementer', '?')} part {fields['CPU part']}"
    return platform.processor() or None


def emulation(cpuinfo: str | None = None) -> dict[str, str] | None:
    """Whether this is an emulated machine: which emulator, and what says so."""
    env = os.environ.get(EMULATED_ENV, "").strip()
    if env:
        return {"name": env, "evidence": f"${EMULATED_ENV}"}
    text = _read("/proc/cpuinfo") if cpuinfo is None else cpuinfo
    if "QEMU" in text:  # TCG's x86 CPUs: "QEMU Virtual CPU", "QEMU TCG CPU"
        return {"name": f"qemu-{platform.machine()}", "evidence": "/proc/cpuinfo names a QEMU CPU"}
    compatible = _read("/proc/device-tree/compatible")
    if "linux,dummy-virt" in compatible or "qemu" in compatible.lower():
        return {"name": f"qemu-{platform.machine()}", "evidence": "/proc/device-tree: QEMU virt"}
    return None


def machine_info() -> dict[str, Any]:
    """What this benchmark ran on: arch (uname -m), CPU, cores, kernel, emulation."""
    cpuinfo = _read("/proc/cpuinfo")
    return {
        "arch": platform.machine(),
        "cpu_model": _cpu_model(cpuinfo),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "system": platform.system(),
        "emulated": emulation(cpuinfo),
    }


# ----------------------------------------------------------------- runtimes
def _version(dist: str) -> str:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return "unknown"


class Runner:
    """One loaded model behind a small interface common to every runtime."""

    runtime: str
    version: str
    threads: int
    # TFLM's memory planner reuses the input buffers for intermediates, so an
    # invoke clobbers the inputs: they are set again (untimed) before each run.
    inputs_clobbered = False

    def input_specs(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def set_inputs(self, arrays: list[Any]) -> None:
        raise NotImplementedError

    def invoke(self) -> None:
        raise NotImplementedError

    def outputs(self) -> list[Any]:
        raise NotImplementedError

    def op_profile(self) -> dict[str, Any]:
        raise NotImplementedError


class InterpreterRunner(Runner):
    """The TFLite/LiteRT ``Interpreter`` (ai_edge_litert or tflite_runtime)."""

    def __init__(self, cls: Any, runtime: str, version: str, content: bytes, threads: int) -> None:
        self.runtime, self.version, self.threads = runtime, version, threads
        self._it = cls(model_content=content, num_threads=threads)
        self._it.allocate_tensors()
        self._in = self._it.get_input_details()
        self._out = self._it.get_output_details()

    def input_specs(self) -> list[dict[str, Any]]:
        import numpy as np

        return [
            {
                "name": d["name"],
                "shape": [int(s) for s in d["shape"]],
                "dtype": np.dtype(d["dtype"]).name,
            }
            for d in self._in
        ]

    def set_inputs(self, arrays: list[Any]) -> None:
        for detail, array in zip(self._in, arrays, strict=True):
            self._it.set_tensor(detail["index"], array)

    def invoke(self) -> None:
        self._it.invoke()

    def outputs(self) -> list[Any]:
        return [self._it.get_tensor(d["index"]) for d in self._out]

    def op_profile(self) -> dict[str, Any]:
        # Neither LiteRT's nor tflite_runtime's Python Interpreter exposes the
        # C++ op profiler; say so rather than invent numbers. The op list is
        # the interpreter's own execution plan (delegated nodes appear as one
        # DELEGATE node), which is static information, not timing.
        ops: dict[str, int] = {}
        try:
            for op in self._it._get_ops_details():
                ops[op["op_name"]] = ops.get(op["op_name"], 0) + 1
        except Exception:
            ops = {}
        return {
            "available": False,
            "reason": f"the {self.runtime} Python API exposes no per-op timings; "
            "use benchmark_model --enable_op_profiling=true on the device",
            "execution_plan_ops": ops,
        }


class MicroRunner(Runner):
    """The TFLM interpreter (``tflite_micro``): single-threaded, arena-based."""

    def __init__(self, runtime_mod: Any, version: str, content: bytes, arena: int | None) -> None:
        self.runtime, self.version, self.threads = "tflm", version, 1
        self.inputs_clobbered = True
        self._it = runtime_mod.Interpreter.from_bytes(content, arena_size=arena)
        # TFLM has no count call; its own flatbuffer reader knows the graph's I/O.
        graph = runtime_mod.convert_bytearray_to_object(bytearray(content)).subgraphs[0]
        self._n_in, self._n_out = len(graph.inputs), len(graph.outputs)

    def input_specs(self) -> list[dict[str, Any]]:
        import numpy as np

        specs = []
        for i in range(self._n_in):
            d = self._it.get_input_details(i)
            specs.append(
                {
                    "name": f"input_{i}",
                    "shape": [int(s) for s in d["shape"]],
                    "dtype": np.dtype(d["dtype"]).name,
                }
            )
        return specs

    def set_inputs(self, arrays: list[Any]) -> None:
        for i, array in enumerate(arrays):
            self._it.set_input(array, i)

    def invoke(self) -> None:
        self._it.invoke()

    def outputs(self) -> list[Any]:
        return [self._it.get_output(i) for i in range(self._n_out)]

    def op_profile(self) -> dict[str, Any]:
        return {
            "available": False,
            "reason": "the tflite_micro Python API exposes no per-op timings",
            "execution_plan_ops": {},
        }


def _load_litert() -> tuple[Any, str]:
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter, _version("ai-edge-litert")


def _load_tflite_runtime() -> tuple[Any, str]:
    from tflite_runtime.interpreter import Interpreter

    return Interpreter, _version("tflite-runtime")


def _load_tflm() -> tuple[Any, str]:
    from tflite_micro.python.tflite_micro import runtime

    return runtime, _version("tflite-micro")


_LOADERS = {"litert": _load_litert, "tflite_runtime": _load_tflite_runtime, "tflm": _load_tflm}


def import_runtime(choice: str) -> tuple[str, Any, str]:
    """Import the requested runtime (or the first available one): (name, module, version)."""
    order = list(AUTO_ORDER) if choice == "auto" else [choice]
    errors = []
    for name in order:
        try:
            obj, version = _LOADERS[name]()
            return name, obj, version
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
    raise HarnessError(
        "no TFLite runtime could be imported ("
        + "; ".join(errors)
        + "); install one with: pip install ai-edge-litert",
        4,
    )


def make_runner(
    name: str, obj: Any, version: str, content: bytes, threads: int, arena: int | None
) -> Runner:
    try:
        if name == "tflm":
            return MicroRunner(obj, version, content, arena)
        return InterpreterRunner(obj, name, version, content, threads)
    except (ValueError, RuntimeError) as exc:
        first = " ".join(str(exc).split())[:300]
        raise HarnessError(f"the {name} runtime cannot load this model: {first}", 3) from exc


# Run by each child of a load check: import the harness from its own folder (a
# plain folder or a zip), load the model in one runtime and run it once.
_CHILD = (
    "import importlib, sys; sys.path.insert(0, sys.argv[1]); "
    "sys.exit(importlib.import_module(sys.argv[2]).load_child(sys.argv[3:]))"
)


def load_child(argv: list[str]) -> int:
    """In the child: load ``model`` in ``runtime`` and invoke it once. Exit 0, 3 or 4."""
    runtime, model, threads, arena = argv[0], argv[1], int(argv[2]), argv[3]
    faulthandler.enable()
    try:
        obj, version = _LOADERS[runtime]()
    except ImportError as exc:
        print(f"{PROGRESS_PREFIX} error: {exc}", file=sys.stderr, flush=True)
        return 4
    name = runtime
    try:
        with open(model, "rb") as fh:
            content = fh.read()
        runner = make_runner(name, obj, version, content, threads, int(arena) if arena else None)
        runner.set_inputs(random_inputs(runner.input_specs(), 0))
        runner.invoke()
        runner.outputs()
    except HarnessError as exc:
        print(f"{PROGRESS_PREFIX} error: {exc}", file=sys.stderr, flush=True)
        return exc.code
    except (ValueError, RuntimeError) as exc:
        print(f"{PROGRESS_PREFIX} error: {' '.join(str(exc).split())[:300]}", file=sys.stderr)
        return 3
    print(version, flush=True)
    return 0


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def _tail(text: str, n: int = 3) -> str:
    """A dead child's last words on one line: faulthandler's fatal error and the
    innermost frames when it printed them, else the last ``n`` lines."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    fatal = next((i for i, ln in enumerate(lines) if ln.startswith("Fatal Python error")), None)
    if fatal is None:
        return " | ".join(lines[-n:])
    frames = [ln for ln in lines[fatal + 1 :] if ln.startswith("File ")]
    return " | ".join([lines[fatal], *frames[: n - 1]])


def try_runtime(name: str, model: str, threads: int, arena: int | None) -> dict[str, Any]:
    """Load ``model`` in runtime ``name`` and run it once in a child process.

    Returns ``{"name", "status", "version", "detail"}``; status is ``ok``,
    ``crashed`` (killed by a signal: named, with its last stderr lines),
    ``cannot load``, ``not installed`` or ``timed out``.
    """
    here = os.path.abspath(__file__)
    folder, stem = os.path.dirname(here), os.path.splitext(os.path.basename(here))[0]
    argv = [sys.executable, "-c", _CHILD, folder, stem, name, model, str(threads), str(arena or "")]
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=LOAD_CHECK_SECS,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return {
            "name": name,
            "status": "timed out",
            "version": None,
            "detail": f"no answer within {LOAD_CHECK_SECS:g} s",
        }
    err = "\n".join(
        ln.removeprefix(f"{PROGRESS_PREFIX} error: ") for ln in proc.stderr.splitlines()
    )
    if proc.returncode == 0:
        return {"name": name, "status": "ok", "version": proc.stdout.strip() or None, "detail": ""}
    if proc.returncode < 0:
        return {
            "name": name,
            "status": "crashed",
            "version": None,
            "detail": f"killed by {_signal_name(proc.returncode)}"
            + (f": {_tail(err)}" if err.strip() else ""),
        }
    status = "not installed" if proc.returncode == 4 else "cannot load"
    return {
        "name": name,
        "status": status,
        "version": None,
        "detail": _tail(err, 1) or f"exit code {proc.returncode}",
    }


_DISTS = {
    "litert": ("ai_edge_litert", "ai-edge-litert"),
    "tflite_runtime": ("tflite_runtime", "tflite-runtime"),
    "tflm": ("tflite_micro", "tflite-micro"),
}


def runtime_key(name: str) -> str | None:
    """Which installed runtime this is (version, where it lives, which Python), found
    without importing it; None when it is not installed."""
    import importlib.util

    module, dist = _DISTS[name]
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return None
    return f"{name} {_version(dist)} {spec.origin} {sys.executable}"


def _read_cache(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(path: str | None, data: dict[str, Any]) -> None:
    if not path:
        return
    try:
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only folder only costs the next run its check again


def select_runtime(
    model: str, threads: int, arena: int | None, say: Any = log, cache: str | None = None
) -> tuple[str, list[dict[str, Any]]]:
    """``--runtime auto``: the first runtime that loads and runs ``model`` in a child.

    With ``cache`` (a JSON file beside the deployed model, so per model bytes) a
    verdict for the same installed runtime is reused: a warm benchmark pays for
    no child, and a runtime that crashed on this model is not tried again.
    """
    known = _read_cache(cache)
    tried = []
    for name in AUTO_ORDER:
        key = runtime_key(name)
        if key is None:
            got = {"name": name, "status": "not installed", "version": None, "detail": ""}
        elif isinstance(known.get(key), dict):
            got = {**known[key], "cached": True}
        else:
            got = try_runtime(name, model, threads, arena)
            if got["status"] != "timed out":
                known[key] = got
                _write_cache(cache, known)
        tried.append(got)
        if got["status"] == "ok":
            return name, tried
        if got["status"] != "not installed":
            say(f"runtime {name} skipped: {got['status']}: {got['detail']}")
    raise HarnessError(
        "no TFLite runtime could load and run this model ("
        + "; ".join(
            f"{t['name']}: {t['status']}" + (f": {t['detail']}" if t["detail"] else "")
            for t in tried
        )
        + "); install one with: pip install ai-edge-litert",
        4 if all(t["status"] == "not installed" for t in tried) else 3,
    )


def check_runtimes(say: Any = log) -> dict[str, Any]:
    """``--check-runtimes``: the embedded tiny model, loaded and run in each runtime."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="edgec-check-") as tmp:
        path = os.path.join(tmp, "tiny.tflite")
        with open(path, "wb") as fh:
            fh.write(TINY_MODEL)
        results = []
        for name in AUTO_ORDER:
            got = try_runtime(name, path, 1, None)
            say(
                f"runtime {name}: {got['status']}" + (f": {got['detail']}" if got["detail"] else "")
            )
            results.append(got)
    try:
        import numpy as np

        numpy_version: str | None = np.__version__
    except ImportError:
        numpy_version = None
    return {
        "schema": CHECK_SCHEMA,
        "runtimes": results,
        "numpy": numpy_version,
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "machine": machine_info(),
    }


# ------------------------------------------------------------------- inputs
def random_inputs(specs: list[dict[str, Any]], seed: int) -> list[Any]:
    """Seeded inputs in each tensor's own dtype: floats in [-1, 1], integers in int8 range."""
    import numpy as np

    rng = np.random.default_rng(seed)
    arrays = []
    for spec in specs:
        dtype = np.dtype(spec["dtype"])
        shape = spec["shape"]
        if np.issubdtype(dtype, np.floating):
            arrays.append(rng.uniform(-1.0, 1.0, shape).astype(dtype))
        elif np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            low, high = max(int(info.min), -128), min(int(info.max), 127)
            arrays.append(rng.integers(low, high + 1, shape).astype(dtype))
        elif dtype == np.bool_:
            arrays.append(rng.integers(0, 2, shape).astype(np.bool_))
        else:
            arrays.append(np.zeros(shape, dtype))
    return arrays


def file_inputs(path: str, specs: list[dict[str, Any]]) -> list[Any]:
    """Inputs from a .npy (one input) or .npz (by tensor name, else in order) file."""
    import numpy as np

    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise HarnessError(f"--input {path}: cannot read a .npy/.npz file ({exc})", 2) from exc
    if isinstance(loaded, np.ndarray):
        raw = [loaded]
    else:
        keys = list(loaded.files)
        names = [s["name"] for s in specs]
        raw = (
            [loaded[n] for n in names]
            if all(n in keys for n in names)
            else [loaded[k] for k in keys]
        )
    if len(raw) != len(specs):
        raise HarnessError(
            f"--input {path}: has {len(raw)} array(s), the model has {len(specs)} input(s)", 2
        )
    arrays = []
    for array, spec in zip(raw, specs, strict=True):
        shape = list(spec["shape"])
        if array.shape != tuple(shape) and array.shape == tuple(shape[1:]):
            array = array[None]  # one sample without its batch axis
        if list(array.shape) != shape:
            raise HarnessError(
                f"--input {path}: array for {spec['name']!r} has shape {list(array.shape)}, "
                f"the model wants {shape}",
                2,
            )
        arrays.append(np.ascontiguousarray(array.astype(spec["dtype"], copy=False)))
    return arrays


def check_outputs(
    runner: Runner, specs: list[dict[str, Any]], count: int, seed: int
) -> dict[str, Any]:
    """The raw outputs for the fixed, seeded check inputs: each output tensor stacked
    over the samples, as base64 of its bytes (the host decodes and compares them)."""
    import base64

    import numpy as np

    per_output: list[list[Any]] = []
    for i in range(count):
        runner.set_inputs(random_inputs(specs, seed + i))
        runner.invoke()
        for k, out in enumerate(runner.outputs()):
            if k == len(per_output):
                per_output.append([])
            per_output[k].append(np.array(out))
    outputs = []
    for samples in per_output:
        stacked = np.ascontiguousarray(np.stack(samples))
        outputs.append(
            {
                "dtype": stacked.dtype.name,
                "shape": list(stacked.shape),
                "data": base64.b64encode(stacked.tobytes()).decode("ascii"),
            }
        )
    return {"generator": "seeded", "seed": seed, "count": count, "outputs": outputs}


# -------------------------------------------------------------- statistics
def summarize(samples_ms: list[float]) -> dict[str, Any]:
    import numpy as np

    if not samples_ms:
        return {"count": 0}
    a = np.asarray(samples_ms, dtype=np.float64)
    pct = np.percentile(a, [50, 90, 99])
    return {
        "count": len(samples_ms),
        "mean_ms": float(a.mean()),
        "std_ms": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
        "min_ms": float(a.min()),
        "p50_ms": float(pct[0]),
        "p90_ms": float(pct[1]),
        "p99_ms": float(pct[2]),
        "max_ms": float(a.max()),
        "samples_ms": [round(x, 6) for x in samples_ms],
    }


def checksum(outputs: list[Any]) -> dict[str, Any]:
    h = hashlib.sha256()
    total = 0.0
    for out in outputs:
        h.update(str(out.dtype).encode())
        h.update(str(list(out.shape)).encode())
        h.update(out.tobytes())
        total += float(out.astype("float64").sum())
    return {"sha256": h.hexdigest(), "sum": total}


def _timed(fn: Any) -> float:
    t0 = time.perf_counter_ns()
    fn()
    return (time.perf_counter_ns() - t0) / 1e6


# -------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="harness.py", description="Benchmark one TFLite model; print one JSON document."
    )
    p.add_argument("model", nargs="?", help="path to the .tflite file")
    p.add_argument(
        "--runtime",
        choices=RUNTIMES,
        type=lambda v: v.replace("-", "_"),  # tflite-runtime, as the pip name spells it
        default="auto",
    )
    p.add_argument(
        "--load-check-cache",
        help="auto: reuse (and record) each runtime's load-and-run verdict in this JSON file",
    )
    p.add_argument(
        "--check-runtimes",
        action="store_true",
        help="load and run a tiny embedded model in each runtime; print which run",
    )
    p.add_argument("--threads", type=int, default=1, help="interpreter threads (default 1)")
    p.add_argument("--warmup-runs", type=int, default=1)
    p.add_argument("--warmup-min-secs", type=float, default=0.0)
    p.add_argument("--runs", type=int, default=50, help="steady-state runs (default 50)")
    p.add_argument(
        "--min-secs", type=float, default=0.0, help="run at least this long, even past --runs"
    )
    p.add_argument(
        "--max-secs",
        type=float,
        default=150.0,
        help="stop after this long, even before --runs (0: no limit)",
    )
    p.add_argument("--input", help="a .npy or .npz file of inputs (default: seeded random)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--check-outputs",
        type=int,
        default=0,
        metavar="N",
        help="after the benchmark, return the raw outputs of N fixed seeded inputs",
    )
    p.add_argument("--check-seed", type=int, default=0, help="seed of the first check input")
    p.add_argument("--arena-bytes", type=int, default=None, help="TFLM tensor arena size")
    p.add_argument(
        "--timeout",
        type=float,
        default=0.0,
        help="kill this process after this many seconds (0: never)",
    )
    p.add_argument("--out", help="write the JSON here instead of stdout")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = p.parse_args(argv)
    if args.model is None and not args.check_runtimes:
        p.error("the model path is required (or --check-runtimes)")
    if args.threads < 1 or args.runs < 1 or args.warmup_runs < 0 or args.check_outputs < 0:
        p.error("--threads and --runs must be >= 1, --warmup-runs and --check-outputs >= 0")
    return args


def _arm_watchdog(seconds: float) -> None:
    # SIGALRM's default action ends the process even while it is stuck inside
    # the runtime's C++ code, where a Python-level handler would never run.
    if seconds > 0 and hasattr(signal, "alarm"):
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.alarm(max(1, math.ceil(seconds)))


def benchmark(args: argparse.Namespace, say: Any = log) -> dict[str, Any]:
    """Run the whole method and return the JSON document as a dict."""
    import numpy as np

    if not os.path.isfile(args.model):
        raise HarnessError(f"model file {args.model} does not exist", 2)
    candidates: list[dict[str, Any]] = []
    choice = args.runtime
    if choice == "auto":
        choice, candidates = select_runtime(
            args.model, args.threads, args.arena_bytes, say, args.load_check_cache
        )
    name, obj, version = import_runtime(choice)
    say(f"runtime {name} {version}")
    rss_before = rss_bytes()

    with open(args.model, "rb") as fh:
        content = fh.read()
    t0 = time.perf_counter_ns()
    runner = make_runner(name, obj, version, content, args.threads, args.arena_bytes)
    init_ms = (time.perf_counter_ns() - t0) / 1e6
    rss_after = rss_bytes()
    say(f"loaded {len(content)} bytes in {init_ms:.1f} ms")

    specs = runner.input_specs()
    arrays = file_inputs(args.input, specs) if args.input else random_inputs(specs, args.seed)
    runner.set_inputs(arrays)

    def run_once() -> float:
        if runner.inputs_clobbered:
            runner.set_inputs(arrays)
        return _timed(runner.invoke)

    try:
        first_ms = run_once()
        warm: list[float] = []
        start = time.perf_counter()
        while len(warm) < args.warmup_runs or time.perf_counter() - start < args.warmup_min_secs:
            warm.append(run_once())
        if warm:
            say(f"warm-up {len(warm)} runs, mean {sum(warm) / len(warm):.3f} ms")

        samples: list[float] = []
        start = time.perf_counter()
        next_report = start + 1.0
        while True:
            samples.append(run_once())
            now = time.perf_counter()
            elapsed = now - start
            if now >= next_report:
                say(f"run {len(samples)}/{args.runs} ({elapsed:.1f} s)")
                next_report = now + 1.0
            if args.max_secs > 0 and elapsed >= args.max_secs:
                break
            if len(samples) >= args.runs and elapsed >= args.min_secs:
                break
        # The checksum comes from one more, untimed run on freshly set inputs.
        runner.set_inputs(arrays)
        runner.invoke()
        outputs = runner.outputs()
        checked = (
            check_outputs(runner, specs, args.check_outputs, args.check_seed)
            if args.check_outputs
            else None
        )
    except (ValueError, RuntimeError) as exc:
        first = " ".join(str(exc).split())[:300]
        raise HarnessError(f"the {name} runtime failed running this model: {first}", 3) from exc

    steady = summarize(samples)
    say(f"done: {steady['count']} runs, p50 {steady['p50_ms']:.3f} ms")
    peak, peak_source = peak_rss()
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "model": {
            "path": args.model,
            "bytes": len(content),
            "sha256": hashlib.sha256(content).hexdigest(),
        },
        "runtime": {"name": name, "version": version},
        "runtime_candidates": candidates,
        "threads": runner.threads,
        "params": {
            "warmup_runs": args.warmup_runs,
            "warmup_min_secs": args.warmup_min_secs,
            "runs": args.runs,
            "min_secs": args.min_secs,
            "max_secs": args.max_secs,
            "input": args.input or "random",
            "seed": args.seed,
        },
        "inputs": specs,
        "init_ms": init_ms,
        "first_inference_ms": first_ms,
        "warmup": {"count": len(warm), "mean_ms": float(np.mean(warm)) if warm else None},
        "steady": steady,
        "memory": {
            "rss_before_load_bytes": rss_before,
            "rss_after_load_bytes": rss_after,
            "peak_rss_bytes": peak,
            "peak_source": peak_source,
        },
        "output_checksum": checksum(outputs),
        "op_profile": runner.op_profile(),
        "platform": {
            "machine": platform.machine(),
            "system": platform.system(),
            "release": platform.release(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "python_executable": sys.executable,
            "numpy": np.__version__,
        },
        "machine": machine_info(),
    }
    if checked is not None:
        doc["outputs_check"] = checked
    return doc


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    say = (lambda _m: None) if args.quiet else log
    # A crash inside a runtime's C++ code then leaves a Python traceback on stderr.
    faulthandler.enable()
    _arm_watchdog(args.timeout)
    say(f"pid {os.getpid()}")
    try:
        doc = check_runtimes(say) if args.check_runtimes else benchmark(args, say)
    except HarnessError as exc:
        print(f"{PROGRESS_PREFIX} error: {exc}", file=sys.stderr, flush=True)
        return exc.code
    except ImportError as exc:  # numpy itself missing
        print(f"{PROGRESS_PREFIX} error: {exc}; install numpy", file=sys.stderr, flush=True)
        return 4
    text = json.dumps(doc, indent=1, sort_keys=True)
    if args.out:
        tmp = args.out + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, args.out)
    else:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
