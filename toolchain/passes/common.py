"""What every compression pass shares: model checks, copying, output semantics, fine-tuning.

Passes never modify the model they are given (the search runs many passes on
one base model): the ``PassManager`` hands each pass a ``copy_model`` copy.
Models a pass cannot rebuild faithfully (subclassed models, custom layers) are
refused by ``check_supported``, which the manager calls with each pass's
``Requirements`` before any work is done.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from edgec.errors import InputError, RecipeError, UnsupportedModelError
from edgec.pipeline import Pass


class KerasPass(Pass):
    """A compression pass whose recorded parameters are plain JSON values (no enums, tuples)."""

    def param_dict(self) -> dict[str, Any]:
        return plain_params(self.params)


def plain_params(params: Any) -> dict[str, Any]:
    """A Params dataclass as JSON values: the form recipes, logs and manifests show."""
    import dataclasses

    return {k: _plain(v) for k, v in dataclasses.asdict(params).items()}


def _plain(value: Any) -> Any:
    from enum import Enum

    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


# Layers whose ``kernel`` the weight passes (prune, cluster) rewrite.
KERNEL_LAYERS = ("Dense", "Conv1D", "Conv2D", "DepthwiseConv2D")


def check_supported(model: Any, pass_id: str, *, allow_nested: bool = True) -> None:
    """Refuse subclassed models and custom layers, naming them; a pass must never guess."""
    import keras

    if not isinstance(model, keras.Model):
        raise UnsupportedModelError(
            f"{pass_id}: expected a Keras model, got {type(model).__name__}"
        )
    if not _is_graph_model(model):
        raise UnsupportedModelError(
            f"{pass_id}: model {model.name!r} is a subclassed model ({type(model).__name__}); "
            "passes can only rebuild Sequential and functional models"
        )
    for layer in iter_layers(model, include_models=True):
        if isinstance(layer, keras.Model):
            if not _is_graph_model(layer):
                raise UnsupportedModelError(
                    f"{pass_id}: layer {layer.name!r} is a subclassed model "
                    f"({type(layer).__name__}); passes can only rebuild Sequential and "
                    "functional models"
                )
            if not allow_nested:
                raise UnsupportedModelError(
                    f"{pass_id}: layer {layer.name!r} is a nested model; this pass needs a "
                    "flat Sequential or functional model (flatten the nested model first)"
                )
            continue
        module = type(layer).__module__
        if not (module.startswith("keras.") or module == "keras"):
            raise UnsupportedModelError(
                f"{pass_id}: layer {layer.name!r} is a custom layer "
                f"({module}.{type(layer).__name__}); passes handle built-in Keras layers only"
            )


def _is_graph_model(model: Any) -> bool:
    import keras
    from keras.src.models.functional import Functional

    # Exact types: a subclass of Model (or of Functional) with its own call() is subclassed.
    return type(model) in (keras.Sequential, Functional)


def iter_layers(model: Any, *, include_models: bool = False) -> Iterator[Any]:
    """Every layer of ``model``, descending into nested models, in model order."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.Model):
            if include_models:
                yield layer
            yield from iter_layers(layer, include_models=include_models)
        else:
            yield layer


def copy_model(model: Any) -> Any:
    """An independent copy of a Sequential or functional model, weights included."""
    import keras

    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def kernel_layers(model: Any, exclude: Sequence[str] = ()) -> list[Any]:
    """Layers with a kernel the weight passes handle, minus those excluded by name or class."""
    chosen = []
    for layer in iter_layers(model):
        kind = type(layer).__name__
        if kind not in KERNEL_LAYERS or not getattr(layer, "built", False):
            continue
        if layer.name in exclude or kind in exclude:
            continue
        chosen.append(layer)
    return chosen


def check_exclude(pass_id: str, model: Any, exclude: Sequence[str]) -> None:
    """An ``exclude`` entry that names no layer and no layer class is a typo: say so."""
    names = {layer.name for layer in iter_layers(model, include_models=True)}
    kinds = {type(layer).__name__ for layer in iter_layers(model, include_models=True)}
    for item in exclude:
        if item not in names and item not in kinds and item not in KERNEL_LAYERS:
            raise RecipeError(
                f"{pass_id}: exclude entry {item!r} names no layer or layer class of the model; "
                f"layers: {', '.join(sorted(names))}"
            )


def output_layer(model: Any) -> Any:
    if len(model.outputs) != 1:
        raise UnsupportedModelError(
            f"model {model.name!r} has {len(model.outputs)} outputs; passes that train need one"
        )
    return model.outputs[0]._keras_history[0]


def output_kind(model: Any) -> str:
    """``"softmax"`` when the model outputs class probabilities, ``"logits"`` when raw scores."""
    layer = output_layer(model)
    kind = type(layer).__name__
    if kind == "Softmax":
        return "softmax"
    act = getattr(layer, "activation", None)
    name = getattr(act, "__name__", None) if act is not None else "linear"
    if name == "softmax":
        return "softmax"
    if name == "linear":
        return "logits"
    raise UnsupportedModelError(
        f"output layer {layer.name!r} has activation {name!r}; training passes need class "
        "scores (linear logits) or softmax probabilities"
    )


def strip_softmax(model: Any) -> Any:
    """A copy of ``model`` that outputs logits (softmax removed); a plain copy if it has none."""
    import keras

    if output_kind(model) == "logits":
        return copy_model(model)
    out = output_layer(model)
    if type(out).__name__ in ("Softmax", "Activation"):
        src = copy_model(model)
        cut = output_layer(src)
        return keras.Model(src.inputs, cut.input, name=f"{model.name}_logits")
    return _clone_output_activation(model, "linear")


def restore_softmax(model: Any, like: Any) -> Any:
    """``model`` (logits out) given the output semantics of ``like`` (softmax or logits)."""
    import keras

    if output_kind(like) == "logits":
        return model
    layer = output_layer(model)
    if getattr(layer, "activation", None) is not None and output_kind(model) == "logits":
        return _clone_output_activation(model, "softmax")
    probs = keras.layers.Softmax(name=f"{layer.name}_softmax")(model.outputs[0])
    return keras.Model(model.inputs, probs, name=model.name)


def _clone_output_activation(model: Any, activation: str) -> Any:
    import keras

    target = output_layer(model)

    def clone(layer: Any) -> Any:
        config = layer.get_config()
        if layer is target:
            config["activation"] = activation
        return layer.__class__.from_config(config)

    new = keras.models.clone_model(model, clone_function=clone)
    new.set_weights(model.get_weights())
    return new


def scaled_epochs(epochs: int, ctx: Any) -> int:
    return max(0, round(epochs * float(getattr(ctx, "epochs_scale", 1.0))))


def fine_tune(
    model: Any,
    ctx: Any,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    callbacks: Sequence[Any] = (),
    description: str = "fine-tuning",
) -> dict[str, float]:
    """Train ``model`` in place on ``ctx.data`` with sparse cross-entropy; return the last logs."""
    import keras

    from edgec.progress import keras_progress

    data = ctx.data
    if data is None or data.y_train is None:
        raise InputError(f"{description} needs labeled training data; give --data")
    check_labels(model, data.y_train)
    keras.utils.set_random_seed(int(ctx.seed))
    from_logits = output_kind(model) == "logits"
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits),
        metrics=["accuracy"],
    )
    history = model.fit(
        data.x_train,
        data.y_train,
        batch_size=batch_size,
        epochs=epochs,
        shuffle=True,
        verbose=0,
        callbacks=[*callbacks, keras_progress(description, epochs)],
    )
    return {k: float(v[-1]) for k, v in history.history.items() if v}


def check_labels(model: Any, y: np.ndarray) -> None:
    classes = int(model.outputs[0].shape[-1])
    top = int(np.max(y)) if len(y) else 0
    if top >= classes:
        raise InputError(
            f"the data has class label {top} but model {model.name!r} outputs {classes} classes"
        )


def steps_per_epoch(n: int, batch_size: int) -> int:
    return max(1, -(-n // batch_size))


def accuracy(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of a Keras model (float, on the host)."""
    pred = model.predict(x, verbose=0, batch_size=256)
    return float(np.mean(np.argmax(pred, axis=-1) == y))


def validate_params(params: Any, pass_id: str) -> None:
    """Check and coerce a Params dataclass's fields against their type hints, in place.

    Recipes and ``--pass`` overrides arrive as TOML values: enums as strings, tuples
    as lists, floats sometimes as ints. Anything else of the wrong type is a
    ``RecipeError`` naming the pass, the key, the value and what is valid.
    """
    import dataclasses
    import typing

    hints = typing.get_type_hints(type(params))
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        fixed = _coerce(pass_id, f.name, value, hints[f.name])
        if fixed is not value:
            object.__setattr__(params, f.name, fixed)


def _coerce(pass_id: str, key: str, value: Any, hint: Any) -> Any:
    import types
    import typing
    from enum import StrEnum

    where = f"{pass_id}: {key} = {value!r}"
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(pass_id, key, value, inner[0])
    if isinstance(hint, type) and issubclass(hint, StrEnum):
        try:
            return hint(value)
        except ValueError:
            valid = ", ".join(repr(m.value) for m in hint)
            raise RecipeError(f"{where} is not valid; valid: {valid}") from None
    if hint is bool:
        if not isinstance(value, bool):
            raise RecipeError(f"{where} must be true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(f"{where} must be a whole number")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RecipeError(f"{where} must be a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise RecipeError(f"{where} must be a string")
        return value
    if typing.get_origin(hint) is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple):
            raise RecipeError(f"{where} must be a list")
        return tuple(_coerce(pass_id, key, v, args[0]) for v in value)
    return value
