"""Reading a TFLite flatbuffer without running it: ops, tensors, parameters, MACs.

The flatbuffer is parsed with the schema bindings that ship in ``ai_edge_litert``
(pure Python), so a malformed file raises an ``InputError`` here and can never
crash the process. ``edgec inspect``, the int8 op check, the microcontroller
op resolver and the report all read models through this one module.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from edgec.errors import InputError


@cache
def _schema() -> Any:
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


@cache
def _names(kind: str) -> dict[int, str]:
    cls = getattr(_schema(), kind)
    return {v: k for k, v in vars(cls).items() if not k.startswith("_") and isinstance(v, int)}


@dataclass(frozen=True, kw_only=True)
class Tensor:
    index: int
    name: str
    shape: tuple[int, ...]
    dtype: str  # lower-case TFLite type name: float32, int8, int32, ...
    constant: bool  # has data in a buffer: a weight or a bias
    scales: tuple[float, ...] = ()
    zero_points: tuple[int, ...] = ()

    @property
    def elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= max(int(d), 1)
        return n

    def to_dict(self) -> dict[str, Any]:
        q = (
            {
                "scale": list(self.scales[:4]),
                "zero_point": list(self.zero_points[:4]),
                "channels": len(self.scales),
            }
            if self.scales
            else None
        )
        return {
            "index": self.index,
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "constant": self.constant,
            "quantization": q,
        }


@dataclass(frozen=True, kw_only=True)
class Op:
    index: int
    name: str  # BuiltinOperator name, or the custom code of a custom op
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    custom: bool = False


@dataclass(frozen=True, kw_only=True)
class ModelInfo:
    size_bytes: int
    tensors: tuple[Tensor, ...]
    ops: tuple[Op, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    subgraphs: int = 1
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def op_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(op.name for op in self.ops).items()))

    @property
    def param_count(self) -> int:
        return sum(t.elements for t in self.tensors if t.constant)

    @property
    def input_tensors(self) -> list[Tensor]:
        return [self.tensors[i] for i in self.inputs]

    @property
    def output_tensors(self) -> list[Tensor]:
        return [self.tensors[i] for i in self.outputs]

    def macs(self) -> int:
        """Estimated multiply-accumulates per inference for conv, depthwise and dense ops."""
        return sum(self.op_macs(op) for op in self.ops)

    def op_macs(self, op: Op) -> int:
        """One op's multiply-accumulates (conv, depthwise, dense; 0 for every other op)."""
        if len(op.inputs) < 2 or op.inputs[1] < 0 or not op.outputs:
            return 0
        out = self.tensors[op.outputs[0]]
        w = self.tensors[op.inputs[1]]
        if op.name in ("CONV_2D", "TRANSPOSE_CONV") and len(w.shape) == 4:
            # kernel (cout, kh, kw, cin): every output element does kh*kw*cin MACs
            _, kh, kw, cin = w.shape
            return out.elements * kh * kw * cin
        if op.name == "DEPTHWISE_CONV_2D" and len(w.shape) == 4:
            return out.elements * w.shape[1] * w.shape[2]
        if op.name in ("FULLY_CONNECTED", "BATCH_MATMUL") and len(w.shape) >= 2:
            return out.elements * w.shape[-1]
        return 0

    def float_ops(self) -> list[str]:
        """Ops that touch a float32 or float16 tensor, other than QUANTIZE/DEQUANTIZE."""
        return sorted({op.name for op in self.float_op_list()})

    def float_op_list(self) -> list[Op]:
        """Every op (in graph order) that computes on a float32 or float16 tensor."""
        found = []
        for op in self.ops:
            if op.name in ("QUANTIZE", "DEQUANTIZE"):
                continue
            touched = [self.tensors[i] for i in (*op.inputs, *op.outputs) if i >= 0]
            if any(t.dtype in ("float32", "float16") for t in touched):
                found.append(op)
        return found

    def summary(self) -> dict[str, Any]:
        return {
            "size_bytes": self.size_bytes,
            "subgraphs": self.subgraphs,
            "ops": self.op_counts,
            "op_count": len(self.ops),
            "tensor_count": len(self.tensors),
            "param_count": self.param_count,
            "macs": self.macs(),
            "inputs": [t.to_dict() for t in self.input_tensors],
            "outputs": [t.to_dict() for t in self.output_tensors],
        }


def require_identifier(head: bytes, where: str) -> None:
    """Refuse bytes whose first 8 do not carry the TFLite flatbuffer identifier."""
    if len(head) < 8 or head[4:8] != b"TFL3":
        raise InputError(f"{where}: not a TFLite flatbuffer (missing the 'TFL3' identifier)")


def read_model(content: bytes, where: str = "model") -> ModelInfo:
    """Parse ``content`` as a TFLite flatbuffer, or raise ``InputError`` saying why not."""
    require_identifier(content, where)
    s = _schema()
    try:
        model = s.ModelT.InitFromPackedBuf(bytearray(content), 0)
        return _info(model, len(content))
    except InputError:
        raise
    except Exception as exc:  # any decoding failure means a corrupt or truncated file
        raise InputError(
            f"{where}: corrupt or truncated TFLite flatbuffer ({type(exc).__name__}: {exc})"
        ) from exc


def _info(model: Any, size: int) -> ModelInfo:
    if not model.subgraphs:
        raise InputError("model has no subgraphs")
    ops_names = _names("BuiltinOperator")
    type_names = _names("TensorType")
    codes = []
    for code in model.operatorCodes or []:
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
        if builtin == _schema().BuiltinOperator.CUSTOM:
            name = (
                (code.customCode or b"").decode()
                if isinstance(code.customCode, bytes)
                else str(code.customCode)
            )
            codes.append((name or "CUSTOM", True))
        else:
            codes.append((ops_names.get(builtin, f"BUILTIN_{builtin}"), False))
    graph = model.subgraphs[0]
    buffers = model.buffers or []
    tensors = []
    for i, t in enumerate(graph.tensors or []):
        buf = buffers[t.buffer] if 0 <= t.buffer < len(buffers) else None
        has_data = buf is not None and (
            (buf.data is not None and len(buf.data) > 0) or (getattr(buf, "size", 0) or 0) > 0
        )
        q = t.quantization
        scales = tuple(float(x) for x in (q.scale if q is not None and q.scale is not None else ()))
        zps = tuple(
            int(x) for x in (q.zeroPoint if q is not None and q.zeroPoint is not None else ())
        )
        name = t.name.decode(errors="replace") if isinstance(t.name, bytes) else str(t.name or "")
        shape = tuple(int(d) for d in (t.shape if t.shape is not None else ()))
        tensors.append(
            Tensor(
                index=i,
                name=name,
                shape=shape,
                dtype=type_names.get(t.type, str(t.type)).lower(),
                constant=has_data,
                scales=scales,
                zero_points=zps,
            )
        )
    ops = []
    for i, op in enumerate(graph.operators or []):
        if not 0 <= op.opcodeIndex < len(codes):
            raise InputError(
                f"operator {i} names opcode {op.opcodeIndex}, but there are {len(codes)}"
            )
        name, custom = codes[op.opcodeIndex]
        ins = tuple(int(x) for x in (op.inputs if op.inputs is not None else ()))
        outs = tuple(int(x) for x in (op.outputs if op.outputs is not None else ()))
        for idx in (*ins, *outs):
            if idx >= len(tensors):
                raise InputError(
                    f"operator {i} ({name}) names tensor {idx}, but there are {len(tensors)}"
                )
        ops.append(Op(index=i, name=name, inputs=ins, outputs=outs, custom=custom))
    inputs = tuple(int(x) for x in (graph.inputs if graph.inputs is not None else ()))
    outputs = tuple(int(x) for x in (graph.outputs if graph.outputs is not None else ()))
    for idx in (*inputs, *outputs):
        if not 0 <= idx < len(tensors):
            raise InputError(f"graph input/output names tensor {idx}, but there are {len(tensors)}")
    desc = (
        model.description.decode(errors="replace")
        if isinstance(model.description, bytes)
        else str(model.description or "")
    )
    return ModelInfo(
        size_bytes=size,
        tensors=tuple(tensors),
        ops=tuple(ops),
        inputs=inputs,
        outputs=outputs,
        subgraphs=len(model.subgraphs),
        description=desc,
    )
