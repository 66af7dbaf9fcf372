"""``qat`` on a model built to lose accuracy under post-training int8 (wide activation ranges)."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras

from edgec.convert import ConvertOptions, convert
from edgec.data import Dataset, demo_dataset
from edgec.errors import UnsupportedModelError
from edgec.modelinfo import read_model
from edgec.passes.prune import PrunePass
from edgec.passes.qat import QatParams, QatPass
from edgec.pipeline import PassContext, PassManager
from edgec.profiles import IODtype, Quantization
from edgec.runtime import TFLiteModel


@pytest.fixture(scope="module")
def digits() -> Dataset:
    d = demo_dataset()
    return Dataset(
        x_train=d.x_train.reshape(-1, 64),
        y_train=d.y_train,
        x_val=d.x_val.reshape(-1, 64),
        y_val=d.y_val,
        source="digits, flattened",
    )


@pytest.fixture(scope="module")
def wide(digits: Dataset) -> keras.Model:
    """An MLP whose hidden tensor spans ~300x its useful range: a few units scaled up.

    Scaling unit j's incoming weights by s and its outgoing ones by 1/s leaves the
    float function unchanged (ReLU is positively homogeneous), but the per-tensor
    int8 activation range now covers the big units, and the others round to 0-2 steps.
    """
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(64, activation="relu", name="hidden"),
            keras.layers.Dense(10, name="logits"),
        ]
    )
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(digits.x_train, digits.y_train, epochs=10, batch_size=32, verbose=0)
    hidden, out = model.get_layer("hidden"), model.get_layer("logits")
    k, b = hidden.get_weights()
    k2, b2 = out.get_weights()
    scale = np.ones(64, np.float32)
    scale[:3] = 300.0
    hidden.set_weights([k * scale, b * scale])
    out.set_weights([k2 / scale[:, None], b2])
    return model


def _int8(model: keras.Model, data: Dataset) -> bytes:
    opts = ConvertOptions(
        quantization=Quantization.INT8, input_dtype=IODtype.INT8, output_dtype=IODtype.INT8
    )
    return convert(model, opts, data.calibration(300))


def _accuracy(content: bytes, data: Dataset) -> float:
    return float(np.mean(TFLiteModel(content).predict(data.x_val).argmax(-1) == data.y_val))


def test_qat_recovers_what_post_training_int8_loses(wide, digits) -> None:
    float_acc = float(np.mean(wide.predict(digits.x_val, verbose=0).argmax(-1) == digits.y_val))
    ptq = _accuracy(_int8(wide, digits), digits)
    assert ptq < float_acc - 0.06  # the model loses under post-training int8, as built
    ctx = PassContext(data=digits, seed=0)
    model, records = PassManager([QatPass(QatParams(epochs=3))]).run(wide, ctx)
    assert records[0].details["fake_quant_nodes"] == 3  # input, hidden, logits
    content = _int8(model, digits)
    info = read_model(content)
    # Integer-only: no float tensors anywhere, as a microcontroller needs.
    assert info.float_ops() == [] and "DEQUANTIZE" not in info.op_counts
    assert {t.dtype for t in info.input_tensors + info.output_tensors} == {"int8"}
    qat = _accuracy(content, digits)
    # Measured: float 94.0%, post-training int8 84.4%, after 3 QAT epochs 88.4%.
    assert qat > ptq + 0.025


def test_qat_comes_last(wide, digits) -> None:
    ctx = PassContext(data=digits, seed=0, epochs_scale=0.0)
    with pytest.raises(UnsupportedModelError, match=r"^prune: layer 'input_fq' is a custom layer"):
        PassManager([QatPass(), PrunePass()]).run(wide, ctx)
