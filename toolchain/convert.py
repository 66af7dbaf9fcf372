"""The back end: a model becomes a TFLite flatbuffer in one quantization scheme.

How each scheme is made comes from the scheme table (``edgec.schemes``), never
from a branch here: Keras models (and SavedModels) go through TensorFlow's
``TFLiteConverter`` when the scheme has converter settings; an existing float
``.tflite``, and every scheme with int4 weights, goes through the LiteRT
quantizer (``litert-quantizer``) on the float32 flatbuffer, never by hand.

An integer-only result is checked for float ops. Where the profile refuses
float fall-back (microcontrollers) the conversion fails naming them; where it
allows them (LiteRT boards) they are kept and named, with their share of the
model's compute, by ``conversion_facts``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgec.errors import ConversionError, InputError
from edgec.modelinfo import ModelInfo, read_model
from edgec.quiet import quiet_fds
from edgec.schemes import FloatFallback, IODtype, Quantization, Scheme, scheme


@dataclass(frozen=True, kw_only=True)
class ConvertOptions:
    quantization: Quantization
    input_dtype: IODtype = IODtype.FLOAT32  # only integer-only schemes can change the I/O type
    output_dtype: IODtype = IODtype.FLOAT32
    # Per-channel scales for fully connected weights; per-tensor is smaller
    # and what TFLM's reference kernels were written for.
    per_channel_dense: bool = True
    # Whether an integer-only artifact may keep float ops that have no int8 kernel.
    float_fallback: FloatFallback = FloatFallback.REFUSE
    # mixed-int4: the layers (their output tensor names in the float32
    # flatbuffer) that get int4 weights; chosen by edgec.precision.
    int4_layers: tuple[str, ...] | None = None

    @property
    def scheme(self) -> Scheme:
        return scheme(self.quantization)

    def label(self) -> str:
        if not self.scheme.integer_only:
            return str(self.quantization)
        io_ = f"{self.input_dtype}-in/{self.output_dtype}-out"
        return (
            f"{self.quantization} ({io_}{'' if self.per_channel_dense else ', per-tensor dense'})"
        )


def convert(source: Any, options: ConvertOptions, calibration: np.ndarray | None = None) -> bytes:
    """Convert ``source`` (a Keras model, a SavedModel path, or float .tflite bytes)."""
    sch = options.scheme
    if sch.calibrated and calibration is None:
        raise ConversionError(f"{sch.name} needs a representative (calibration) set")
    for side, dtype in (("input", options.input_dtype), ("output", options.output_dtype)):
        if dtype not in sch.io_types:
            raise ConversionError(
                f"{sch.name} cannot have {dtype} {side}s; valid: "
                + ", ".join(sorted(str(t) for t in sch.io_types))
            )
    if sch.per_layer_int4 and options.int4_layers is None:
        raise ConversionError(
            f"{sch.name} needs the per-layer choice (edgec.precision.choose_int4_layers)"
        )
    if isinstance(source, (bytes, bytearray)):
        content = _quantize_tflite(bytes(source), options, calibration)
    elif sch.converter is None:
        # The quantizer works on flatbuffers: convert to float32 first.
        flat = _convert_tf(source, ConvertOptions(quantization=Quantization.FLOAT32), None)
        content = _quantize_tflite(flat, options, calibration)
    else:
        content = _convert_tf(source, options, calibration)
    if sch.integer_only:
        check_integer_only(content, options)
    return content


def check_integer_only(content: bytes, options: ConvertOptions) -> None:
    """Refuse float ops unless the options allow float fall-back; check the I/O types."""
    info = read_model(content, "converted model")
    float_ops = info.float_ops()
    if float_ops and options.float_fallback is FloatFallback.REFUSE:
        raise ConversionError(
            f"the full-{options.quantization} artifact still computes in float in ops "
            f"{', '.join(float_ops)}; these ops have no int8 kernel: replace them, use "
            "quantization = 'dynamic', or (on a LiteRT target) float_fallback = 'allow'"
        )
    want = {"input": options.input_dtype, "output": options.output_dtype}
    for side, tensors in (("input", info.input_tensors), ("output", info.output_tensors)):
        for t in tensors:
            if t.dtype != str(want[side]):
                raise ConversionError(
                    f"{side} {t.name!r} is {t.dtype}, the profile asks {want[side]}"
                )


def op_compute(info: ModelInfo, op: Any) -> int:
    """An op's work: its MACs (conv, dense), else one per output element (an estimate)."""
    macs = info.op_macs(op)
    if macs:
        return macs
    return sum(info.tensors[i].elements for i in op.outputs if i >= 0)


def conversion_facts(content: bytes) -> dict[str, Any]:
    """What the manifest says about an artifact's precision: float fall-back ops, int4 weights."""
    info = read_model(content, "artifact")
    total = sum(op_compute(info, op) for op in info.ops) or 1
    total_macs = info.macs() or 1
    integer = any(t.dtype in ("int8", "uint8", "int4") for t in info.tensors if not t.constant)
    fallback: dict[str, dict[str, Any]] = {}
    if integer:
        for op in info.float_op_list():
            row = fallback.setdefault(op.name, {"op": op.name, "count": 0, "macs": 0, "compute": 0})
            row["count"] += 1
            row["macs"] += info.op_macs(op)
            row["compute"] += op_compute(info, op)
    rows = []
    for row in fallback.values():
        row["macs_share"] = round(row["macs"] / total_macs, 6)
        row["compute_share"] = round(row["compute"] / total, 6)
        rows.append(row)
    int4 = [t for t in info.tensors if t.constant and t.dtype == "int4"]
    return {
        "float_fallback_ops": rows,
        "float_fallback_compute_share": round(sum(r["compute"] for r in rows) / total, 6),
        "float_fallback_macs_share": round(sum(r["macs"] for r in rows) / total_macs, 6),
        "compute_note": "compute = MACs for conv/dense ops, one per output element for others "
        "(an estimate from the flatbuffer)",
        "int4_weights": [{"tensor": t.name, "elements": t.elements} for t in int4],
    }


def _representative(calibration: np.ndarray) -> Any:
    def gen() -> Iterator[list[np.ndarray]]:
        for row in calibration:
            yield [row[None].astype(np.float32)]

    return gen


_TF_DTYPES = {IODtype.FLOAT32: "float32", IODtype.INT8: "int8", IODtype.UINT8: "uint8"}


def _convert_tf(source: Any, options: ConvertOptions, calibration: np.ndarray | None) -> bytes:
    import tensorflow as tf

    if isinstance(source, (str, Path)):
        converter = tf.lite.TFLiteConverter.from_saved_model(str(source))
    else:
        converter = _keras_converter(tf, source)
    settings = options.scheme.converter
    if settings is None:  # convert() routes these schemes through the quantizer
        raise ConversionError(f"{options.quantization} is not made by the TFLite converter")
    if settings.optimize:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if settings.supported_types:
        converter.target_spec.supported_types = [getattr(tf, t) for t in settings.supported_types]
    if settings.calibrated_int8:
        assert calibration is not None
        converter.representative_dataset = _representative(calibration)
        ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if options.float_fallback is FloatFallback.ALLOW:
            # Ops with no int8 kernel stay float between QUANTIZE/DEQUANTIZE.
            ops.append(tf.lite.OpsSet.TFLITE_BUILTINS)
        converter.target_spec.supported_ops = ops
        converter.inference_input_type = getattr(tf, _TF_DTYPES[options.input_dtype])
        converter.inference_output_type = getattr(tf, _TF_DTYPES[options.output_dtype])
        if not options.per_channel_dense:
            converter._experimental_disable_per_channel_quantization_for_dense_layers = True
    try:
        with quiet_fds():
            return bytes(converter.convert())
    except Exception as exc:
        msg = " ".join(str(exc).split())
        # The converter's messages are long MLIR dumps; the first error line names the op.
        first = next((p for p in msg.split("error:")[1:2]), msg)[:300]
        raise ConversionError(
            f"TFLite conversion to {options.label()} failed: {first.strip()}"
        ) from exc


def _keras_converter(tf: Any, model: Any) -> Any:
    """A converter for ``model`` called on a batch-1 input.

    A free batch dimension makes the converter emit SHAPE/STRIDED_SLICE/PACK
    ops around every Flatten; a device runs one sample at a time, and the
    static graph is smaller and runs on TFLM's kernels as they are. A tf-keras
    model (the legacy fallback) cannot be called on a Keras 3 input: it is
    traced as a concrete function on a batch-1 TensorSpec instead.
    """
    inputs = model.inputs if isinstance(model.inputs, list) else [model.inputs]
    static = len(inputs) == 1 and all(d is not None for d in inputs[0].shape[1:])
    if type(model).__module__.startswith("tf_keras"):
        spec = [
            tf.TensorSpec((1 if static else None, *t.shape[1:]), t.dtype, name=t.name.split(":")[0])
            for t in inputs
        ]
        call = tf.function(lambda *x: model(x[0] if len(x) == 1 else list(x), training=False))
        return tf.lite.TFLiteConverter.from_concrete_functions(
            [call.get_concrete_function(*spec)], model
        )
    if static:
        import keras

        fixed = keras.Input(
            batch_shape=(1, *inputs[0].shape[1:]),
            dtype=inputs[0].dtype,
            name=inputs[0].name.split(":")[0],
        )
        model = keras.Model(fixed, model(fixed), name=model.name)
    return tf.lite.TFLiteConverter.from_keras_model(model)


def _quantize_tflite(
    content: bytes, options: ConvertOptions, calibration: np.ndarray | None
) -> bytes:
    sch = options.scheme
    if sch.name is Quantization.FLOAT32:
        return content
    if sch.quantizer is None:
        raise ConversionError(sch.no_quantizer or f"{sch.name} is not offered for a .tflite input")
    from litert_quantizer import quantizer

    info = read_model(content, "input .tflite")
    if any(t.dtype != "float32" for t in info.input_tensors):
        raise InputError("the input .tflite is already quantized; give a float32 .tflite")
    if IODtype.UINT8 in (options.input_dtype, options.output_dtype):
        raise ConversionError(
            f"uint8 I/O is not offered by the LiteRT quantizer ({sch.name}); use int8 or float32 "
            "I/O, or give the Keras model or SavedModel for int8 with uint8 I/O"
        )
    qt = quantizer.Quantizer(content)
    _recipe(qt, options)
    try:
        with quiet_fds():
            result = None
            if qt.need_calibration:
                assert calibration is not None
                sig = _signature_input(content)
                data = {
                    "serving_default": [{sig: row[None].astype(np.float32)} for row in calibration]
                }
                result = qt.calibrate(data, num_threads=1)
            out = bytes(qt.quantize(result).quantized_model)
    except Exception as exc:
        raise ConversionError(f"the LiteRT quantizer failed: {type(exc).__name__}: {exc}") from exc
    return out


def _recipe(qt: Any, options: ConvertOptions) -> None:
    """Set up ``qt`` (a litert_quantizer.Quantizer) from the scheme's quantizer settings."""
    from litert_quantizer import qtyping
    from litert_quantizer.algorithm_manager import AlgorithmName

    settings = options.scheme.quantizer
    assert settings is not None
    op = qtyping.TFLOperationName
    tensorwise, channelwise = (
        qtyping.QuantGranularity.TENSORWISE,
        qtyping.QuantGranularity.CHANNELWISE,
    )
    if not settings.static:
        qt.add_dynamic_config(regex=".*", operation_name=op.ALL_SUPPORTED, num_bits=8)
        return
    qt.add_static_config(
        regex=".*", operation_name=op.ALL_SUPPORTED, activation_num_bits=8, weight_num_bits=8
    )
    if not options.per_channel_dense:
        qt.add_static_config(
            regex=".*",
            operation_name=op.FULLY_CONNECTED,
            activation_num_bits=8,
            weight_num_bits=8,
            weight_granularity=tensorwise,
        )
    scopes = (
        # The quantizer matches an op by its output tensor names, each followed by ";".
        [f"^{re.escape(name)};$" for name in options.int4_layers or ()]
        if settings.per_layer
        else [".*"]
    )
    for scope in scopes:
        for name in settings.int4_ops:
            qt.add_static_config(
                regex=scope,
                operation_name=op(name),
                activation_num_bits=8,
                weight_num_bits=4,
                # TFLM's fully connected kernel takes int4 weights with one scale only.
                weight_granularity=tensorwise if name == "FULLY_CONNECTED" else channelwise,
            )
    # The quantizer makes integer edges itself (int8 tensors, no QUANTIZE op);
    # a float side keeps float with a QUANTIZE/DEQUANTIZE op next to it.
    for edge, dtype in ((op.INPUT, options.input_dtype), (op.OUTPUT, options.output_dtype)):
        if dtype is IODtype.FLOAT32:
            qt.update_quantization_recipe(
                regex=".*", operation_name=edge, algorithm_key=AlgorithmName.NO_QUANTIZE
            )


def _signature_input(content: bytes) -> str:
    from edgec.runtime import interpreter_class

    cls, _ = interpreter_class()
    sigs = cls(model_content=content).get_signature_list()
    if "serving_default" not in sigs or len(sigs["serving_default"]["inputs"]) != 1:
        raise ConversionError(
            "the LiteRT quantizer needs a .tflite with one 'serving_default' signature of one input; "
            f"this one has {sigs}"
        )
    return str(sigs["serving_default"]["inputs"][0])
