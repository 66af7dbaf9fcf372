"""The scheme table: every scheme converts a real model and runs in every runtime it claims.

Each runtime runs the artifact as a device would: the on-device harness in a
child process. tflite-runtime (2.14, built against numpy 1.x) lives in its own
folder with its numpy (``EDGEC_TFLITE_RUNTIME_DIR``, installed by ``.ci/run``),
so it never shadows the host's numpy or ai-edge-litert.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgec.convert import ConvertOptions, conversion_facts, convert
from edgec.errors import ConversionError, ProfileError, UsageError
from edgec.modelinfo import read_model
from edgec.precision import int4_candidates
from edgec.profiles import load_profile, with_quantization
from edgec.runtime import TFLiteModel
from edgec.schemes import (
    SCHEMES,
    FloatFallback,
    IODtype,
    Quantization,
    RuntimeName,
    scheme,
    stage_order,
)

HARNESS = Path(__file__).resolve().parents[1] / "benchmarks" / "harness" / "harness.py"
TFLITE_RUNTIME_DIR = os.environ.get("EDGEC_TFLITE_RUNTIME_DIR", "/opt/edgec/tflite-runtime")
_HARNESS_RUNTIME = {
    RuntimeName.LITERT: "litert",
    RuntimeName.TFLITE_RUNTIME: "tflite_runtime",
    RuntimeName.TFLM: "tflm",
}


@pytest.fixture(scope="module")
def conv_dense_model(digits):
    """Conv2D, DepthwiseConv2D and two Dense layers: every op kind the schemes treat apart."""
    import keras

    keras.utils.set_random_seed(3)
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv")(inp)
    x = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu", name="dw")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(32, activation="relu", name="hidden")(x)
    out = keras.layers.Dense(10, activation="softmax", name="head")(x)
    model = keras.Model(inp, out, name="conv_dense")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(digits.x_train, digits.y_train, epochs=6, batch_size=64, verbose=0)
    return model


@pytest.fixture(scope="module")
def float_content(conv_dense_model) -> bytes:
    """The model as a float32 flatbuffer, converted once for every case here."""
    return convert(conv_dense_model, ConvertOptions(quantization=Quantization.FLOAT32))


@pytest.fixture(scope="module")
def calib(digits) -> np.ndarray:
    # 32 samples: the int4 quantizer calibrates one sample at a time in Python, and what is
    # checked here (op types, I/O types, accuracy > 0.8, agreement between runtimes) does
    # not depend on how many samples set the int8 ranges.
    return digits.calibration(32)


def _options(q: Quantization, io: IODtype, float_content: bytes) -> ConvertOptions:
    extra = {}
    if scheme(q).per_layer_int4:
        extra["int4_layers"] = (int4_candidates(float_content)[0].name,)
    return ConvertOptions(quantization=q, input_dtype=io, output_dtype=io, **extra)


def run_in(runtime: RuntimeName, model: Path, x: np.ndarray, tmp: Path) -> dict:
    """The harness, in a child process, running ``model`` on ``x`` in ``runtime``."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if runtime is RuntimeName.TFLITE_RUNTIME:
        assert Path(TFLITE_RUNTIME_DIR, "tflite_runtime").is_dir(), (
            f"tflite-runtime is not installed in {TFLITE_RUNTIME_DIR} (see .ci/run)"
        )
        env["PYTHONPATH"] = TFLITE_RUNTIME_DIR
    inputs = tmp / "x.npy"
    np.save(inputs, x)
    args = ["--runtime", _HARNESS_RUNTIME[runtime], "--input", str(inputs), "--runs", "2"]
    proc = subprocess.run(
        [sys.executable, str(HARNESS), str(model), *args, "--warmup-runs", "1", "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, f"{runtime} failed on {model.name}: {proc.stderr[-800:]}"
    return json.loads(proc.stdout)


@pytest.mark.parametrize("q", list(Quantization), ids=str)
def test_every_scheme_converts_and_runs_in_each_runtime_it_claims(
    q, conv_dense_model, float_content, calib, digits, tmp_path
):
    sch = SCHEMES[q]
    # Integer I/O where the scheme has it, so TFLM runs it with no float op at all.
    io = IODtype.INT8 if IODtype.INT8 in sch.io_types else IODtype.FLOAT32
    # A quantizer-only scheme converts the Keras model to float32 first, then quantizes that
    # flatbuffer (edgec.convert): start it from the float32 conversion made once.
    source = conv_dense_model if sch.converter is not None else float_content
    content = convert(source, _options(q, io, float_content), calib)
    info = read_model(content)
    assert info.input_tensors[0].dtype == str(io)
    if sch.integer_only:
        assert info.float_ops() == [], info.op_counts
    facts = conversion_facts(content)
    if sch.quantizer is not None and sch.quantizer.int4_ops:
        int4_ops = {
            op.name for op in info.ops if any(info.tensors[i].dtype == "int4" for i in op.inputs)
        }
        assert int4_ops and int4_ops <= set(sch.quantizer.int4_ops), int4_ops
        assert facts["int4_weights"]
    else:
        assert facts["int4_weights"] == []

    # Host accuracy through LiteRT: every scheme still classifies the digits.
    lite = TFLiteModel(content)
    pred = lite.predict(digits.x_val).reshape(len(digits.x_val), -1).argmax(1)
    assert np.mean(pred == digits.y_val) > 0.8, q

    path = tmp_path / f"{q}.tflite"
    path.write_bytes(content)
    x = lite.quantize_input(digits.x_val[:1])
    sums = {}
    for runtime in sorted(sch.runtimes):
        doc = run_in(runtime, path, x, tmp_path)
        assert doc["runtime"]["name"] == _HARNESS_RUNTIME[runtime]
        sums[runtime] = doc["output_checksum"]["sum"]
    # The same input gives the same output in every runtime (int8 outputs: within a
    # few quantization steps between optimized and reference kernels).
    tol = 10.0 if io is IODtype.INT8 else 1e-2
    first = sums[RuntimeName.LITERT]
    assert all(abs(v - first) <= tol for v in sums.values()), sums


def test_int4_schemes_are_smaller_and_mixed_keeps_only_the_chosen_layers(float_content, calib):
    sizes = {}
    for q in (Quantization.INT8, Quantization.INT4):
        sizes[q] = len(convert(float_content, ConvertOptions(quantization=q), calib))
    assert sizes[Quantization.INT4] < 0.8 * sizes[Quantization.INT8], sizes
    layers = int4_candidates(float_content)
    assert {x.op for x in layers} == {"CONV_2D", "FULLY_CONNECTED"} and len(layers) == 3
    hidden = next(x for x in layers if x.weights == 32 * 8 * 8 * 16)
    mixed = convert(
        float_content,
        ConvertOptions(quantization=Quantization.MIXED_INT4, int4_layers=(hidden.name,)),
        calib,
    )
    int4 = conversion_facts(mixed)["int4_weights"]
    assert [w["elements"] for w in int4] == [hidden.weights]
    with pytest.raises(ConversionError, match="needs the per-layer choice"):
        convert(float_content, ConvertOptions(quantization=Quantization.MIXED_INT4), calib)


def test_profiles_and_overrides_read_the_table(tmp_path):
    assert set(SCHEMES) == set(Quantization)
    assert load_profile("rpi4").float_fallback is FloatFallback.ALLOW
    assert load_profile("cortex-m4").float_fallback is FloatFallback.REFUSE
    for name in ("rpi5", "phone", "x86-64"):
        assert load_profile(name).float_fallback is FloatFallback.ALLOW, name
    for name in ("cortex-m7", "esp32-s3"):
        assert load_profile(name).float_fallback is FloatFallback.REFUSE, name
    # A user profile on TFLM without the key is strict; LiteRT without it allows.
    path = tmp_path / "m.toml"
    path.write_text(
        'description = "d"\narch = "a"\nruntime = "tflm"\nthreads = 1\nquantization = "int4"\n'
    )
    assert load_profile(path).float_fallback is FloatFallback.REFUSE
    path.write_text('extends = "cortex-m4"\nquantization = "float16"\n')
    with pytest.raises(ProfileError, match=r"'quantization' = 'float16' does not run on tflm"):
        load_profile(path)
    path.write_text('extends = "rpi4"\nfloat_fallback = "sometimes"\n')
    with pytest.raises(ProfileError, match="'float_fallback' = 'sometimes' is not one of"):
        load_profile(path)
    m4 = with_quantization(load_profile("cortex-m4"), "int4")
    assert m4.quantization is Quantization.INT4
    with pytest.raises(UsageError, match=r"--quantization dynamic does not run on cortex-m4"):
        with_quantization(load_profile("cortex-m4"), "dynamic")
    phone = with_quantization(load_profile("phone"), "float16")
    assert phone.quantization is Quantization.FLOAT16 and phone.variants == ()
    # The report's size chart orders stages as the table says: biggest scheme first.
    order = stage_order()
    assert sorted(order, key=order.get) == [
        "float32",
        "float16",
        "dynamic",
        "int8",
        "mixed-int4",
        "int4",
    ]
