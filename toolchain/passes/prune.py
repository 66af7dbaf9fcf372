"""The ``prune`` pass: magnitude pruning of Dense and Conv kernels during fine-tuning.

No wrappers: the pass works on a copy of the model and a Keras callback keeps a
0/1 mask per kernel. Before each training batch the callback advances the step
and, on a pruning step of the schedule, recomputes the masks from the current
weight magnitudes; after each batch it multiplies the kernels by their masks
again, so the optimizer can never revive a pruned weight. The model returned
has plain layers whose kernels hold exact zeros, which gzip (and the int8
converter's constant folding) turn into size savings.

The schedules follow tfmot's: ``polynomial`` is ``PolynomialDecay``
(sparsity = final + (initial - final) * (1 - p)**power, p the fraction of
[begin_step, end_step] done), updating every ``frequency`` steps; ``constant``
holds ``final_sparsity`` from ``begin_step``. Unlike tfmot, the masks are also
updated on ``end_step`` itself and once more when training ends, so the final
sparsity is always reached even when ``frequency`` does not divide the steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar

import numpy as np

from edgec.errors import RecipeError
from edgec.passes.common import (
    HOLD_OUT,
    HOLD_OUT_MIN,
    KerasPass,
    kernel_layers,
    scaled_epochs,
    steps_per_epoch,
    validate_params,
)
from edgec.pipeline import PassContext, PassResult, Requirements


class Schedule(StrEnum):
    POLYNOMIAL = "polynomial"
    CONSTANT = "constant"


class Scope(StrEnum):
    LAYER = "layer"  # each kernel loses the same fraction of its weights
    GLOBAL = "global"  # one magnitude threshold across all pruned kernels


@dataclass(frozen=True, kw_only=True)
class PruneParams:
    schedule: Schedule = Schedule.POLYNOMIAL
    initial_sparsity: float = 0.5
    final_sparsity: float = 0.8
    begin_step: int = 0
    end_step: int | None = None  # None: two fifths of the fine-tuning steps
    frequency: int = 10
    power: float = 3.0
    scope: Scope = Scope.GLOBAL  # one threshold: layers of few, large weights keep more
    exclude: tuple[str, ...] = ()  # layer names or layer class names
    structured_2_4: bool = False  # 2 of every 4 weights along the reduction axis (50%)
    epochs: int = 8
    batch_size: int = 32
    learning_rate: float = 3e-3  # decays to a tenth: the last steps settle

    def __post_init__(self) -> None:
        validate_params(self, "prune")
        for key in ("initial_sparsity", "final_sparsity"):
            value = getattr(self, key)
            if not 0.0 <= value < 1.0:
                raise RecipeError(f"prune: {key} = {value}; valid: 0 <= value < 1")
        if self.schedule is Schedule.POLYNOMIAL and self.initial_sparsity > self.final_sparsity:
            raise RecipeError(
                f"prune: initial_sparsity {self.initial_sparsity} exceeds final_sparsity "
                f"{self.final_sparsity}"
            )
        if self.begin_step < 0 or self.frequency < 1 or self.power <= 0:
            raise RecipeError("prune: need begin_step >= 0, frequency >= 1 and power > 0")
        if self.end_step is not None and self.end_step <= self.begin_step:
            raise RecipeError(
                f"prune: end_step {self.end_step} must be after begin_step {self.begin_step}"
            )
        if self.epochs < 0 or self.batch_size < 1 or self.learning_rate <= 0:
            raise RecipeError("prune: need epochs >= 0, batch_size >= 1 and learning_rate > 0")


def polynomial_sparsity(
    step: int, *, initial: float, final: float, begin: int, end: int, power: float
) -> float:
    """tfmot ``PolynomialDecay``: the sparsity the schedule asks for at ``step``."""
    p = min(1.0, max(0.0, (step - begin) / max(1, end - begin)))
    return final + (initial - final) * (1.0 - p) ** power


def magnitude_masks(kernels: list[np.ndarray], sparsity: float, scope: Scope) -> list[np.ndarray]:
    """0/1 masks that zero exactly ``round(sparsity * n)`` of the smallest magnitudes."""
    if scope is Scope.LAYER:
        return [_mask_smallest(np.abs(k).ravel(), sparsity).reshape(k.shape) for k in kernels]
    flat = np.concatenate([np.abs(k).ravel() for k in kernels])
    mask = _mask_smallest(flat, sparsity)
    out, start = [], 0
    for k in kernels:
        out.append(mask[start : start + k.size].reshape(k.shape))
        start += k.size
    return out


def _mask_smallest(magnitudes: np.ndarray, sparsity: float) -> np.ndarray:
    n_zero = round(sparsity * magnitudes.size)
    mask = np.ones(magnitudes.size, np.float32)
    if n_zero > 0:
        # A stable sort: among equal magnitudes (already-pruned zeros) the order is fixed.
        mask[np.argsort(magnitudes, kind="stable")[:n_zero]] = 0.0
    return mask


def reduction_matrix(kernel: np.ndarray, depthwise: bool) -> np.ndarray:
    """The kernel as (reduction, outputs): the axis a 2:4 group runs along."""
    if depthwise:  # (kh, kw, cin, mult): each output channel reduces over kh*kw
        kh, kw = kernel.shape[:2]
        return kernel.reshape(kh * kw, -1)
    return kernel.reshape(-1, kernel.shape[-1])


def mask_2_4(kernel: np.ndarray, depthwise: bool) -> np.ndarray | None:
    """Keep the 2 largest of every 4 consecutive weights along the reduction axis."""
    mat = reduction_matrix(kernel, depthwise)
    if mat.shape[0] % 4:
        return None  # no whole groups of 4: the layer is left dense and reported
    groups = np.abs(mat).T.reshape(mat.shape[1], -1, 4)
    order = np.argsort(groups, axis=-1, kind="stable")
    mask = np.ones_like(groups, dtype=np.float32)
    np.put_along_axis(mask, order[..., :2], 0.0, axis=-1)
    return mask.reshape(mat.shape[1], -1).T.reshape(kernel.shape)


def holds_2_4(kernel: np.ndarray, depthwise: bool = False) -> bool:
    """Whether every group of 4 along the reduction axis has at most 2 nonzeros."""
    mat = reduction_matrix(kernel, depthwise)
    if mat.shape[0] % 4:
        return False
    groups = (mat != 0).T.reshape(mat.shape[1], -1, 4)
    return bool(np.all(groups.sum(axis=-1) <= 2))


def sparsity_of(array: np.ndarray) -> float:
    return float(np.mean(array == 0)) if array.size else 0.0


class _Masker:
    """The masks and the schedule, with the step count the callback advances."""

    def __init__(self, layers: list[Any], params: PruneParams, end_step: int) -> None:
        self.layers, self.params, self.end_step = layers, params, end_step
        self.masks: list[np.ndarray] = [
            np.ones(tuple(layer.kernel.shape), np.float32) for layer in layers
        ]
        self.step = 0
        self.sparsity = 0.0
        self.skipped_2_4: list[str] = []

    def target(self, step: int) -> float:
        p = self.params
        if p.structured_2_4:
            return 0.5
        if p.schedule is Schedule.CONSTANT:
            return p.final_sparsity
        return polynomial_sparsity(
            step,
            initial=p.initial_sparsity,
            final=p.final_sparsity,
            begin=p.begin_step,
            end=self.end_step,
            power=p.power,
        )

    def due(self, step: int) -> bool:
        p = self.params
        if step < p.begin_step or step > self.end_step:
            return False
        return (step - p.begin_step) % p.frequency == 0 or step == self.end_step

    def update(self, sparsity: float) -> None:
        kernels = [np.asarray(layer.kernel.numpy()) for layer in self.layers]
        if self.params.structured_2_4:
            masks = []
            for layer, k in zip(self.layers, kernels, strict=True):
                m = mask_2_4(k, type(layer).__name__ == "DepthwiseConv2D")
                if m is None:
                    self.skipped_2_4.append(layer.name)
                    m = np.ones_like(k, np.float32)
                masks.append(m)
            self.masks = masks
        else:
            self.masks = magnitude_masks(kernels, sparsity, self.params.scope)
        self.sparsity = sparsity
        self.apply()

    def requirements(self) -> Requirements:
        tunes = self.params.epochs > 0
        return Requirements(labeled_data=tunes, class_scores=tunes)

    def apply(self) -> None:
        for layer, mask in zip(self.layers, self.masks, strict=True):
            layer.kernel.assign(layer.kernel.numpy() * mask)

    def finish(self) -> None:
        # The schedule's last word, even if training stopped before end_step.
        final = self.target(self.end_step)
        if self.sparsity < final or self.params.structured_2_4:
            self.skipped_2_4.clear()
            self.update(final)
        else:
            self.apply()


def _callback(masker: _Masker) -> Any:
    import keras

    class PruneCallback(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
            if masker.due(masker.step):
                masker.update(masker.target(masker.step))

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            masker.apply()
            masker.step += 1

    return PruneCallback()


class PrunePass(KerasPass):
    id: ClassVar[str] = "prune"
    Params: ClassVar[type] = PruneParams

    def requirements(self) -> Requirements:
        tunes = self.params.epochs > 0
        return Requirements(labeled_data=tunes, class_scores=tunes)

    def apply(self, model: Any, ctx: PassContext) -> PassResult:
        p: PruneParams = self.params
        layers = kernel_layers(model, p.exclude)
        if not layers:
            return PassResult(model=model, changed=False, details={"note": "no prunable layers"})
        epochs = scaled_epochs(p.epochs, ctx)
        total_steps = 0
        if epochs and ctx.data is not None and ctx.data.y_train is not None:
            rows = len(ctx.data.x_train)
            rows -= int(rows * HOLD_OUT) if rows >= HOLD_OUT_MIN else 0
            total_steps = epochs * steps_per_epoch(rows, p.batch_size)
        # By default the schedule ends two fifths in: the rest trains at the final
        # sparsity with fixed masks, and the best of those epochs is kept.
        default_end = max(p.begin_step + 1, (2 * total_steps) // 5 - 1)
        end_step = p.end_step if p.end_step is not None else default_end
        masker = _Masker(layers, p, end_step)
        tuned = self.tune(
            model,
            ctx,
            self.soft_targets(model, ctx),
            callbacks=[_callback(masker)],
            settled=lambda: masker.step > end_step,
        )
        masker.finish()
        per_layer = {layer.name: round(sparsity_of(layer.kernel.numpy()), 4) for layer in layers}
        pruned = sum(int(np.sum(layer.kernel.numpy() == 0)) for layer in layers)
        size = sum(int(np.prod(layer.kernel.shape)) for layer in layers)
        all_weights = sum(int(np.prod(w.shape)) for w in model.weights)
        all_zero = sum(int(np.sum(w.numpy() == 0)) for w in model.weights)
        details: dict[str, Any] = {
            "pattern": "2:4" if p.structured_2_4 else f"unstructured ({p.scope})",
            "target_sparsity": round(masker.target(end_step), 4),
            "steps": masker.step,
            "end_step": end_step,
            "sparsity_per_layer": per_layer,
            "sparsity_pruned_layers": round(pruned / size, 4) if size else 0.0,
            "sparsity_overall": round(all_zero / all_weights, 4) if all_weights else 0.0,
            "fine_tune": tuned,
        }
        if masker.skipped_2_4:
            details["left_dense_not_multiple_of_4"] = sorted(set(masker.skipped_2_4))
        return PassResult(model=model, changed=True, details=details)
