"""Running a TFLite flatbuffer on the host: safe loading and batched inference.

The runtime is LiteRT (``ai_edge_litert``), falling back to ``tflite_runtime``
and then the deprecated ``tf.lite.Interpreter``. A file that did not come from
this process's own converter is first loaded in a child process
(``probe_tflite``), so a malformed flatbuffer that would crash the interpreter
ends as a clear error instead of killing edgec.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgec.errors import InputError
from edgec.modelinfo import require_identifier
from edgec.quiet import quiet_fds

_PROBE = r"""
import sys
data = sys.stdin.buffer.read()
try:
    from ai_edge_litert.interpreter import Interpreter
except ImportError:
    from tflite_runtime.interpreter import Interpreter
it = Interpreter(model_content=data)
it.allocate_tensors()
print("ok", len(it.get_input_details()), len(it.get_output_details()))
"""


def interpreter_class() -> tuple[type, str]:
    """The best available TFLite interpreter class and a name for it, with its version."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, f"ai-edge-litert {version('ai-edge-litert')}"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter

        return Interpreter, f"tflite-runtime {version('tflite-runtime')}"
    except (ImportError, PackageNotFoundError):
        pass
    import tensorflow as tf

    return tf.lite.Interpreter, f"tensorflow {tf.__version__} (tf.lite, deprecated)"


def probe_tflite(content: bytes, where: str, timeout: float = 60.0) -> None:
    """Load ``content`` in a child interpreter; raise InputError if that fails or crashes."""
    require_identifier(content, where)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _PROBE], input=content, capture_output=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        raise InputError(f"{where}: the interpreter hung loading this model") from exc
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.decode(errors="replace").splitlines() if ln.strip()]
        reason = lines[-1] if lines else f"the interpreter died with signal {-proc.returncode}"
        if proc.returncode < 0:
            reason = f"the interpreter crashed (signal {-proc.returncode})"
        raise InputError(f"{where}: not a loadable TFLite model: {reason}")


@dataclass(frozen=True, kw_only=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    dtype: str
    scale: float
    zero_point: int

    @property
    def quantized(self) -> bool:
        return self.dtype in ("int8", "uint8", "int16") and self.scale != 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "scale": self.scale,
            "zero_point": self.zero_point,
        }


def _info(detail: dict[str, Any]) -> TensorInfo:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    return TensorInfo(
        name=detail["name"],
        shape=tuple(int(d) for d in detail["shape"]),
        dtype=np.dtype(detail["dtype"]).name,
        scale=float(scale),
        zero_point=int(zero_point),
    )


class TFLiteModel:
    """A loaded flatbuffer with float-in, float-out batched ``predict``.

    Quantized inputs are quantized here with the model's own scale and zero
    point, and quantized outputs dequantized, so that every artifact is compared
    in the same float space.
    """

    def __init__(self, content: bytes, *, threads: int = 1, batch: int = 64) -> None:
        cls, self.runtime_name = interpreter_class()
        self.content = content
        # LiteRT announces its XNNPACK delegate on stderr when tensors are first allocated.
        with quiet_fds():
            self.interpreter = cls(model_content=content, num_threads=threads)
            self.inputs = [_info(d) for d in self.interpreter.get_input_details()]
            self.outputs = [_info(d) for d in self.interpreter.get_output_details()]
            self._batch = 1
            if batch > 1 and len(self.inputs) == 1 and self.inputs[0].shape[:1] == (1,):
                try:
                    idx = self.interpreter.get_input_details()[0]["index"]
                    self.interpreter.resize_tensor_input(idx, [batch, *self.inputs[0].shape[1:]])
                    self.interpreter.allocate_tensors()
                    self._batch = batch
                except (RuntimeError, ValueError):
                    # Some graphs hard-code batch 1 (a Reshape to [1, ...]): one at a time.
                    self.interpreter = cls(model_content=content, num_threads=threads)
            if self._batch == 1:
                self.interpreter.allocate_tensors()

    def quantize_input(self, x: np.ndarray) -> np.ndarray:
        info = self.inputs[0]
        if not info.quantized:
            return x.astype(info.dtype)
        lim = np.iinfo(info.dtype)
        q = np.round(x / info.scale + info.zero_point)
        return np.clip(q, lim.min, lim.max).astype(info.dtype)

    def dequantize_output(self, y: np.ndarray, k: int = 0) -> np.ndarray:
        info = self.outputs[k]
        if not info.quantized:
            return y.astype(np.float32)
        return ((y.astype(np.float32) - info.zero_point) * info.scale).astype(np.float32)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Float outputs of the first output tensor for every row of ``x``."""
        it = self.interpreter
        in_idx = it.get_input_details()[0]["index"]
        out_idx = it.get_output_details()[0]["index"]
        n, b = len(x), self._batch
        chunks = []
        for start in range(0, n, b):
            part = x[start : start + b]
            real = len(part)
            if real < b:  # pad the last batch; the padding rows are dropped below
                part = np.concatenate([part, np.repeat(part[-1:], b - real, axis=0)])
            it.set_tensor(in_idx, self.quantize_input(part))
            it.invoke()
            chunks.append(self.dequantize_output(it.get_tensor(out_idx))[:real])
        return np.concatenate(chunks) if chunks else np.empty((0,), np.float32)
