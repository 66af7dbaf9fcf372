"""Firmware-ready output for microcontrollers: the model as C++ source, the op resolver, the arena.

``write_firmware(folder, content, report)`` writes, into ``<artifact>/firmware/``:

* ``model_data.h`` / ``model_data.cc``: the flatbuffer as
  ``alignas(16) const unsigned char g_model[]`` and ``g_model_len``, plus the
  ``kTensorArenaSize`` constant (the fit report's recommended arena);
* ``op_resolver.h``: ``tflite::MicroMutableOpResolver<N>`` with exactly the
  ``Add…()`` calls for the ops the model uses (N = the number of distinct ops),
  so the firmware links only the kernels it needs.

The BuiltinOperator -> ``Add…`` table follows TFLM's
``tensorflow/lite/micro/micro_mutable_op_resolver.h``; an op without an entry
fails with the op and layer named, never with a guessed method name.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from edgec.errors import ConversionError
from edgec.files import write_atomic
from edgec.modelinfo import ModelInfo, read_model

if TYPE_CHECKING:
    from edgec.micro import MicroReport

# BuiltinOperator name (as modelinfo reports it) -> MicroMutableOpResolver method.
TFLM_ADD_METHODS: dict[str, str] = {
    "ABS": "AddAbs",
    "ADD": "AddAdd",
    "ADD_N": "AddAddN",
    "ARG_MAX": "AddArgMax",
    "ARG_MIN": "AddArgMin",
    "ASSIGN_VARIABLE": "AddAssignVariable",
    "AVERAGE_POOL_2D": "AddAveragePool2D",
    "BATCH_MATMUL": "AddBatchMatMul",
    "BATCH_TO_SPACE_ND": "AddBatchToSpaceNd",
    "BROADCAST_ARGS": "AddBroadcastArgs",
    "BROADCAST_TO": "AddBroadcastTo",
    "CALL_ONCE": "AddCallOnce",
    "CAST": "AddCast",
    "CEIL": "AddCeil",
    "CONCATENATION": "AddConcatenation",
    "CONV_2D": "AddConv2D",
    "COS": "AddCos",
    "CUMSUM": "AddCumSum",
    "DEPTH_TO_SPACE": "AddDepthToSpace",
    "DEPTHWISE_CONV_2D": "AddDepthwiseConv2D",
    "DEQUANTIZE": "AddDequantize",
    "DIV": "AddDiv",
    "ELU": "AddElu",
    "EMBEDDING_LOOKUP": "AddEmbeddingLookup",
    "EQUAL": "AddEqual",
    "EXP": "AddExp",
    "EXPAND_DIMS": "AddExpandDims",
    "FILL": "AddFill",
    "FLOOR": "AddFloor",
    "FLOOR_DIV": "AddFloorDiv",
    "FLOOR_MOD": "AddFloorMod",
    "FULLY_CONNECTED": "AddFullyConnected",
    "GATHER": "AddGather",
    "GATHER_ND": "AddGatherNd",
    "GREATER": "AddGreater",
    "GREATER_EQUAL": "AddGreaterEqual",
    "HARD_SWISH": "AddHardSwish",
    "IF": "AddIf",
    "L2_NORMALIZATION": "AddL2Normalization",
    "L2_POOL_2D": "AddL2Pool2D",
    "LEAKY_RELU": "AddLeakyRelu",
    "LESS": "AddLess",
    "LESS_EQUAL": "AddLessEqual",
    "LOG": "AddLog",
    "LOGICAL_AND": "AddLogicalAnd",
    "LOGICAL_NOT": "AddLogicalNot",
    "LOGICAL_OR": "AddLogicalOr",
    "LOGISTIC": "AddLogistic",
    "LOG_SOFTMAX": "AddLogSoftmax",
    "MAXIMUM": "AddMaximum",
    "MAX_POOL_2D": "AddMaxPool2D",
    "MEAN": "AddMean",
    "MINIMUM": "AddMinimum",
    "MIRROR_PAD": "AddMirrorPad",
    "MUL": "AddMul",
    "NEG": "AddNeg",
    "NOT_EQUAL": "AddNotEqual",
    "PACK": "AddPack",
    "PAD": "AddPad",
    "PADV2": "AddPadV2",
    "PRELU": "AddPrelu",
    "QUANTIZE": "AddQuantize",
    "READ_VARIABLE": "AddReadVariable",
    "REDUCE_MAX": "AddReduceMax",
    "REDUCE_MIN": "AddReduceMin",
    "RELU": "AddRelu",
    "RELU6": "AddRelu6",
    "RESHAPE": "AddReshape",
    "RESIZE_BILINEAR": "AddResizeBilinear",
    "RESIZE_NEAREST_NEIGHBOR": "AddResizeNearestNeighbor",
    "REVERSE_V2": "AddReverseV2",
    "ROUND": "AddRound",
    "RSQRT": "AddRsqrt",
    "SELECT_V2": "AddSelectV2",
    "SHAPE": "AddShape",
    "SIN": "AddSin",
    "SLICE": "AddSlice",
    "SOFTMAX": "AddSoftmax",
    "SPACE_TO_BATCH_ND": "AddSpaceToBatchNd",
    "SPACE_TO_DEPTH": "AddSpaceToDepth",
    "SPLIT": "AddSplit",
    "SPLIT_V": "AddSplitV",
    "SQRT": "AddSqrt",
    "SQUARE": "AddSquare",
    "SQUARED_DIFFERENCE": "AddSquaredDifference",
    "SQUEEZE": "AddSqueeze",
    "STRIDED_SLICE": "AddStridedSlice",
    "SUB": "AddSub",
    "SUM": "AddSum",
    "SVDF": "AddSvdf",
    "TANH": "AddTanh",
    "TRANSPOSE": "AddTranspose",
    "TRANSPOSE_CONV": "AddTransposeConv",
    "UNIDIRECTIONAL_SEQUENCE_LSTM": "AddUnidirectionalSequenceLSTM",
    "UNPACK": "AddUnpack",
    "VAR_HANDLE": "AddVarHandle",
    "WHILE": "AddWhile",
    "ZEROS_LIKE": "AddZerosLike",
    # Custom ops TFLM ships, registered by their custom code.
    "TFLite_Detection_PostProcess": "AddDetectionPostprocess",
    "CIRCULAR_BUFFER": "AddCircularBuffer",
    "ethos-u": "AddEthosU",
}

FIRMWARE_DIR = "firmware"  # the folder next to model.tflite
_BYTES_PER_LINE = 12


def resolver_calls(info: ModelInfo, where: str = "model") -> list[str]:
    """The ``Add…`` methods for the distinct ops of ``info``, in a stable (sorted) order."""
    calls = []
    for op in sorted(info.op_counts):
        method = TFLM_ADD_METHODS.get(op)
        if method is None:
            from edgec.micro import layer_of

            src = next(
                (
                    info.tensors[o.outputs[0]].name.split(";")[0]
                    for o in info.ops
                    if o.name == op and o.outputs
                ),
                "?",
            )
            raise ConversionError(
                f"{where}: op {op} (from layer {layer_of(src)!r}) has no TFLM "
                "MicroMutableOpResolver registration; replace that layer for microcontrollers"
            )
        calls.append(method)
    return calls


def model_source(content: bytes, *, arena_bytes: int, arena_note: str = "") -> tuple[str, str]:
    """``model_data.h`` and ``model_data.cc`` text for ``content``."""
    if arena_bytes <= 0 or arena_bytes % 16:
        raise ConversionError(f"arena size {arena_bytes} must be a positive multiple of 16")
    note = f"\n// kTensorArenaSize {arena_note}" if arena_note else ""
    header = f"""// Generated by edgec: the model flatbuffer and its TFLM tensor arena size.
#ifndef EDGEC_MODEL_DATA_H_
#define EDGEC_MODEL_DATA_H_

// The flatbuffer, 16-byte aligned as TFLM requires; it stays in flash (const).
extern const unsigned char g_model[];
extern const unsigned int g_model_len;

// Bytes to give the tensor arena: alignas(16) static uint8_t arena[kTensorArenaSize];{note}
constexpr unsigned int kTensorArenaSize = {arena_bytes};

#endif  // EDGEC_MODEL_DATA_H_
"""
    rows = []
    for start in range(0, len(content), _BYTES_PER_LINE):
        chunk = content[start : start + _BYTES_PER_LINE]
        rows.append("    " + ", ".join(f"0x{b:02x}" for b in chunk) + ",")
    body = "\n".join(rows)
    source = f"""// Generated by edgec: {len(content)} bytes of TFLite flatbuffer.
#include "model_data.h"

alignas(16) const unsigned char g_model[] = {{
{body}
}};
const unsigned int g_model_len = {len(content)};
"""
    return header, source


def resolver_source(info: ModelInfo, where: str = "model") -> str:
    """``op_resolver.h``: a MicroMutableOpResolver sized and filled for exactly these ops."""
    calls = resolver_calls(info, where)
    counts = info.op_counts
    ops_doc = ", ".join(f"{op} x{n}" for op, n in counts.items())
    lines = "\n".join(
        f"  if (resolver.{c}() != kTfLiteOk) return kTfLiteError;  // {op}"
        for c, op in zip(calls, sorted(counts), strict=True)
    )
    return f"""// Generated by edgec: registers exactly the ops the model uses ({ops_doc}).
#ifndef EDGEC_OP_RESOLVER_H_
#define EDGEC_OP_RESOLVER_H_

#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"

constexpr unsigned int kOpCount = {len(calls)};
using ModelOpResolver = tflite::MicroMutableOpResolver<kOpCount>;

// Adds the model's ops to `resolver`; returns kTfLiteError if one cannot be added.
inline TfLiteStatus RegisterModelOps(ModelOpResolver& resolver) {{
{lines}
  return kTfLiteOk;
}}

// A resolver with the model's ops, built once:
//   tflite::MicroInterpreter interpreter(tflite::GetModel(g_model), GetModelOpResolver(),
//                                        tensor_arena, kTensorArenaSize);
inline ModelOpResolver& GetModelOpResolver() {{
  static tflite::MicroMutableOpResolver<kOpCount> resolver;
  static bool registered = false;
  if (!registered) {{
    RegisterModelOps(resolver);
    registered = true;
  }}
  return resolver;
}}

#endif  // EDGEC_OP_RESOLVER_H_
"""


def write_firmware(
    folder: str | Path,
    content: bytes,
    report: MicroReport | None = None,
    *,
    arena_bytes: int | None = None,
    where: str = "model.tflite",
) -> list[Path]:
    """Write the firmware files into ``folder`` (``<artifact>/firmware``); return them.

    ``kTensorArenaSize`` is ``report.arena_recommended`` (the measured arena plus
    the profile's margin, proven by TFLM) unless ``arena_bytes`` is given. All
    files are generated before anything is written, so a failure (an op with no
    TFLM registration, a bad arena size) leaves no folder behind.
    """
    if arena_bytes is None:
        if report is None:
            raise ConversionError("write_firmware needs the fit report or an arena size")
        arena_bytes, note = report.arena_recommended, report.arena_note
    else:
        note = "set by the caller"
    info = read_model(content, where)
    texts = {"op_resolver.h": resolver_source(info, where)}
    texts["model_data.h"], texts["model_data.cc"] = model_source(
        content, arena_bytes=arena_bytes, arena_note=note
    )
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in texts.items():
        written.append(write_atomic(out / name, text))
    return written
