"""Per-layer weight precision (the ``mixed-int4`` scheme), chosen by measured sensitivity.

The candidates are the layers whose op has an int4 kernel and an int4 quantizer
config (``edgec.schemes.INT4_WEIGHT_OPS``). Each is quantized alone to int4,
everything else int8, and its accuracy on the validation split is measured
through the TFLite runtime: the drop against all-int8 is the layer's
sensitivity. Layers then join the int4 set from the least sensitive (ties: the
most weights first, as they save the most bytes), and each addition is measured
again; the first addition that takes the drop against the float32 baseline
past the bound ends the search, and the set before it is kept. If even all-int8
is over the bound, no layer is int4.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from edgec.convert import ConvertOptions, convert
from edgec.data import Dataset
from edgec.evaluate import evaluate
from edgec.modelinfo import read_model
from edgec.schemes import INT4_WEIGHT_OPS, Quantization


@dataclass(frozen=True, kw_only=True)
class Layer:
    name: str  # the op's output tensor name in the float32 flatbuffer
    op: str
    weights: int  # weight elements: bytes saved at int4 = weights / 2
    accuracy_alone: float | None = None  # this layer alone at int4, the rest int8
    sensitivity: float | None = None  # all-int8 accuracy minus accuracy_alone


@dataclass(frozen=True, kw_only=True)
class PrecisionPlan:
    int4_layers: tuple[str, ...]
    layers: tuple[Layer, ...]  # every candidate, in the order tried
    int8_accuracy: float | None
    accuracy: float | None  # with the chosen int4 layers
    reference_accuracy: float | None
    max_accuracy_drop: float
    measured_on: str  # what measured the accuracies

    def to_dict(self) -> dict[str, Any]:
        return {
            "int4_layers": list(self.int4_layers),
            "int8_accuracy": self.int8_accuracy,
            "accuracy": self.accuracy,
            "reference_accuracy": self.reference_accuracy,
            "max_accuracy_drop": self.max_accuracy_drop,
            "measured_on": self.measured_on,
            "method": "one layer at a time at int4 (rest int8), least sensitive first, "
            "until the drop against float32 passes the bound",
            "layers": [
                {
                    "name": x.name,
                    "op": x.op,
                    "weights": x.weights,
                    "accuracy_alone": x.accuracy_alone,
                    "sensitivity": x.sensitivity,
                    "int4": x.name in self.int4_layers,
                }
                for x in self.layers
            ],
        }


def int4_candidates(float_content: bytes) -> list[Layer]:
    """Layers of a float32 flatbuffer whose weights can be int4."""
    info = read_model(float_content, "float32 model")
    out = []
    for op in info.ops:
        if op.name not in INT4_WEIGHT_OPS or len(op.inputs) < 2 or len(op.outputs) != 1:
            continue
        w = info.tensors[op.inputs[1]]
        if w.constant:
            out.append(Layer(name=info.tensors[op.outputs[0]].name, op=op.name, weights=w.elements))
    return out


def choose_int4_layers(
    float_content: bytes,
    options: ConvertOptions,
    calibration: np.ndarray,
    data: Dataset,
    *,
    reference_accuracy: float | None,
    max_accuracy_drop: float,
    threads: int = 1,
) -> PrecisionPlan:
    """Measure each candidate layer at int4 and keep the cheapest ones within the bound."""
    if options.quantization is not Quantization.MIXED_INT4:
        raise ValueError(f"per-layer precision is for mixed-int4, not {options.quantization}")

    def accuracy(layers: tuple[str, ...]) -> float | None:
        content = convert(float_content, replace(options, int4_layers=layers), calibration)
        return evaluate(content, data, threads=threads, latency=False).metrics.get("accuracy")

    candidates = int4_candidates(float_content)
    base = accuracy(())
    chosen: tuple[str, ...] = ()
    kept = base
    measured = list(candidates)
    # Without labels nothing can be measured, and no layer is risked at int4.
    if base is not None and candidates:
        measured = []
        for layer in candidates:
            alone = accuracy((layer.name,))
            assert alone is not None
            measured.append(
                replace(layer, accuracy_alone=alone, sensitivity=round(base - alone, 6))
            )
        measured.sort(key=lambda x: (x.sensitivity, -x.weights))
        reference = base if reference_accuracy is None else reference_accuracy
        if reference - base <= max_accuracy_drop + 1e-9:
            for layer in measured:
                trial = (*chosen, layer.name)
                acc = accuracy(trial)
                assert acc is not None
                if reference - acc > max_accuracy_drop + 1e-9:
                    break
                chosen, kept = trial, acc
    return PrecisionPlan(
        int4_layers=chosen,
        layers=tuple(measured),
        int8_accuracy=base,
        accuracy=kept,
        reference_accuracy=reference_accuracy,
        max_accuracy_drop=max_accuracy_drop,
        measured_on=_MEASURED_ON,
    )


_MEASURED_ON = "host, LiteRT interpreter, validation split"
