"""The ``qat`` pass: quantization-aware fine-tuning with fake-quant nodes the converter honours.

The model is rebuilt with a ``FakeQuant`` layer on the model input and on every
activation tensor that int8 kernels produce (a layer's output, unless it only
feeds a layer the converter fuses into it: BatchNormalization, an activation).
Each ``FakeQuant`` calls ``tf.quantization.fake_quant_with_min_max_vars``
(8 bits) with a range it tracks while training (the first batch's min/max,
then an exponential moving average, always containing 0), and passes gradients
straight through inside the range. The network is then fine-tuned
(self-distilled from the original, as every fine-tuning pass) so it learns to
work with the int8 grid.

The TFLite converter recognizes ``FakeQuantWithMinMaxVars`` and quantizes in
its quantization-aware mode: every activation takes the trained range, not a
calibration estimate, and the full-int8 artifact stays integer-only for
microcontrollers. Weights are quantized by the converter (per channel) as in
post-training int8; their error is small next to that of wide activations.

``qat`` must come last in a recipe: the fake-quant layers are edgec's own, and
other passes refuse layers they do not know.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from edgec.errors import RecipeError
from edgec.passes.common import KerasPass, validate_params
from edgec.pipeline import PassContext, PassResult, Requirements

# Layers the converter folds into their producer, and layers that only move values:
# a fake-quant on their input would split a fused kernel or repeat its neighbour's.
FUSED = frozenset({"BatchNormalization", "Activation", "ReLU"})
PASS_THROUGH = frozenset(
    {"InputLayer", "Flatten", "Reshape", "Dropout", "MaxPooling1D", "MaxPooling2D", "Identity"}
)


@dataclass(frozen=True, kw_only=True)
class QatParams:
    momentum: float = 0.99  # of the moving average of each activation range
    epochs: int = 4
    batch_size: int = 32
    learning_rate: float = 1e-3

    def __post_init__(self) -> None:
        validate_params(self, "qat")
        if not 0.0 <= self.momentum < 1.0:
            raise RecipeError(f"qat: momentum = {self.momentum}; valid: 0 <= value < 1")
        if self.epochs < 1 or self.batch_size < 1 or self.learning_rate <= 0:
            raise RecipeError("qat: need epochs >= 1, batch_size >= 1 and learning_rate > 0")


def fake_quant_layer() -> type:
    """The ``FakeQuant`` layer class (built on first use: it imports Keras and TensorFlow)."""
    global _FAKE_QUANT
    if _FAKE_QUANT is not None:
        return _FAKE_QUANT
    import keras
    import tensorflow as tf

    @keras.saving.register_keras_serializable(package="edgec")
    class FakeQuant(keras.layers.Layer):
        """8-bit fake quantization over a tracked [min, max] range (always containing 0)."""

        def __init__(self, momentum: float = 0.99, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.momentum = float(momentum)

        def build(self, input_shape: Any) -> None:
            zeros = keras.initializers.Zeros()
            self.range_min = self.add_weight(
                shape=(), initializer=zeros, trainable=False, name="range_min"
            )
            self.range_max = self.add_weight(
                shape=(), initializer=zeros, trainable=False, name="range_max"
            )
            self.seen = self.add_weight(shape=(), initializer=zeros, trainable=False, name="seen")

        def call(self, x: Any, training: bool = False) -> Any:
            if training:
                lo = tf.minimum(tf.reduce_min(x), 0.0)
                hi = tf.maximum(tf.reduce_max(x), 0.0)
                m = tf.where(self.seen > 0, self.momentum, 0.0)
                self.range_min.assign(m * self.range_min + (1.0 - m) * lo)
                self.range_max.assign(m * self.range_max + (1.0 - m) * hi)
                self.seen.assign(1.0)
            # A range of width 0 (never trained) would divide by zero: keep a tiny one.
            hi = tf.maximum(self.range_max, self.range_min + 1e-6)
            return tf.quantization.fake_quant_with_min_max_vars(
                x, self.range_min, hi, num_bits=8, narrow_range=False
            )

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "momentum": self.momentum}

    _FAKE_QUANT = FakeQuant
    return FakeQuant


_FAKE_QUANT: type | None = None


def _needs_fake_quant(layer: Any) -> bool:
    kind = type(layer).__name__
    if kind in PASS_THROUGH:
        return False
    consumers = [node.operation for node in getattr(layer, "_outbound_nodes", [])]
    return not consumers or not all(type(c).__name__ in FUSED for c in consumers)


def insert_fake_quant(model: Any, momentum: float) -> tuple[Any, int]:
    """A copy of ``model`` with fake-quant nodes on its input and activations; and their count."""
    import keras

    fq = fake_quant_layer()
    count = 0
    wrapped: dict[int, Any] = {}

    def quant(t: Any, name: str) -> Any:
        nonlocal count
        count += 1
        return fq(momentum=momentum, name=f"{name}_fq")(t)

    def clone(layer: Any) -> Any:
        new = layer.__class__.from_config(layer.get_config())
        pairs.append((new, layer))
        return new

    pairs: list[tuple[Any, Any]] = []
    decide = {layer.name: _needs_fake_quant(layer) for layer in model.layers}
    if isinstance(model, keras.Sequential):
        x = keras.Input(batch_shape=model.inputs[0].shape, dtype=model.inputs[0].dtype)
        inp = x
        x = quant(x, "input")
        for layer in model.layers:
            x = clone(layer)(x)
            if decide[layer.name]:
                x = quant(x, layer.name)
        new = keras.Model(inp, x, name=model.name)
    else:

        def call_fn(layer: Any, *args: Any, **kwargs: Any) -> Any:
            def wrap(t: Any) -> Any:
                if isinstance(t, keras.KerasTensor) and t._keras_history[0].__class__.__name__ == (
                    "InputLayer"
                ):
                    if id(t) not in wrapped:
                        wrapped[id(t)] = (t, quant(t, "input"))
                    return wrapped[id(t)][1]
                return t

            args, kwargs = keras.tree.map_structure(wrap, (args, kwargs))
            out = layer(*args, **kwargs)
            return quant(out, layer.name) if decide[layer.name] else out

        new = keras.models.clone_model(model, clone_function=clone, call_function=call_fn)
    for layer, old in pairs:
        layer.set_weights(old.get_weights())
    return new, count


class QatPass(KerasPass):
    id: ClassVar[str] = "qat"
    Params: ClassVar[type] = QatParams
    min_epochs: ClassVar[int] = 1  # the activation ranges are only learned by training

    def requirements(self) -> Requirements:
        return Requirements(nested_models=False, labeled_data=True, class_scores=True)

    def apply(self, model: Any, ctx: PassContext) -> PassResult:
        p: QatParams = self.params
        teacher = self.soft_targets(model, ctx)
        new, count = insert_fake_quant(model, p.momentum)
        details: dict[str, Any] = {"fake_quant_nodes": count, "bits": 8}
        details["fine_tune"] = self.tune(new, ctx, teacher)
        return PassResult(model=new, changed=True, details=details)
