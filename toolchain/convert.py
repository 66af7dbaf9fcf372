"""The back end: a model becomes a TFLite flatbuffer in one quantization scheme.

Keras models (and SavedModels) go through TensorFlow's ``TFLiteConverter``;
an existing float ``.tflite`` is quantized by the LiteRT quantizer
(``ai-edge-quantizer``), never by hand. A full-int8 result is checked to hold
only integer ops, and the conversion fails naming the ones that are not.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgec.errors import ConversionError, InputError
from edgec.modelinfo import read_model
from edgec.profiles import IODtype, Quantization
from edgec.quiet import quiet_fds


@dataclass(frozen=True, kw_only=True)
class ConvertOptions:
    quantization: Quantization
    input_dtype: IODtype = IODtype.FLOAT32  # only full int8 can change the I/O type
    output_dtype: IODtype = IODtype.FLOAT32
    # Per-channel scales for fully connected weights; per-tensor is smaller
    # and what TFLM's reference kernels were written for.
    per_channel_dense: bool = True

    def label(self) -> str:
        if self.quantization is not Quantization.INT8:
            return str(self.quantization)
        io_ = f"{self.input_dtype}-in/{self.output_dtype}-out"
        return f"int8 ({io_}{'' if self.per_channel_dense else ', per-tensor dense'})"


def convert(source: Any, options: ConvertOptions, calibration: np.ndarray | None = None) -> bytes:
    """Convert ``source`` (a Keras model, a SavedModel path, or float .tflite bytes)."""
    if options.quantization is Quantization.INT8 and calibration is None:
        raise ConversionError("full int8 needs a representative (calibration) set")
    if isinstance(source, (bytes, bytearray)):
        content = _quantize_tflite(bytes(source), options, calibration)
    else:
        content = _convert_tf(source, options, calibration)
    if options.quantization is Quantization.INT8:
        check_integer_only(content, options)
    return content


def check_integer_only(content: bytes, options: ConvertOptions) -> None:
    info = read_model(content, "converted model")
    float_ops = info.float_ops()
    if float_ops:
        raise ConversionError(
            f"the full-int8 artifact still computes in float in ops {', '.join(float_ops)}; "
            "these ops have no int8 kernel: replace them, or use quantization = 'dynamic'"
        )
    want = {"input": options.input_dtype, "output": options.output_dtype}
    for side, tensors in (("input", info.input_tensors), ("output", info.output_tensors)):
        for t in tensors:
            if t.dtype != str(want[side]):
                raise ConversionError(
                    f"{side} {t.name!r} is {t.dtype}, the profile asks {want[side]}"
                )


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
    q = options.quantization
    if q is not Quantization.FLOAT32:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if q is Quantization.FLOAT16:
        converter.target_spec.supported_types = [tf.float16]
    elif q is Quantization.INT8:
        assert calibration is not None
        converter.representative_dataset = _representative(calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
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
    q = options.quantization
    if q is Quantization.FLOAT32:
        return content
    if q is Quantization.FLOAT16:
        raise ConversionError(
            "float16 from a .tflite input is not offered by the LiteRT quantizer; "
            "give the Keras model or SavedModel instead, or use 'dynamic' or 'int8'"
        )
    from ai_edge_quantizer import quantizer, recipe

    info = read_model(content, "input .tflite")
    if any(t.dtype != "float32" for t in info.input_tensors):
        raise InputError("the input .tflite is already quantized; give a float32 .tflite")
    qt = quantizer.Quantizer(
        content,
        recipe.dynamic_wi8_afp32() if q is Quantization.DYNAMIC else recipe.static_wi8_ai8(),
    )
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
    if (
        q is Quantization.INT8
        and (options.input_dtype, options.output_dtype) != (IODtype.FLOAT32,) * 2
    ):
        out = _modify_io(out, options)
    return out


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


def _modify_io(content: bytes, options: ConvertOptions) -> bytes:
    """Replace the float I/O of a quantized model by int8/uint8, dropping the edge QUANTIZE ops."""
    from ai_edge_litert import _pywrap_modify_model_interface as mmi

    types = {IODtype.FLOAT32: 0, IODtype.UINT8: 3, IODtype.INT8: 9}
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp, "in.tflite"), Path(tmp, "out.tflite")
        src.write_bytes(content)
        status = mmi.modify_model_interface(
            str(src), str(dst), types[options.input_dtype], types[options.output_dtype]
        )
        if status != 0 or not dst.exists():
            raise ConversionError(f"could not change the model's I/O to {options.label()}")
        return dst.read_bytes()
