"""The ``cluster`` pass: k-means weight sharing per kernel, so int8 artifacts gzip further.

Each Dense/Conv kernel's weights are clustered into ``k`` centroids with a
one-dimensional k-means (linear initialization between the kernel's min and
max, as tfmot's default), and every weight is replaced by its centroid. With
``preserve_sparsity`` exact zeros (from ``prune``) stay zero as their own
cluster, so the kernel holds at most k values including zero.

Optional fine-tuning keeps the sharing: the assignments are fixed, and after
each training batch a callback moves each centroid to the mean of its
(gradient-updated) weights and snaps the weights back onto it. The zero
cluster never moves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from edgec.errors import RecipeError
from edgec.passes.common import (
    KerasPass,
    kernel_layers,
    validate_params,
)
from edgec.pipeline import PassContext, PassResult, Requirements


@dataclass(frozen=True, kw_only=True)
class ClusterParams:
    k: int = 16
    preserve_sparsity: bool = True
    iterations: int = 30  # Lloyd iterations of the k-means
    exclude: tuple[str, ...] = ()  # layer names or layer class names
    epochs: int = 4
    batch_size: int = 32
    learning_rate: float = 1e-4

    def __post_init__(self) -> None:
        validate_params(self, "cluster")
        if not 2 <= self.k <= 256:
            raise RecipeError(f"cluster: k = {self.k}; valid: 2 <= k <= 256")
        if self.iterations < 1 or self.epochs < 0 or self.batch_size < 1:
            raise RecipeError("cluster: need iterations >= 1, epochs >= 0 and batch_size >= 1")
        if self.learning_rate <= 0:
            raise RecipeError(f"cluster: learning_rate = {self.learning_rate}; must be > 0")


def kmeans_1d(values: np.ndarray, k: int, iterations: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Centroids (sorted) and each value's cluster index; linear init between min and max."""
    values = values.astype(np.float64).ravel()
    lo, hi = float(values.min()), float(values.max())
    if hi == lo:
        return np.array([lo]), np.zeros(values.size, np.int64)
    centroids = np.linspace(lo, hi, k)
    for _ in range(iterations):
        idx = _assign(values, centroids)
        sums = np.bincount(idx, weights=values, minlength=len(centroids))
        counts = np.bincount(idx, minlength=len(centroids))
        moved = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
        if np.allclose(moved, centroids):
            break
        centroids = moved
    # Drop empty clusters so the value count is honest.
    idx = _assign(values, centroids)
    used = np.unique(idx)
    centroids = centroids[used]
    return centroids, np.searchsorted(used, idx)


def _assign(values: np.ndarray, sorted_centroids: np.ndarray) -> np.ndarray:
    # 1-D nearest centroid: compare against the midpoints between sorted centroids.
    mids = (sorted_centroids[1:] + sorted_centroids[:-1]) / 2.0
    return np.searchsorted(mids, values)


@dataclass(kw_only=True)
class _Clustered:
    layer: Any
    index: np.ndarray  # cluster per weight, -1 for a preserved zero
    k: int  # clusters besides the zero cluster

    def snap(self) -> None:
        w = np.asarray(self.layer.kernel.numpy()).ravel().astype(np.float64)
        live = self.index >= 0
        sums = np.bincount(self.index[live], weights=w[live], minlength=self.k)
        counts = np.bincount(self.index[live], minlength=self.k)
        centroids = sums / np.maximum(counts, 1)
        out = np.zeros_like(w)
        out[live] = centroids[self.index[live]]
        self.layer.kernel.assign(out.reshape(tuple(self.layer.kernel.shape)).astype(np.float32))


def cluster_layer(layer: Any, params: ClusterParams) -> _Clustered:
    w = np.asarray(layer.kernel.numpy()).ravel()
    index = np.full(w.size, -1, np.int64)
    live = w != 0 if params.preserve_sparsity else np.ones(w.size, bool)
    has_zero = params.preserve_sparsity and not bool(np.all(live))
    k = params.k - 1 if has_zero else params.k
    if np.any(live):
        centroids, idx = kmeans_1d(w[live], max(1, k), params.iterations)
        index[live] = idx
        k = len(centroids)
    clustered = _Clustered(layer=layer, index=index, k=k)
    clustered.snap()
    return clustered


def _callback(clustered: list[_Clustered]) -> Any:
    import keras

    class ClusterCallback(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            for c in clustered:
                c.snap()

    return ClusterCallback()


class ClusterPass(KerasPass):
    id: ClassVar[str] = "cluster"
    Params: ClassVar[type] = ClusterParams

    def requirements(self) -> Requirements:
        tunes = self.params.epochs > 0
        return Requirements(labeled_data=tunes, class_scores=tunes)

    def apply(self, model: Any, ctx: PassContext) -> PassResult:
        p: ClusterParams = self.params
        # A kernel with no more weights than clusters gains nothing from sharing.
        layers = [
            layer
            for layer in kernel_layers(model, p.exclude)
            if int(np.prod(layer.kernel.shape)) > p.k
        ]
        if not layers:
            return PassResult(model=model, changed=False, details={"note": "no layer to cluster"})
        teacher = self.soft_targets(model, ctx)
        clustered = [cluster_layer(layer, p) for layer in layers]
        details: dict[str, Any] = {"k": p.k}
        details["fine_tune"] = self.tune(model, ctx, teacher, callbacks=[_callback(clustered)])
        for c in clustered:
            c.snap()
        details["unique_values_per_layer"] = {
            c.layer.name: int(np.unique(c.layer.kernel.numpy()).size) for c in clustered
        }
        details["sparsity_per_layer"] = {
            c.layer.name: round(float(np.mean(c.layer.kernel.numpy() == 0)), 4) for c in clustered
        }
        return PassResult(model=model, changed=True, details=details)
