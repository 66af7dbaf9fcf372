"""``prune-channels`` on real tiny models: residual adds, concatenations, BatchNorm, Conv1D."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras

from edgec.convert import ConvertOptions, convert
from edgec.data import Dataset, demo_dataset, synthetic_dataset
from edgec.errors import RecipeError, UnsupportedModelError
from edgec.modelinfo import read_model
from edgec.passes import get_pass
from edgec.passes.prune_channels import (
    MEAN_ROWS,
    PruneChannelsParams,
    PruneChannelsPass,
    keep_count,
    narrow,
)
from edgec.pipeline import PassContext, PassManager, count_params
from edgec.profiles import Quantization
from edgec.runtime import TFLiteModel


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return demo_dataset()


def _ctx(data: Dataset, scale: float = 1.0) -> PassContext:
    return PassContext(data=data, seed=0, epochs_scale=scale)


def _residual_concat(bn: bool) -> keras.Model:
    """conv a -> (conv b) -> add(a, b) -> concat(add, conv c) -> flatten -> dense -> out."""
    inp = keras.Input((8, 8, 1))
    a = keras.layers.Conv2D(16, 3, padding="same", name="a")(inp)
    if bn:
        a = keras.layers.BatchNormalization(name="bn")(a)
    a = keras.layers.ReLU(name="relu_a")(a)
    b = keras.layers.Conv2D(16, 3, padding="same", name="b")(a)
    x = keras.layers.Add(name="add")([a, b])
    c = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="c")(x)
    x = keras.layers.Concatenate(name="cat")([x, c])
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Flatten(name="flat")(x)
    x = keras.layers.Dense(32, activation="relu", name="fc")(x)
    return keras.Model(inp, keras.layers.Dense(10, activation="softmax", name="out")(x))


def _kill(layer: keras.layers.Layer, channels: list[int]) -> None:
    kernel, bias = layer.get_weights()
    kernel[..., channels] = 0.0
    bias[channels] = 0.0
    layer.set_weights([kernel, bias])


def test_removing_dead_channels_is_exact_across_add_and_concat(digits) -> None:
    keras.utils.set_random_seed(0)
    model = _residual_concat(bn=False)
    # The residual group {a, b} has channels 0-7 dead in both producers; c has 4-11 dead.
    _kill(model.get_layer("a"), list(range(8)))
    _kill(model.get_layer("b"), list(range(8)))
    _kill(model.get_layer("c"), list(range(4, 12)))
    _kill(model.get_layer("fc"), list(range(16)))
    params = PruneChannelsParams(sparsity=0.5, round_to=1, epochs=0)
    result = PruneChannelsPass(params).run(model, _ctx(digits))
    new = result.model
    channels = result.details["channels_per_layer"]
    assert channels == {"a": [16, 8], "b": [16, 8], "c": [16, 8], "fc": [32, 16], "out": [10, 10]}
    assert new.get_layer("a").filters == new.get_layer("b").filters == 8  # one group
    assert new.get_layer("cat").output.shape[-1] == 16
    assert count_params(new) < 0.5 * count_params(model)
    x = digits.x_val[:64]
    np.testing.assert_allclose(new.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)


def test_mean_replacement_keeps_every_linear_consumers_mean(digits) -> None:
    """The removed channels' mean goes into a Dense bias and, past a bias-free 1x1 conv, into
    the moving mean of its BatchNormalization: the mean logits over the rows are kept."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(16, 3, use_bias=False, name="a")(inp)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization(name="bn_a")(x))
    x = keras.layers.Conv2D(8, 1, use_bias=False, name="b")(x)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.BatchNormalization(name="bn_b")(x))
    model = keras.Model(inp, keras.layers.Dense(10, name="out")(x))  # logits: all linear after b
    params = PruneChannelsParams(sparsity=0.5, round_to=1, epochs=0)
    rows = digits.x_train[:MEAN_ROWS]
    kept, _ = narrow(model, params, rows)
    dropped, _ = narrow(model, params)
    assert kept.get_layer("b").filters == 4 and kept.get_layer("bn_a").gamma.shape[0] == 8

    def mean_logits(m: keras.Model) -> np.ndarray:
        return m.predict(rows, verbose=0).mean(axis=0)

    want = mean_logits(model)
    np.testing.assert_allclose(mean_logits(kept), want, atol=1e-4)
    assert np.abs(mean_logits(dropped) - want).max() > 0.05  # without it the mean moves
    # The pass compensates with the same rows before it fine-tunes.
    passed = PruneChannelsPass(params).run(model, _ctx(digits)).model
    np.testing.assert_allclose(passed.predict(rows, verbose=0), kept.predict(rows, verbose=0))
    # Without data (seeded random inputs) nothing is folded in.
    blind = PruneChannelsPass(params).run(model, _ctx(synthetic_dataset((8, 8, 1)))).model
    np.testing.assert_allclose(blind.predict(rows, verbose=0), dropped.predict(rows, verbose=0))


def test_fine_tuned_residual_bn_model_has_fewer_macs_and_bytes_in_litert(digits) -> None:
    keras.utils.set_random_seed(0)
    model = _residual_concat(bn=True)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(digits.x_train, digits.y_train, epochs=4, batch_size=32, verbose=0)
    params = PruneChannelsParams(sparsity=0.5, criterion="bn_gamma")
    pruned, records = PassManager([PruneChannelsPass(params)]).run(model, _ctx(digits))
    assert records[0].params_after < 0.4 * records[0].params_before
    assert pruned.get_layer("bn").gamma.shape[0] == 8
    calib = digits.calibration(100)
    opts = ConvertOptions(quantization=Quantization.INT8)
    small, big = convert(pruned, opts, calib), convert(model, opts, calib)
    assert read_model(small).macs() < 0.4 * read_model(big).macs()
    assert len(small) < 0.5 * len(big)

    def acc(content: bytes) -> float:
        return float(np.mean(TFLiteModel(content).predict(digits.x_val).argmax(-1) == digits.y_val))

    assert acc(small) > acc(big) - 0.03  # LiteRT runs the int8 artifact; fine-tuning held it


def test_conv1d_signal_model_global_scope_keeps_multiples_of_round_to() -> None:
    rng = np.random.default_rng(0)
    t = np.linspace(0, 1, 64, dtype=np.float32)
    y = rng.integers(0, 3, 600)
    x = np.sin(2 * np.pi * (3 + 4 * y[:, None]) * t) + 0.3 * rng.standard_normal((600, 64))
    x = x[..., None].astype(np.float32)
    data = Dataset(x_train=x[:500], y_train=y[:500], x_val=x[500:], y_val=y[500:], source="sine")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((64, 1)),
            keras.layers.Conv1D(24, 5, activation="relu", name="c1"),
            keras.layers.MaxPooling1D(2),
            keras.layers.Conv1D(40, 5, activation="relu", name="c2"),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(3, name="logits"),
        ]
    )
    params = PruneChannelsParams(sparsity=0.6, scope="global", round_to=8, epochs=0)
    result = PruneChannelsPass(params).run(model, _ctx(data))
    assert isinstance(result.model, keras.Sequential)
    kept = {k: v[1] for k, v in result.details["channels_per_layer"].items()}
    assert kept["logits"] == 3
    assert all(kept[n] % 8 == 0 and kept[n] < w for n, w in (("c1", 24), ("c2", 40)))
    assert result.model.predict(x[:4], verbose=0).shape == (4, 3)


def test_keep_count_rounds_up_to_round_to() -> None:
    assert keep_count(64, 0.5, 8) == 32
    assert keep_count(64, 0.55, 8) == 32  # 28.8 -> 29 -> 32
    assert keep_count(10, 0.5, 8) == 8
    assert keep_count(6, 0.5, 8) == 6  # never wider than the layer
    assert keep_count(64, 0.99, 1) == 1


def test_contract_names_the_unsupported_layer_and_params_are_checked(digits) -> None:
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(8, 3, name="conv")(inp)
    x = keras.layers.Reshape((-1,), name="reshape_me")(x)
    model = keras.Model(inp, keras.layers.Dense(10, name="out")(x))
    with pytest.raises(
        UnsupportedModelError,
        match=r"^prune-channels: layer 'reshape_me' is a Reshape, which this pass does not "
        r"support; supported: .*Conv2D",
    ):
        PassManager([PruneChannelsPass()]).run(model, _ctx(digits))
    with pytest.raises(RecipeError, match=r"sparsity = 1\.0"):
        PruneChannelsParams(sparsity=1.0)
    with pytest.raises(RecipeError, match="exclude entry 'nope'"):
        PruneChannelsPass(PruneChannelsParams(exclude=("nope",), epochs=0)).run(
            _residual_concat(bn=False), _ctx(digits)
        )
    assert get_pass("prune-channels") is PruneChannelsPass


def test_excluded_layer_keeps_its_width(digits) -> None:
    keras.utils.set_random_seed(0)
    model = _residual_concat(bn=False)
    params = PruneChannelsParams(sparsity=0.5, exclude=("c",), epochs=0)
    result = PruneChannelsPass(params).run(model, _ctx(digits))
    channels = result.details["channels_per_layer"]
    assert channels["c"] == [16, 16] and channels["a"] == [16, 8]
