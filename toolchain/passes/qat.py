"""The ``qat`` pass: quantization-aware fine-tuning that sees the int8 the converter will apply.

Activations. The model is rebuilt with a ``FakeQuant`` layer on the model input
and on every activation tensor that int8 kernels produce (a layer's output,
unless it only feeds a layer the converter fuses into it: BatchNormalization,
an activation). Each range starts at the min/max of real activations and is
then learned from the task loss (LSQ, Esser et al. 2020: rounding error inside
the range weighed against clipping outside, on a log scale so it can shrink by
orders of magnitude), so a tensor whose range a few huge values stretch learns
to clip them when the values that matter need the resolution. At inference the
layer calls ``keras.quantizers.fake_quant_with_min_max_vars`` (8 bits; on the
TensorFlow backend that is ``tf.quantization.fake_quant_with_min_max_vars``)
with the learned range. These layers stay in the exported model: the TFLite
converter recognizes ``FakeQuantWithMinMaxVars`` and quantizes in its
quantization-aware mode, so every activation takes the trained range, not a
calibration estimate.

Weights. While fine-tuning, every Dense, Conv1D, Conv2D and DepthwiseConv2D
layer computes with its kernel fake-quantized as the converter will store it:
per output channel, symmetric, narrow range ([-127, 127] steps of max|w| / 127,
the TFLite int8 spec for weights), with a straight-through gradient (the
range is held constant in the backward pass). That is a training-time subclass
of the layer (``_weight_quant_class``), replaced by the ordinary Keras layer
with the trained float kernel before the model is handed on; the converter then
quantizes that kernel to exactly the grid the fine-tuning saw. Folding a
following BatchNorm scales each output channel, which leaves a per-channel
symmetric grid unchanged, so convolutions with BatchNorm see their true grid
too. (A conversion with per-tensor dense scales, which TFLM boards may try,
gets a coarser grid than the one trained on; the micro fit check measures it.)

The network is fine-tuned (self-distilled from the original, as every
fine-tuning pass) and the full-int8 artifact stays integer-only for
microcontrollers.

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
    # How fast the activation ranges learn: the step of their log scale, per optimizer
    # step at the full learning rate (the ranges' gain is this over learning_rate).
    range_learning_rate: float = 0.1
    # Fine-tune with the kernels fake-quantized too (per channel, as the converter stores
    # them); false: activations only.
    weights: bool = True
    epochs: int = 4
    batch_size: int = 32
    learning_rate: float = 1e-3

    def __post_init__(self) -> None:
        validate_params(self, "qat")
        if self.epochs < 1 or self.batch_size < 1 or self.learning_rate <= 0:
            raise RecipeError("qat: need epochs >= 1, batch_size >= 1 and learning_rate > 0")
        if self.range_learning_rate <= 0:
            raise RecipeError(
                f"qat: range_learning_rate = {self.range_learning_rate}; valid: a value > 0"
            )


def fake_quant_layer() -> type:
    """The ``FakeQuant`` layer class (built on first use: it imports Keras and TensorFlow)."""
    global _FAKE_QUANT
    if _FAKE_QUANT is not None:
        return _FAKE_QUANT
    import keras
    import tensorflow as tf

    @keras.saving.register_keras_serializable(package="edgec")
    class FakeQuant(keras.layers.Layer):
        """8-bit fake quantization over a learned [min, max] range (always containing 0).

        The range starts at the first training batch's min and max; each end then
        learns a log-scale factor, ``min0 * exp(gain * t_min)``, from the task loss
        (the LSQ gradient: rounding error inside the range against clipping outside).
        ``gain`` makes a step of the optimizer move the log range ``gain`` times as fast
        as the weights, so a range can shrink by orders of magnitude in a few epochs.
        """

        def __init__(self, gain: float = 60.0, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.gain = float(gain)

        def build(self, input_shape: Any) -> None:
            zeros = keras.initializers.Zeros()

            def weight(name: str, trainable: bool = False) -> Any:
                return self.add_weight(shape=(), initializer=zeros, trainable=trainable, name=name)

            self.min0, self.max0, self.seen = weight("min0"), weight("max0"), weight("seen")
            self.log_min, self.log_max = weight("log_min", True), weight("log_max", True)

        def range(self) -> tuple[Any, Any]:
            lo = self.min0 * tf.exp(self.gain * self.log_min)
            # A range of width 0 (never trained) would divide by zero: keep a tiny one.
            return lo, tf.maximum(self.max0 * tf.exp(self.gain * self.log_max), lo + 1e-6)

        def call(self, x: Any, training: bool = False) -> Any:
            if not training:
                lo, hi = self.range()
                return keras.quantizers.fake_quant_with_min_max_vars(
                    x, lo, hi, num_bits=8, narrow_range=False
                )
            first = self.seen <= 0
            self.min0.assign(tf.where(first, tf.minimum(tf.reduce_min(x), 0.0), self.min0))
            self.max0.assign(tf.where(first, tf.maximum(tf.reduce_max(x), 0.0), self.max0))
            self.seen.assign(1.0)
            lo, hi = self.range()
            # The same grid as FakeQuantWithMinMaxVars (zero point nudged onto an integer),
            # written out so the gradient reaches the range: rounding passes straight through.
            scale = (hi - lo) / 255.0
            zero = tf.stop_gradient(tf.clip_by_value(tf.round(-lo / scale), 0.0, 255.0))
            v = x / scale + zero
            v = v + tf.stop_gradient(tf.round(v) - v)
            return (tf.clip_by_value(v, 0.0, 255.0) - zero) * scale

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "gain": self.gain}

    _FAKE_QUANT = FakeQuant
    return FakeQuant


_FAKE_QUANT: type | None = None

# The attribute each kernel layer keeps its kernel variable in (Dense and BaseConv read it
# through a ``kernel`` property; depthwise convolutions store ``kernel`` itself).
KERNEL_ATTR = {"Dense": "_kernel", "Conv1D": "_kernel", "Conv2D": "_kernel"}
DEPTHWISE = frozenset({"DepthwiseConv2D"})
_WEIGHT_QUANT: dict[type, type] = {}


def fake_quant_kernel(kernel: Any, *, depthwise: bool = False) -> Any:
    """``kernel`` on the int8 grid the converter stores it on, with a straight-through gradient.

    Per output channel (the last axis; a depthwise kernel's channels are its last two axes
    flattened, as TFLite lays them out), symmetric, narrow range: steps of max|w| / 127.
    """
    import keras
    from keras import ops

    shape = tuple(kernel.shape)
    flat = ops.reshape(kernel, (*shape[:-2], shape[-2] * shape[-1])) if depthwise else kernel
    axes = tuple(range(len(flat.shape) - 1))
    # A constant range in the backward pass: the gradient goes straight to the kernel.
    bound = ops.stop_gradient(ops.maximum(ops.max(ops.abs(flat), axis=axes), 1e-8))
    q = keras.quantizers.fake_quant_with_min_max_vars(
        flat, -bound, bound, num_bits=8, narrow_range=True, axis=-1
    )
    return ops.reshape(q, shape) if depthwise else q


def _weight_quant_class(base: type) -> type:
    """A training-time subclass of ``base`` that computes with its kernel fake-quantized.

    Never saved: ``strip_weight_quant`` swaps each back for ``base`` before the model
    leaves the pass. It adds no weights, so the two hold the same weight list.
    """
    if base in _WEIGHT_QUANT:
        return _WEIGHT_QUANT[base]
    name = base.__name__
    attr = "kernel" if name in DEPTHWISE else KERNEL_ATTR[name]

    class WeightFakeQuant(base):  # type: ignore[misc, valid-type]
        # ``inputs`` by name: Keras maps the first call argument's shape to build().
        def call(self, inputs: Any) -> Any:
            # Swap the kernel for its fake-quantized value for this call only (bypassing
            # Keras's attribute tracking, which must keep tracking the variable).
            variable = self.__dict__[attr]
            object.__setattr__(self, attr, fake_quant_kernel(variable, depthwise=name in DEPTHWISE))
            try:
                return super().call(inputs)
            finally:
                object.__setattr__(self, attr, variable)

    WeightFakeQuant.__name__ = WeightFakeQuant.__qualname__ = f"WeightFakeQuant{name}"
    _WEIGHT_QUANT[base] = WeightFakeQuant
    return WeightFakeQuant


def _base_class(layer: Any) -> Any:
    """The ordinary Keras class of ``layer`` (itself unless it is a weight fake-quant one)."""
    kind = type(layer)
    return next((b for b, q in _WEIGHT_QUANT.items() if q is kind), kind)


def strip_weight_quant(model: Any) -> Any:
    """``model`` with every weight fake-quant layer back to its ordinary Keras class."""
    import keras

    if not any(type(layer) in _WEIGHT_QUANT.values() for layer in model.layers):
        return model

    def clone(layer: Any) -> Any:
        return _base_class(layer).from_config(layer.get_config())

    plain = keras.models.clone_model(model, clone_function=clone)
    plain.set_weights(model.get_weights())
    return plain


def _needs_fake_quant(layer: Any) -> bool:
    kind = type(layer).__name__
    if kind in PASS_THROUGH:
        return False
    consumers = [node.operation for node in getattr(layer, "_outbound_nodes", [])]
    return not consumers or not all(type(c).__name__ in FUSED for c in consumers)


def insert_fake_quant(model: Any, gain: float, *, weights: bool = False) -> tuple[Any, int]:
    """A copy of ``model`` with fake-quant nodes on its input and activations; and their count.

    ``weights``: the kernel layers are their training-time weight fake-quant subclasses
    (``strip_weight_quant`` undoes that after training).
    """
    import keras

    fq = fake_quant_layer()
    count = 0
    wrapped: dict[int, Any] = {}

    def quant(t: Any, name: str) -> Any:
        nonlocal count
        count += 1
        return fq(gain=gain, name=f"{name}_fq")(t)

    def clone(layer: Any) -> Any:
        kind = type(layer)
        if weights and kind.__name__ in (*KERNEL_ATTR, *DEPTHWISE) and layer.built:
            kind = _weight_quant_class(kind)
        new = kind.from_config(layer.get_config())
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
        new, count = insert_fake_quant(
            model, p.range_learning_rate / p.learning_rate, weights=p.weights
        )
        # Start every range from real activations, so that the untrained epoch the
        # fine-tuning may keep (best_epoch 0) is post-training int8 with min/max ranges.
        new(ctx.data.x_train[: 8 * p.batch_size], training=True)
        quantized = [layer.name for layer in new.layers if type(layer) in _WEIGHT_QUANT.values()]
        details: dict[str, Any] = {
            "fake_quant_nodes": count,
            "bits": 8,
            "weight_fake_quant": {
                "layers": quantized,
                "scheme": "per output channel, symmetric, narrow range [-127, 127]",
            },
        }
        details["fine_tune"] = self.tune(new, ctx, teacher)
        return PassResult(model=strip_weight_quant(new), changed=True, details=details)
