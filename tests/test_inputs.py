"""Points 3 and 4: every model format and every data source, real files made here."""

from __future__ import annotations

import numpy as np
import pytest

from edgec.data import load_dataset
from edgec.errors import InputError
from edgec.loaders import load_model


def test_keras3_file(cnn_keras_file):
    m = load_model(cnn_keras_file)
    assert m.format == "keras" and m.keras is not None
    assert m.input_shape == (8, 8, 1) and m.output_shape == (10,)
    assert len(m.sha256) == 64


def test_functional_residual_model(residual_keras_file):
    m = load_model(residual_keras_file)
    assert any(type(layer).__name__ == "Add" for layer in m.keras.layers)


def test_legacy_keras2_h5_is_repaired_and_says_so(tmp_path):
    import tf_keras

    legacy = tf_keras.Sequential(
        [
            tf_keras.layers.InputLayer(input_shape=(8, 8, 3)),
            tf_keras.layers.DepthwiseConv2D(3),  # Keras 2 writes groups=1, which Keras 3 rejects
            tf_keras.layers.Flatten(),
            tf_keras.layers.Dense(4),
        ]
    )
    path = tmp_path / "legacy.h5"
    legacy.save(path)
    m = load_model(path)
    assert m.loader.endswith("(repaired legacy h5)")
    assert any("DepthwiseConv2D: dropped 'groups'" in n for n in m.notes)
    x = np.random.default_rng(0).random((4, 8, 8, 3), dtype=np.float32)
    np.testing.assert_allclose(
        m.keras.predict(x, verbose=0), legacy.predict(x, verbose=0), atol=1e-6
    )


def test_savedmodel_directory(tmp_path, cnn_model):
    path = tmp_path / "sm"
    cnn_model.export(path, format="tf_saved_model", verbose=False)
    m = load_model(path)
    assert m.format == "savedmodel" and m.keras is None
    assert m.input_shape == (8, 8, 1) and m.output_shape == (10,)


def test_float_tflite_is_quantized_by_the_litert_quantizer(tmp_path, cnn_model, digits):
    from edgec.convert import ConvertOptions, convert
    from edgec.evaluate import evaluate
    from edgec.modelinfo import read_model
    from edgec.profiles import IODtype, Quantization

    path = tmp_path / "float.tflite"
    path.write_bytes(convert(cnn_model, ConvertOptions(quantization=Quantization.FLOAT32)))
    m = load_model(path)
    assert m.format == "tflite" and m.input_shape == (8, 8, 1)
    opts = ConvertOptions(
        quantization=Quantization.INT8, input_dtype=IODtype.INT8, output_dtype=IODtype.INT8
    )
    q = convert(m.convert_source, opts, calibration=digits.calibration(100))
    info = read_model(q)
    assert info.input_tensors[0].dtype == "int8" and not info.float_ops()
    assert evaluate(q, digits, latency=False).metrics["accuracy"] > 0.85


@pytest.mark.parametrize(
    "name,content,match",
    [
        ("missing.keras", None, "does not exist"),
        ("corrupt.keras", b"not a zip at all", "not a valid .keras archive"),
        ("corrupt.h5", b"\x89HDF\r\n\x1a\n" + b"\0" * 40, "not a readable HDF5 file"),
        ("corrupt.tflite", b"\x1c\0\0\0TFL3" + b"\xff" * 64, "TFLite"),
        ("model.onnx", b"onnx", "unsupported format '.onnx'"),
    ],
)
def test_bad_model_files_fail_clearly(tmp_path, name, content, match):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=match):
        load_model(path)


def test_truncated_tflite_never_crashes(tmp_path, cnn_model):
    from edgec.convert import ConvertOptions, convert
    from edgec.profiles import Quantization

    good = convert(cnn_model, ConvertOptions(quantization=Quantization.FLOAT32))
    for cut in (12, len(good) // 3, len(good) - 100):
        path = tmp_path / f"cut{cut}.tflite"
        path.write_bytes(good[:cut])
        with pytest.raises(InputError):
            load_model(path)


def test_npz_with_four_keys_and_with_x_y_split(tmp_path, digits, digits_npz):
    ds = load_dataset(digits_npz, (8, 8, 1))
    assert len(ds.x_train) == len(digits.x_train) and ds.num_classes == 10
    path = tmp_path / "xy.npz"
    onehot = np.eye(10)[np.concatenate([digits.y_train, digits.y_val])]
    np.savez(path, x=np.concatenate([digits.x_train, digits.x_val]), y=onehot)
    ds = load_dataset(path, (8, 8, 1))
    assert len(ds.x_val) == round(0.2 * (len(digits.x_train) + len(digits.x_val)))
    assert ds.y_train.dtype == np.int64 and ds.y_train.max() == 9


def test_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(5):
            Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(
                tmp_path / cls / f"{i}.png"
            )
    ds = load_dataset(tmp_path, (16, 16, 3))
    assert ds.class_names == ("cat", "dog")
    assert (
        ds.x_train.shape[1:] == (16, 16, 3) and ds.x_train.min() >= 0.0 and ds.x_train.max() <= 1.0
    )
    assert len(ds.x_train) + len(ds.x_val) == 10


def test_calibration_size_and_synthetic_fallback(digits):
    assert len(digits.calibration(200, seed=1)) == 200
    np.testing.assert_array_equal(digits.calibration(50, seed=3), digits.calibration(50, seed=3))
    ds = load_dataset(None, (8, 8, 1))
    assert ds.synthetic and not ds.labeled and "no data given" in ds.source


def test_bad_data_fails_clearly(tmp_path, digits):
    nan = digits.x_train.copy()
    nan[3, 2, 2, 0] = np.nan
    path = tmp_path / "nan.npz"
    np.savez(path, x_train=nan, y_train=digits.y_train, x_val=digits.x_val, y_val=digits.y_val)
    with pytest.raises(InputError, match=r"x_train contains NaN .*index \(3, 2, 2, 0\)"):
        load_dataset(path, (8, 8, 1))
    with pytest.raises(
        InputError, match=r"sample shape \(8, 8, 1\); the model takes \(28, 28, 1\)"
    ):
        load_dataset("demo", (28, 28, 1))
    path = tmp_path / "neg.npz"
    np.savez(path, x=digits.x_train, y=-digits.y_train)
    with pytest.raises(InputError, match="negative"):
        load_dataset(path, (8, 8, 1))
    path = tmp_path / "keys.npz"
    np.savez(path, images=digits.x_train)
    with pytest.raises(InputError, match="expected x_train, y_train, x_val, y_val"):
        load_dataset(path, (8, 8, 1))
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(InputError, match=r"not a readable \.npz"):
        load_dataset(tmp_path / "junk.npz", (8, 8, 1))
