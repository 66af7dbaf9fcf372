"""Issue 9 items 1 and 2: no code runs from a model file unless trusted; the tf-keras fallback builds.

Every model here is made in the test: legacy ones with tf-keras (the test extra
installs it), others with Keras 3. The code-execution tests use a canary file
that the model's Lambda would create when deserialised. The builds run the real
click CLI in this process (``run_cli``), where TensorFlow is loaded once: what
they check (the refusal's one line and exit code, the canary, the artifact) is
the same in a fresh process, and a real process's stderr is checked by
tests/test_bad_inputs.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgec.errors import InputError, UntrustedModelError
from edgec.loaders import find_code, load_model


def _payload(canary: Path) -> str:
    # The lambda's bytecode (marshalled into the file) holds the canary path as a constant.
    return f"lambda x: (open({str(canary)!r}, 'w').write('ran'), x)[1]"


def _lambda_h5(tmp_path: Path, canary: Path) -> Path:
    import tf_keras

    model = tf_keras.Sequential(
        [
            tf_keras.layers.InputLayer(input_shape=(4,)),
            tf_keras.layers.Lambda(eval(_payload(canary))),
            tf_keras.layers.Dense(2),
        ]
    )
    path = tmp_path / "lambda.h5"
    model.save(path)
    canary.unlink()  # building the model above ran the payload once, here, on purpose
    return path


def test_lambda_h5_runs_no_code_without_trust_model(tmp_path, run_cli):
    canary = tmp_path / "CANARY"
    model = _lambda_h5(tmp_path, canary)
    out = tmp_path / "out"
    code, _, err = run_cli("build", model, "-o", out)
    assert code == 3, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgec: error: "), err
    assert "Lambda layer" in lines[0] and "--trust-model" in lines[0]
    assert not canary.exists(), "the Lambda's code ran although the model was not trusted"
    assert not out.exists()

    code, _, err = run_cli("build", model, "-o", out, "--trust-model")
    assert code == 0, err
    assert canary.read_text() == "ran"  # trusted: Keras deserialised and ran the Lambda
    assert (tmp_path / "out" / "lambda" / "rpi4" / "model.tflite").is_file()


def test_every_loader_refuses_code_before_deserialising(tmp_path):
    import keras
    import tf_keras

    canary = tmp_path / "CANARY"
    # Keras 3 .keras with a Lambda.
    k3 = keras.Sequential([keras.Input((4,)), keras.layers.Lambda(eval(_payload(canary)))])
    k3.save(tmp_path / "lambda.keras")
    # A tf-keras SavedModel whose keras_metadata.pb records the Lambda.
    legacy = tf_keras.Sequential(
        [
            tf_keras.layers.InputLayer(input_shape=(4,)),
            tf_keras.layers.Lambda(eval(_payload(canary))),
            tf_keras.layers.Dense(2),
        ]
    )
    legacy.save(tmp_path / "sm", save_format="tf")
    canary.unlink()
    for path in (tmp_path / "lambda.keras", tmp_path / "sm", _lambda_h5(tmp_path, canary)):
        with pytest.raises(UntrustedModelError, match=r"Lambda layer.*--trust-model"):
            load_model(path)
        assert not canary.exists(), path
    # Trusted, the SavedModel's graph converts (the Lambda was traced when it was saved).
    assert load_model(tmp_path / "sm", trust=True).input_shape == (4,)


def test_custom_objects_and_host_calls_are_refused(tmp_path):
    import keras
    import tf_keras

    @keras.saving.register_keras_serializable(package="edgec_test")
    class Doubler(keras.layers.Layer):
        def call(self, x):
            return 2 * x

    keras.Sequential([keras.Input((4,)), Doubler()]).save(tmp_path / "custom.keras")
    with pytest.raises(UntrustedModelError, match="custom object 'Doubler' from module"):
        load_model(tmp_path / "custom.keras")

    class Halver(tf_keras.layers.Layer):
        def call(self, x):
            return x / 2

    legacy = tf_keras.Sequential([tf_keras.layers.InputLayer(input_shape=(4,)), Halver()])
    legacy.save(tmp_path / "custom.h5")
    with pytest.raises(UntrustedModelError, match="'Halver'"):
        load_model(tmp_path / "custom.h5")
    # Trusted, the loaders try and say plainly that the class's code is not there.
    with pytest.raises(InputError, match="Halver"):
        load_model(tmp_path / "custom.h5", trust=True)

    from edgec.passes.distill import load_student

    keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda x: x)]).save(
        tmp_path / "student.keras"
    )
    with pytest.raises(UntrustedModelError, match=r"distill: student .*Lambda"):
        load_student(str(tmp_path / "student.keras"))

    def layer(cls: str, **cfg: object) -> dict[str, object]:
        return {
            "class_name": "Sequential",
            "config": {"layers": [{"class_name": cls, "config": cfg}]},
        }

    # tf-keras's TFOpLambda names a TensorFlow function: tensor math is data, I/O is not.
    assert find_code(layer("TFOpLambda", name="r", function="nn.relu6")) == []
    assert find_code(layer("TFOpLambda", name="m", function="__operators__.add")) == []
    assert find_code(layer("TFOpLambda", name="w", function="io.write_file"))
    assert find_code(layer("TFOpLambda", name="p", function="py_function"))
    gadget = {
        "class_name": "function",
        "module": "keras.src.utils.file_utils",
        "config": "get_file",
    }
    assert find_code(layer("Dense", units=2, activation=gadget))
    relu = {"class_name": "function", "module": "keras.src.activations", "config": "relu"}
    assert find_code(layer("Dense", units=2, activation=relu)) == []


def _tfop_legacy_model(tmp_path: Path, digits) -> tuple[Path, object]:
    """A tf-keras functional CNN with raw TensorFlow calls: TFOpLambda layers in the .h5."""
    import tensorflow as tf
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    inp = tf_keras.Input((8, 8, 1))
    x = tf_keras.layers.Conv2D(8, 3, padding="same")(inp)
    x = tf.nn.relu6(x) * 0.5  # TFOpLambda("nn.relu6"), TFOpLambda("math.multiply")
    x = tf_keras.layers.Flatten()(x)
    out = tf_keras.layers.Dense(10, activation="softmax")(x)
    model = tf_keras.Model(inp, out, name="legacy_tfop")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(digits.x_train, digits.y_train, epochs=6, batch_size=64, verbose=0)
    path = tmp_path / "legacy_tfop.h5"
    model.save(path)
    return path, model


def test_tf_keras_fallback_builds_a_legacy_model_end_to_end(tmp_path, digits, digits_npz, run_cli):
    import keras

    path, legacy = _tfop_legacy_model(tmp_path, digits)
    with pytest.raises(ValueError, match="TFOpLambda"):
        keras.models.load_model(path, compile=False)  # Keras 3 has no TFOpLambda layer
    loaded = load_model(path)
    assert loaded.loader.startswith("tf-keras") and loaded.keras is None  # repair did not help

    code, _, err = run_cli("build", path, "-t", "rpi4", "-d", digits_npz, "-o", tmp_path / "out")
    assert code == 0, err
    art = tmp_path / "out" / "legacy_tfop" / "rpi4"
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["model"]["loader"].startswith("tf-keras")
    content = (art / "model.tflite").read_bytes()

    from edgec.modelinfo import read_model
    from edgec.runtime import TFLiteModel

    info = read_model(content)
    assert not info.float_ops() and "CONV_2D" in info.op_counts  # all-integer compute
    assert all(t.shape[0] == 1 for t in info.input_tensors)  # traced at batch 1
    got = TFLiteModel(content).predict(digits.x_val).argmax(axis=1)
    want = legacy.predict(digits.x_val, verbose=0).argmax(axis=1)
    assert np.mean(got == want) > 0.95  # the int8 artifact runs and agrees with tf-keras
    assert np.mean(want == digits.y_val) > 0.8  # and the model had learnt something
