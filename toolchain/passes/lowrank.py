"""The ``lowrank`` pass: SVD factorization of Dense and Conv2D kernels, then fine-tuning.

A Dense kernel W (in x out) becomes ``Dense(r, no bias, linear)`` followed by
``Dense(out, bias, activation)`` with kernels U_r sqrt(S_r) and sqrt(S_r) V_r^T.
A Conv2D kernel (kh, kw, cin, cout), reshaped to (kh*kw*cin, cout), is
factorized the same way into a kh x kw conv to r channels (same strides,
padding, dilation) followed by a 1x1 conv; convolution is linear in its kernel,
so the pair computes exactly the rank-r kernel.

The rank keeps ``energy`` of the squared singular values, or, when
``param_fraction`` is given, spends about that fraction of the kernel's
parameters. A layer is factorized only when that saves parameters (and its
kernel has at least ``min_params``). Sequential models are rebuilt as
Sequential; functional ones (residual branches included) with
``keras.models.clone_model`` and a ``call_function`` that calls the pair in
place of the original layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from edgec.errors import RecipeError
from edgec.passes.common import (
    KerasPass,
    fine_tune,
    scaled_epochs,
    validate_params,
)
from edgec.pipeline import PassContext, PassResult, Requirements, count_params

FACTORIZABLE = ("Dense", "Conv2D")


@dataclass(frozen=True, kw_only=True)
class LowRankParams:
    energy: float = 0.9  # kept fraction of sum(S**2)
    param_fraction: float | None = None  # when set, used instead of energy
    min_params: int = 4096  # kernels smaller than this are left alone
    # The classifier layer is small and its rank bounds the class scores: keep it whole.
    skip_output: bool = True
    exclude: tuple[str, ...] = ()  # layer names or layer class names
    epochs: int = 4
    batch_size: int = 32
    learning_rate: float = 1e-3

    def __post_init__(self) -> None:
        validate_params(self, "lowrank")
        if not 0.0 < self.energy <= 1.0:
            raise RecipeError(f"lowrank: energy = {self.energy}; valid: 0 < energy <= 1")
        if self.param_fraction is not None and not 0.0 < self.param_fraction < 1.0:
            raise RecipeError(
                f"lowrank: param_fraction = {self.param_fraction}; valid: 0 < value < 1"
            )
        if self.min_params < 0 or self.epochs < 0 or self.batch_size < 1:
            raise RecipeError("lowrank: need min_params >= 0, epochs >= 0 and batch_size >= 1")
        if self.learning_rate <= 0:
            raise RecipeError(f"lowrank: learning_rate = {self.learning_rate}; must be > 0")


def kernel_matrix(layer: Any) -> np.ndarray:
    """The layer's kernel as (reduction, outputs)."""
    k = np.asarray(layer.kernel.numpy())
    return k.reshape(-1, k.shape[-1])


def choose_rank(s: np.ndarray, m: int, n: int, params: LowRankParams) -> int:
    """The rank for singular values ``s`` of an m x n kernel."""
    if params.param_fraction is not None:
        return max(1, int(params.param_fraction * m * n / (m + n)))
    energy = np.cumsum(s.astype(np.float64) ** 2)
    if energy[-1] <= 0:
        return 1
    return int(np.searchsorted(energy / energy[-1], params.energy - 1e-12) + 1)


@dataclass(frozen=True, kw_only=True)
class _Plan:
    rank: int
    first: np.ndarray  # kernel of the thin first layer
    second: np.ndarray  # kernel of the second layer
    before: int
    after: int


def plan_layer(layer: Any, params: LowRankParams) -> _Plan | None:
    kind = type(layer).__name__
    if kind not in FACTORIZABLE:
        return None
    if len(getattr(layer, "_inbound_nodes", ())) > 1:
        return None  # a shared layer: factorizing each call would untie its weights
    if kind == "Conv2D" and int(layer.groups) != 1:
        return None  # grouped convs are already factorized along channels
    mat = kernel_matrix(layer)
    m, n = mat.shape
    if m * n < params.min_params:
        return None
    u, s, vt = np.linalg.svd(mat.astype(np.float64), full_matrices=False)
    r = min(choose_rank(s, m, n, params), len(s))
    if r * (m + n) >= m * n:
        return None  # no saving at this rank
    root = np.sqrt(s[:r])
    first = (u[:, :r] * root).astype(np.float32)
    second = (root[:, None] * vt[:r]).astype(np.float32)
    if kind == "Conv2D":
        kh, kw, cin, _ = tuple(layer.kernel.shape)
        first = first.reshape(kh, kw, cin, r)
        second = second.reshape(1, 1, r, n)
    bias = n if layer.use_bias else 0
    return _Plan(rank=r, first=first, second=second, before=m * n + bias, after=r * (m + n) + bias)


def _pair(layer: Any, plan: _Plan) -> tuple[Any, Any]:
    """The two new layers that replace ``layer``: thin and linear, then the original's output."""
    import keras

    config = layer.get_config()
    name = config["name"]
    if type(layer).__name__ == "Dense":
        first = keras.layers.Dense(
            plan.rank,
            use_bias=False,
            activation=None,
            name=f"{name}_lowrank",
            dtype=config.get("dtype"),
        )
        second_config = dict(config)
    else:
        first = keras.layers.Conv2D(
            plan.rank,
            config["kernel_size"],
            strides=config["strides"],
            padding=config["padding"],
            data_format=config["data_format"],
            dilation_rate=config["dilation_rate"],
            use_bias=False,
            activation=None,
            name=f"{name}_lowrank",
            dtype=config.get("dtype"),
        )
        second_config = dict(
            config, kernel_size=(1, 1), strides=(1, 1), padding="valid", dilation_rate=(1, 1)
        )
    # The second layer keeps the original's name, bias, activation and regularizers.
    second = type(layer).from_config(second_config)
    return first, second


def _set_pair(first: Any, second: Any, layer: Any, plan: _Plan) -> None:
    first.set_weights([plan.first])
    rest = [np.asarray(w.numpy()) for w in layer.weights[1:]]  # the bias, if any
    second.set_weights([plan.second, *rest])


def factorize(model: Any, params: LowRankParams) -> tuple[Any, dict[str, dict[str, int]]]:
    """A new model with the planned layers factorized, and a per-layer summary."""
    import keras

    plans: dict[int, _Plan] = {}
    outputs = {id(t._keras_history[0]) for t in model.outputs}
    for layer in model.layers:
        if layer.name in params.exclude or type(layer).__name__ in params.exclude:
            continue
        if params.skip_output and id(layer) in outputs:
            continue
        plan = plan_layer(layer, params)
        if plan is not None:
            plans[id(layer)] = plan
    summary = {
        layer.name: {
            "rank": plans[id(layer)].rank,
            "params_before": plans[id(layer)].before,
            "params_after": plans[id(layer)].after,
        }
        for layer in model.layers
        if id(layer) in plans
    }
    if not plans:
        return None, summary
    pairs: list[tuple[Any, Any, Any, _Plan]] = []  # new first, new second, old layer, plan
    clones: list[tuple[Any, Any]] = []  # new layer, old layer

    def clone(layer: Any) -> Any:
        new = layer.__class__.from_config(layer.get_config())
        clones.append((new, layer))
        return new

    if isinstance(model, keras.Sequential):
        layers: list[Any] = [
            keras.Input(batch_shape=model.inputs[0].shape, dtype=model.inputs[0].dtype)
        ]
        for layer in model.layers:
            if id(layer) in plans:
                first, second = _pair(layer, plans[id(layer)])
                pairs.append((first, second, layer, plans[id(layer)]))
                layers += [first, second]
            else:
                layers.append(clone(layer))
        new = keras.Sequential(layers, name=model.name)
    else:

        def clone_fn(layer: Any) -> Any:
            if id(layer) in plans:
                return layer  # replaced at call time below; never called itself
            return clone(layer)

        def call_fn(layer: Any, *args: Any, **kwargs: Any) -> Any:
            if id(layer) in plans:
                first, second = _pair(layer, plans[id(layer)])
                pairs.append((first, second, layer, plans[id(layer)]))
                return second(first(*args, **kwargs))
            return layer(*args, **kwargs)

        new = keras.models.clone_model(model, clone_function=clone_fn, call_function=call_fn)
    for new_layer, old in clones:
        new_layer.set_weights(old.get_weights())
    for first, second, old, plan in pairs:
        _set_pair(first, second, old, plan)
    return new, summary


class LowRankPass(KerasPass):
    id: ClassVar[str] = "lowrank"
    Params: ClassVar[type] = LowRankParams

    def requirements(self) -> Requirements:
        tunes = self.params.epochs > 0
        # Factorized layers are rebuilt in the outer graph: a nested model would be skipped.
        return Requirements(nested_models=False, labeled_data=tunes, class_scores=tunes)

    def apply(self, model: Any, ctx: PassContext) -> PassResult:
        p: LowRankParams = self.params
        new, summary = factorize(model, p)
        if new is None:
            return PassResult(
                model=model,
                changed=False,
                details={"note": "no layer where factorizing saves parameters", "layers": {}},
            )
        epochs = scaled_epochs(p.epochs, ctx)
        details: dict[str, Any] = {
            "layers": summary,
            "rank_by": "param_fraction" if p.param_fraction is not None else "energy",
            "params_before": count_params(model),
            "params_after": count_params(new),
            "fine_tune_epochs": epochs,
        }
        if epochs:
            logs = fine_tune(
                new,
                ctx,
                epochs=epochs,
                batch_size=p.batch_size,
                learning_rate=p.learning_rate,
                description="lowrank: fine-tuning",
            )
            details["train_accuracy"] = round(logs.get("accuracy", float("nan")), 4)
        return PassResult(model=new, changed=True, details=details)
