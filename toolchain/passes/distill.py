"""The ``distill`` pass: train a smaller student on the teacher's softened outputs.

The student is a user's architecture (``student``: a ``.keras`` file) or the
teacher's own architecture with every Dense ``units`` and Conv ``filters``
scaled by ``width`` (the output layer keeps its size), freshly initialized.
Training uses Keras 3's ``keras.distillation.Distiller`` with
``LogitsDistillation`` (KL divergence at ``temperature``, scaled by T**2).

``LogitsDistillation`` needs logits, so a teacher or student that ends in a
softmax is trained through a logits copy (the softmax removed), and the student
returned gets the teacher's output semantics back: probabilities if the teacher
gave probabilities, logits if it gave logits. ``alpha`` weighs the soft
(teacher) loss; the hard-label loss gets ``1 - alpha``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from edgec.errors import InputError, RecipeError, UnsupportedModelError
from edgec.passes.common import (
    KerasPass,
    accuracy,
    check_labels,
    check_supported,
    output_kind,
    output_layer,
    restore_softmax,
    scaled_epochs,
    strip_softmax,
    validate_params,
)
from edgec.pipeline import PassContext, PassResult, Requirements, count_params

# Config keys that set a layer's width, by layer class.
WIDTH_KEYS = {
    "Dense": "units",
    "Conv1D": "filters",
    "Conv2D": "filters",
    "Conv3D": "filters",
    "SeparableConv1D": "filters",
    "SeparableConv2D": "filters",
    "Conv2DTranspose": "filters",
}


@dataclass(frozen=True, kw_only=True)
class DistillParams:
    student: str = ""  # a .keras model file; empty: derive from the teacher by `width`
    width: float = 0.5
    temperature: float = 4.0
    alpha: float = 0.9  # weight of the soft (teacher) loss; hard labels get 1 - alpha
    # Beta(mixup, mixup) blends of training input pairs, fresh every batch, as the transfer
    # set: the teacher labels each blend, which hard labels cannot (0 = plain inputs).
    mixup: float = 0.0
    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 2e-3

    def __post_init__(self) -> None:
        validate_params(self, "distill")
        if not 0.0 < self.width <= 1.0:
            raise RecipeError(f"distill: width = {self.width}; valid: 0 < width <= 1")
        if self.temperature <= 0:
            raise RecipeError(f"distill: temperature = {self.temperature}; must be > 0")
        if not 0.0 <= self.alpha <= 1.0:
            raise RecipeError(f"distill: alpha = {self.alpha}; valid: 0 <= alpha <= 1")
        if self.mixup < 0:
            raise RecipeError(f"distill: mixup = {self.mixup}; valid: 0 (off) or > 0")
        if self.epochs < 1 or self.batch_size < 1 or self.learning_rate <= 0:
            raise RecipeError("distill: need epochs >= 1, batch_size >= 1 and learning_rate > 0")


def derive_student(teacher: Any, width: float, seed: int = 0) -> Any:
    """The teacher's architecture with hidden widths scaled by ``width``, freshly initialized."""
    import keras

    check_supported(teacher, "distill", allow_nested=False)
    outputs = {output_layer(teacher).name}
    config = copy.deepcopy(teacher.get_config())
    for entry in config["layers"]:
        # Recorded input shapes are the teacher's; the student's layers build from their inputs.
        if entry.get("class_name") != "InputLayer":
            entry.pop("build_config", None)
        key = WIDTH_KEYS.get(entry.get("class_name", ""))
        cfg = entry.get("config", {})
        if key is None or cfg.get("name") in outputs:
            continue
        cfg[key] = max(1, round(cfg[key] * width))
    config["name"] = f"{teacher.name}_student"
    keras.utils.set_random_seed(seed)
    try:
        student = type(teacher).from_config(config)
    except (ValueError, TypeError) as exc:
        raise UnsupportedModelError(
            f"distill: scaling the widths of {teacher.name!r} by {width} gives an invalid model "
            f"({' '.join(str(exc).split())[:200]}); give a student architecture instead"
        ) from exc
    return student


def load_student(path: str, *, trust: bool = False) -> Any:
    from edgec.loaders import load_keras_file

    file = Path(path)
    if not file.is_file():
        raise InputError(f"distill: student {file} does not exist; give a .keras model file")
    return load_keras_file(file, trust=trust, what="distill: student")


def distill(
    teacher: Any, student: Any, ctx: PassContext, params: DistillParams, epochs: int
) -> tuple[Any, dict[str, float]]:
    """Train ``student`` against ``teacher``; return it with the teacher's output semantics."""
    import keras

    from edgec.progress import keras_progress

    data = ctx.data
    check_labels(teacher, data.y_train)
    teacher_logits = strip_softmax(teacher)
    student_logits = strip_softmax(student)
    keras.utils.set_random_seed(int(ctx.seed))
    distiller = keras.distillation.Distiller(
        teacher=teacher_logits,
        student=student_logits,
        # A KLDivergence *instance*: Keras 3.15 turns the default string "kl_divergence" into
        # a plain function, which LogitsDistillation then applies to raw logits (no softmax).
        distillation_losses=keras.distillation.LogitsDistillation(
            temperature=float(params.temperature), loss=keras.losses.KLDivergence()
        ),
        student_loss_weight=1.0 - float(params.alpha),
    )
    callbacks = [keras_progress("distill: training the student", epochs)]
    if params.mixup > 0:
        classes = int(teacher.outputs[0].shape[-1])
        distiller.compile(
            optimizer=keras.optimizers.Adam(params.learning_rate),
            loss=keras.losses.CategoricalCrossentropy(from_logits=True),
            metrics=["categorical_accuracy"],
        )
        batches = _mixup_batches(data.x_train, data.y_train, classes, params, int(ctx.seed))
        history = distiller.fit(batches, epochs=epochs, verbose=0, callbacks=callbacks)
    else:
        distiller.compile(
            optimizer=keras.optimizers.Adam(params.learning_rate),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        history = distiller.fit(
            data.x_train,
            data.y_train,
            batch_size=params.batch_size,
            epochs=epochs,
            shuffle=True,
            verbose=0,
            callbacks=callbacks,
        )
    trained = restore_softmax(distiller.student, like=teacher)
    logs = {k: float(v[-1]) for k, v in history.history.items() if v}
    return trained, logs


def _mixup_batches(x: Any, y: Any, classes: int, params: DistillParams, seed: int) -> Any:
    """Batches of input blends with their blended one-hot labels, drawn afresh each epoch."""
    import keras
    import numpy as np

    class MixupBatches(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__()
            self.rng = np.random.default_rng(seed)
            self.onehot = np.eye(classes, dtype=np.float32)[y]
            self.order = self.rng.permutation(len(x))

        def __len__(self) -> int:
            return max(1, -(-len(x) // params.batch_size))

        def __getitem__(self, i: int) -> tuple[Any, Any]:
            idx = self.order[i * params.batch_size : (i + 1) * params.batch_size]
            other = self.rng.permutation(len(x))[: len(idx)]
            lam = self.rng.beta(params.mixup, params.mixup, size=len(idx)).astype(np.float32)
            lx = lam.reshape(-1, *([1] * (x.ndim - 1)))
            blend = lx * x[idx] + (1.0 - lx) * x[other]
            labels = lam[:, None] * self.onehot[idx] + (1.0 - lam[:, None]) * self.onehot[other]
            return blend.astype(np.float32), labels

        def on_epoch_end(self) -> None:
            self.order = self.rng.permutation(len(x))

    return MixupBatches()


class DistillPass(KerasPass):
    id: ClassVar[str] = "distill"
    Params: ClassVar[type] = DistillParams

    def requirements(self) -> Requirements:
        return Requirements(labeled_data=True, class_scores=True)

    def apply(self, model: Any, ctx: PassContext) -> PassResult:
        p: DistillParams = self.params
        if p.student:
            student = load_student(p.student, trust=ctx.trust_model)
            check_supported(student, f"{self.id} student")
            output_kind(student)
            source = p.student
        else:
            student = derive_student(model, p.width, seed=ctx.seed)
            source = f"teacher x width {p.width}"
        if tuple(student.inputs[0].shape[1:]) != tuple(model.inputs[0].shape[1:]) or tuple(
            student.outputs[0].shape[1:]
        ) != tuple(model.outputs[0].shape[1:]):
            raise UnsupportedModelError(
                f"distill: student {student.name!r} maps {tuple(student.inputs[0].shape)} -> "
                f"{tuple(student.outputs[0].shape)} but the teacher maps "
                f"{tuple(model.inputs[0].shape)} -> {tuple(model.outputs[0].shape)}"
            )
        epochs = max(1, scaled_epochs(p.epochs, ctx))
        trained, logs = distill(model, student, ctx, p, epochs)
        details: dict[str, Any] = {
            "student": source,
            "teacher_params": count_params(model),
            "student_params": count_params(trained),
            "epochs": epochs,
            "train_accuracy": round(logs.get("accuracy", logs.get("categorical_accuracy", 0.0)), 4),
        }
        data = ctx.data
        if data.y_val is not None:
            details["teacher_val_accuracy"] = round(accuracy(model, data.x_val, data.y_val), 4)
            details["student_val_accuracy"] = round(accuracy(trained, data.x_val, data.y_val), 4)
        return PassResult(model=trained, changed=True, details=details)
