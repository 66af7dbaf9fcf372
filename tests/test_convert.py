"""Point 5: every quantization scheme, I/O types, and the integer-only check."""

from __future__ import annotations

import pytest

from edgec.convert import ConvertOptions, check_integer_only, convert
from edgec.errors import ConversionError
from edgec.evaluate import evaluate
from edgec.modelinfo import read_model
from edgec.profiles import IODtype, Quantization
from edgec.schemes import scheme


@pytest.fixture(scope="module")
def converted(cnn_model, digits):
    calib = digits.calibration(100)
    out = {}
    for q in Quantization:
        # mixed-int4 needs a per-layer choice first: tests/test_schemes.py covers it.
        if not scheme(q).per_layer_int4:
            out[str(q)] = convert(cnn_model, ConvertOptions(quantization=q), calibration=calib)
    for io in (IODtype.INT8, IODtype.UINT8):
        opts = ConvertOptions(quantization=Quantization.INT8, input_dtype=io, output_dtype=io)
        out[f"int8-{io}"] = convert(cnn_model, opts, calibration=calib)
    return out


def test_sizes_shrink_with_quantization(converted):
    f32, f16, dyn, i8 = (len(converted[k]) for k in ("float32", "float16", "dynamic", "int8"))
    assert i8 < f16 < f32 and dyn < f16
    assert f32 / i8 > 3.0


def test_each_artifact_keeps_accuracy(converted, digits):
    base = evaluate(converted["float32"], digits, latency=False)
    assert base.metrics["accuracy"] > 0.85
    for name, content in converted.items():
        m = evaluate(content, digits, reference=base.outputs, latency=False).metrics
        assert m["accuracy"] >= base.metrics["accuracy"] - 0.03, name
        assert m["top1_agreement"] > 0.95, name


def test_integer_io_types_and_integer_only_ops(converted):
    for io in ("int8", "uint8"):
        info = read_model(converted[f"int8-{io}"])
        assert info.input_tensors[0].dtype == io and info.output_tensors[0].dtype == io
        assert info.float_ops() == []
        assert "QUANTIZE" not in info.op_counts or io == "uint8"


def test_integer_only_check_names_float_ops(converted):
    # A dynamic-range model keeps float activations: as an "int8" artifact it must be refused.
    with pytest.raises(ConversionError, match=r"computes in float in ops .*FULLY_CONNECTED"):
        check_integer_only(converted["dynamic"], ConvertOptions(quantization=Quantization.INT8))


def test_int8_without_calibration_is_refused(cnn_model):
    with pytest.raises(ConversionError, match="representative"):
        convert(cnn_model, ConvertOptions(quantization=Quantization.INT8))
