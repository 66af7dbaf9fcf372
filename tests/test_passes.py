"""The compression passes on small real Keras models and the real digits data."""

from __future__ import annotations

import gzip
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras

from edgec.convert import ConvertOptions, convert
from edgec.data import Dataset, demo_dataset
from edgec.errors import InputError, RecipeError, UnsupportedModelError
from edgec.passes import get_pass, pass_ids
from edgec.passes.cluster import ClusterParams, ClusterPass, kmeans_1d
from edgec.passes.distill import DistillParams, DistillPass
from edgec.passes.lowrank import LowRankParams, LowRankPass
from edgec.passes.prune import (
    PruneParams,
    PrunePass,
    holds_2_4,
    polynomial_sparsity,
)
from edgec.pipeline import PassContext, PassManager, count_params
from edgec.profiles import Quantization
from edgec.runtime import TFLiteModel


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return demo_dataset()


@pytest.fixture(scope="module")
def flat_digits(digits: Dataset) -> Dataset:
    return Dataset(
        x_train=digits.x_train.reshape(-1, 64),
        y_train=digits.y_train,
        x_val=digits.x_val.reshape(-1, 64),
        y_val=digits.y_val,
        source="digits, flattened",
    )


def _train(model, data: Dataset, epochs: int):
    keras.utils.set_random_seed(0)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(data.x_train, data.y_train, epochs=epochs, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="module")
def cnn(digits: Dataset):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            # Named: Keras numbers auto-names per session, so they depend on test order.
            keras.layers.Conv2D(8, 3, activation="relu", name="conv2d"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(64, activation="relu", name="dense"),
            keras.layers.Dense(10, activation="softmax", name="dense_1"),
        ]
    )
    return _train(model, digits, 8)


@pytest.fixture(scope="module")
def residual(digits: Dataset):
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inp)
    y = keras.layers.Conv2D(16, 3, padding="same")(x)
    x = keras.layers.Activation("relu")(keras.layers.Add()([x, y]))
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(32, activation="relu")(x)
    out = keras.layers.Dense(10)(x)  # logits out
    model = keras.Model(inp, out)
    keras.utils.set_random_seed(0)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(digits.x_train, digits.y_train, epochs=4, verbose=0)
    return model


def _ctx(data: Dataset, scale: float = 1.0) -> PassContext:
    return PassContext(data=data, seed=0, epochs_scale=scale)


def _acc(model, data: Dataset) -> float:
    return float(np.mean(np.argmax(model.predict(data.x_val, verbose=0), -1) == data.y_val))


def _int8(model, data: Dataset) -> bytes:
    return convert(model, ConvertOptions(quantization=Quantization.INT8), data.calibration(100))


def _kernels(model) -> dict[str, np.ndarray]:
    return {layer.name: layer.kernel.numpy() for layer in model.layers if hasattr(layer, "kernel")}


def test_registry_lists_the_four_passes() -> None:
    assert pass_ids() == ["cluster", "distill", "lowrank", "prune", "prune-channels", "qat"]
    assert get_pass("prune") is PrunePass
    with pytest.raises(
        RecipeError, match="valid: cluster, distill, lowrank, prune, prune-channels, qat"
    ):
        get_pass("quantise")


def test_polynomial_schedule_is_tfmot_polynomial_decay() -> None:
    kw = {"initial": 0.5, "final": 0.9, "begin": 0, "end": 100, "power": 3.0}
    assert polynomial_sparsity(0, **kw) == pytest.approx(0.5)
    assert polynomial_sparsity(50, **kw) == pytest.approx(0.9 - 0.4 * 0.5**3)
    assert polynomial_sparsity(100, **kw) == pytest.approx(0.9)
    assert polynomial_sparsity(500, **kw) == pytest.approx(0.9)


def test_prune_reaches_and_keeps_sparsity_through_fine_tuning(cnn, digits) -> None:
    before = _kernels(cnn)
    params = PruneParams(initial_sparsity=0.5, final_sparsity=0.8, scope="layer", epochs=2)
    result = PrunePass(params).run(cnn, _ctx(digits))
    model = result.model
    # The input model is untouched; the result is plain layers, no wrappers.
    for name, k in _kernels(cnn).items():
        np.testing.assert_array_equal(k, before[name])
    assert [type(layer).__name__ for layer in model.layers] == [
        "Conv2D",
        "Flatten",
        "Dense",
        "Dense",
    ]
    for name, k in _kernels(model).items():
        assert np.mean(k == 0) == pytest.approx(0.8, abs=0.01), name
        assert result.details["sparsity_per_layer"][name] == pytest.approx(
            np.mean(k == 0), abs=1e-4
        )
    # The masks held for every fine-tuning step (a tenth of the rows is held out to pick the
    # best epoch); the schedule ended two fifths in, and the best epoch came after that.
    rows = len(digits.x_train) - len(digits.x_train) // 10
    assert result.details["steps"] == 2 * int(np.ceil(rows / 32))
    assert result.details["end_step"] == (2 * result.details["steps"]) // 5 - 1
    assert result.details["fine_tune"]["best_epoch"] == 2
    # Accuracy measured on the real int8 artifact; pruned kernels gzip smaller.
    pruned = _int8(model, digits)
    plain = _int8(cnn, digits)
    acc = float(np.mean(TFLiteModel(pruned).predict(digits.x_val).argmax(-1) == digits.y_val))
    assert acc > 0.8
    assert len(gzip.compress(pruned)) < 0.75 * len(gzip.compress(plain))


def test_prune_constant_global_with_exclusion(cnn, digits) -> None:
    params = PruneParams(
        schedule="constant", final_sparsity=0.6, scope="global", exclude=("Conv2D",), epochs=0
    )
    result = PrunePass(params).run(cnn, _ctx(digits))
    kernels = _kernels(result.model)
    assert np.mean(kernels["conv2d"] == 0) == 0.0  # excluded by class name
    pruned = np.concatenate([kernels[n].ravel() for n in kernels if n != "conv2d"])
    assert np.mean(pruned == 0) == pytest.approx(0.6, abs=0.002)
    # One global threshold: the layers end at different sparsities.
    per_layer = [result.details["sparsity_per_layer"][n] for n in kernels if n != "conv2d"]
    assert max(per_layer) - min(per_layer) > 0.01
    with pytest.raises(RecipeError, match="names no layer"):
        PrunePass(PruneParams(exclude=("dens",), epochs=0)).run(cnn, _ctx(digits))


def test_prune_2_4_pattern(flat_digits) -> None:
    keras.utils.set_random_seed(0)
    mlp = _train(
        keras.Sequential(
            [
                keras.Input((64,)),
                keras.layers.Dense(32, activation="relu"),
                keras.layers.Dense(10, activation="softmax"),
            ]
        ),
        flat_digits,
        2,
    )
    result = PrunePass(PruneParams(structured_2_4=True, epochs=1)).run(mlp, _ctx(flat_digits))
    for name, k in _kernels(result.model).items():
        assert holds_2_4(k), name
        assert np.mean(k == 0) == pytest.approx(0.5), name
    assert not holds_2_4(mlp.layers[0].kernel.numpy())


def test_prune_functional_residual(residual, digits) -> None:
    result = PrunePass(PruneParams(final_sparsity=0.7, epochs=1)).run(residual, _ctx(digits))
    model = result.model
    assert isinstance(model, keras.Model) and not isinstance(model, keras.Sequential)
    assert any(type(layer).__name__ == "Add" for layer in model.layers)
    # The default scope is global: 70% of all pruned weights, one threshold across layers.
    kernels = list(_kernels(model).values())
    zeros = sum(int(np.sum(k == 0)) for k in kernels) / sum(k.size for k in kernels)
    assert zeros == pytest.approx(0.7, abs=0.005)
    assert result.details["pattern"] == "unstructured (global)"
    assert _acc(model, digits) > 0.6  # one-shot 70% gives about 0.36 here: fine-tuning recovers


def _low_rank(shape: tuple[int, ...], rank: int, rng: np.random.Generator) -> np.ndarray:
    m = int(np.prod(shape[:-1]))
    mat = rng.standard_normal((m, rank)) @ rng.standard_normal((rank, shape[-1])) / np.sqrt(m)
    return mat.reshape(shape).astype(np.float32)


def test_lowrank_is_exact_on_low_rank_kernels_in_a_residual_model(digits) -> None:
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(inp)
    y = keras.layers.Conv2D(32, 3, padding="same", name="conv_b")(x)
    x = keras.layers.Add(name="join")([x, y])
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(96, activation="relu", name="fc")(x)
    out = keras.layers.Dense(10, activation="softmax")(x)
    model = keras.Model(inp, out)
    rng = np.random.default_rng(0)
    model.get_layer("conv_b").kernel.assign(_low_rank((3, 3, 32, 32), 4, rng))
    model.get_layer("fc").kernel.assign(_low_rank((2048, 96), 6, rng))
    result = LowRankPass(LowRankParams(energy=0.9999, epochs=0)).run(model, _ctx(digits))
    layers = result.details["layers"]
    assert layers["conv_b"]["rank"] == 4 and layers["fc"]["rank"] == 6
    assert count_params(result.model) < 0.2 * count_params(model)
    assert result.details["params_after"] == count_params(result.model)
    names = [layer.name for layer in result.model.layers]
    assert "conv_b_lowrank" in names and "fc_lowrank" in names and "join" in names
    x_val = digits.x_val[:200]
    np.testing.assert_allclose(
        result.model.predict(x_val, verbose=0), model.predict(x_val, verbose=0), atol=1e-4
    )


def test_lowrank_param_fraction_then_fine_tune(flat_digits) -> None:
    mlp = _train(
        keras.Sequential(
            [
                keras.Input((64,)),
                keras.layers.Dense(256, activation="relu", name="h1"),
                keras.layers.Dense(128, activation="relu", name="h2"),
                keras.layers.Dense(10, activation="softmax", name="out"),
            ]
        ),
        flat_digits,
        6,
    )
    params = LowRankParams(param_fraction=0.2, min_params=1000, epochs=2)
    result = LowRankPass(params).run(mlp, _ctx(flat_digits))
    assert isinstance(result.model, keras.Sequential)
    assert count_params(result.model) < 0.5 * count_params(mlp)
    assert set(result.details["layers"]) == {"h1", "h2"}  # the output layer is kept
    assert _acc(result.model, flat_digits) > _acc(mlp, flat_digits) - 0.05


def test_distill_width_student_is_smaller_and_keeps_softmax(cnn, digits) -> None:
    result = DistillPass(DistillParams(width=0.5, epochs=6, learning_rate=5e-3)).run(
        cnn, _ctx(digits)
    )
    student = result.model
    assert count_params(student) < 0.6 * count_params(cnn)
    assert student.get_layer("conv2d").filters == 4 and student.layers[-1].units == 10
    probs = student.predict(digits.x_val[:50], verbose=0)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)  # probabilities, like the teacher
    acc = _acc(student, digits)
    assert result.details["student_val_accuracy"] == pytest.approx(acc, abs=1e-4)
    assert acc > 0.6


def test_distill_user_student_from_file(residual, digits, tmp_path) -> None:
    student = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    path = tmp_path / "student.keras"
    student.save(path)
    result = DistillPass(DistillParams(student=str(path), epochs=2, mixup=0.4)).run(
        residual, _ctx(digits)
    )
    # The teacher outputs logits, so the returned student does too.
    assert result.model.layers[-1].activation.__name__ == "linear"
    assert count_params(result.model) == count_params(student)
    assert 0.0 <= result.details["student_val_accuracy"] <= 1.0


def test_kmeans_1d_linear_init() -> None:
    values = np.concatenate([np.full(50, -1.0), np.full(30, 0.5), np.full(20, 2.0)])
    centroids, index = kmeans_1d(values, 3)
    np.testing.assert_allclose(centroids, [-1.0, 0.5, 2.0])
    np.testing.assert_allclose(centroids[index], values)


def test_cluster_after_prune_keeps_k_values_and_zeros(cnn, digits) -> None:
    ctx = _ctx(digits)
    steps = [PrunePass(PruneParams(final_sparsity=0.7, epochs=1)), ClusterPass(ClusterParams(k=8))]
    model, records = PassManager(steps).run(cnn, ctx)
    assert [r.id for r in records] == ["prune", "cluster"]
    for name, k in _kernels(model).items():
        assert np.unique(k).size <= 8, name
        # The zeros stayed their own cluster.
        assert np.mean(k == 0) >= records[0].details["sparsity_per_layer"][name] - 1e-4, name
    assert max(records[1].details["unique_values_per_layer"].values()) <= 8
    assert _acc(model, digits) > 0.7


def test_cluster_without_fine_tuning_needs_no_data(cnn) -> None:
    p = ClusterPass(ClusterParams(k=4, epochs=0, preserve_sparsity=False))
    assert p.needs_data is False
    synthetic = Dataset(
        x_train=np.zeros((4, 8, 8, 1), np.float32),
        y_train=None,
        x_val=np.zeros((4, 8, 8, 1), np.float32),
        y_val=None,
        source="none",
        synthetic=True,
    )
    model, _ = PassManager([p]).run(cnn, _ctx(synthetic))
    assert all(np.unique(k).size <= 4 for k in _kernels(model).values())


class Doubling(keras.layers.Layer):
    def call(self, x):
        return x * 2.0


class Subclassed(keras.Model):
    def __init__(self) -> None:
        super().__init__()
        self.fc = keras.layers.Dense(10)

    def call(self, x):
        return self.fc(keras.ops.reshape(x, (-1, 64)))


@pytest.mark.parametrize("pass_id", ["prune", "lowrank", "distill", "cluster"])
def test_unsupported_models_name_the_layer(pass_id, digits) -> None:
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Flatten()(inp)
    x = Doubling(name="my_doubling")(x)
    custom = keras.Model(inp, keras.layers.Dense(10)(x))
    cls = get_pass(pass_id)
    with pytest.raises(UnsupportedModelError, match="'my_doubling' is a custom layer"):
        cls(cls.Params(epochs=1)).run(custom, _ctx(digits))
    sub = Subclassed()
    sub(digits.x_val[:2])
    with pytest.raises(UnsupportedModelError, match="subclassed model \\(Subclassed\\)"):
        cls(cls.Params(epochs=1)).run(sub, _ctx(digits))


@pytest.mark.parametrize("pass_id", pass_ids())
def test_manager_never_modifies_the_input_model(pass_id, residual, digits) -> None:
    before = [w.copy() for w in residual.get_weights()]
    config = residual.get_config()
    cls = get_pass(pass_id)
    model, records = PassManager([cls(cls.Params(epochs=1))]).run(residual, _ctx(digits, 0.5))
    assert model is not residual and records[0].id == pass_id
    assert residual.get_config() == config
    for old, new in zip(before, residual.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)


def test_manager_checks_requirements_before_the_pass_runs(cnn, digits) -> None:
    unlabeled = Dataset(
        x_train=digits.x_train, y_train=None, x_val=digits.x_val, y_val=None, source="x only"
    )
    with pytest.raises(InputError, match="pass 'distill' needs labeled training data"):
        PassManager([DistillPass()]).run(cnn, _ctx(unlabeled))
    sigmoid = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="sigmoid", name="probs"),
        ]
    )
    with pytest.raises(
        UnsupportedModelError, match=r"^prune: output layer 'probs' has activation 'sigmoid'"
    ):
        PassManager([PrunePass()]).run(sigmoid, _ctx(digits))
    # Without fine-tuning, prune needs neither labels nor class scores.
    model, _ = PassManager([PrunePass(PruneParams(epochs=0))]).run(sigmoid, _ctx(unlabeled))
    assert np.mean(model.get_layer("probs").kernel.numpy() == 0) == pytest.approx(0.8, abs=0.01)
