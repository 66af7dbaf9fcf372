"""Shared fixtures: tiny real Keras models and real data, made once per test session."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def digits():
    from edgec.data import demo_dataset

    return demo_dataset(seed=0)


@pytest.fixture(scope="session")
def digits_npz(tmp_path_factory, digits) -> Path:
    path = tmp_path_factory.mktemp("data") / "digits.npz"
    np.savez(
        path, x_train=digits.x_train, y_train=digits.y_train, x_val=digits.x_val, y_val=digits.y_val
    )
    return path


def _train(model, data, epochs: int = 8):
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(data.x_train, data.y_train, epochs=epochs, batch_size=64, verbose=0)
    return model


@pytest.fixture(scope="session")
def cnn_model(digits):
    """A small sequential CNN trained a few epochs on the digits (about 95% accurate)."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ],
        name="tiny_cnn",
    )
    return _train(model, digits)


@pytest.fixture(scope="session")
def cnn_keras_file(tmp_path_factory, cnn_model) -> Path:
    path = tmp_path_factory.mktemp("models") / "tiny_cnn.keras"
    cnn_model.save(path)
    return path


@pytest.fixture(scope="session")
def residual_keras_file(tmp_path_factory, digits) -> Path:
    """A functional model with a residual Add, trained briefly."""
    import keras

    keras.utils.set_random_seed(1)
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    y = keras.layers.Conv2D(8, 3, padding="same")(x)
    x = keras.layers.Activation("relu")(keras.layers.Add()([x, y]))
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(10, activation="softmax")(x)
    model = _train(keras.Model(inp, out, name="tiny_resnet"), digits, epochs=4)
    path = tmp_path_factory.mktemp("models") / "tiny_resnet.keras"
    model.save(path)
    return path


@pytest.fixture()
def run_cli():
    """Invoke the real click CLI in-process; returns (exit code, stdout, stderr)."""
    from click.testing import CliRunner

    from edgec.cli import main

    def run(*args: str):
        result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
        return result.exit_code, result.stdout, result.stderr

    return run
