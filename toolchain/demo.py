"""The embedded demo: a small CNN trained on real handwritten digits, offline.

scikit-learn ships the UCI handwritten digits (1,797 labeled 8x8 images), so the
demo needs no download. ``edgec demo`` trains this model, saves it as a normal
``.keras`` file and builds it like any user model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgec.data import Dataset, demo_dataset


def train_demo_model(
    data: Dataset | None = None,
    *,
    epochs: int = 30,
    seed: int = 0,
    callbacks: list[Any] | None = None,
) -> Any:
    import keras

    data = data or demo_dataset(seed=seed)
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1), name="digits"),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ],
        name="digits_cnn",
    )
    model.compile(
        optimizer=keras.optimizers.Adam(2e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(
        data.x_train,
        data.y_train,
        epochs=epochs,
        batch_size=64,
        verbose=0,
        validation_data=(data.x_val, data.y_val),
        callbacks=callbacks or [],
    )
    return model


def save_demo_model(
    out_dir: Path, *, epochs: int = 30, seed: int = 0, callbacks: list[Any] | None = None
) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "digits_cnn.keras"
    model = train_demo_model(epochs=epochs, seed=seed, callbacks=callbacks)
    tmp = path.with_name(".digits_cnn.tmp.keras")
    model.save(tmp)
    tmp.replace(path)
    return path
