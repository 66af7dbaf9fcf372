"""The middle of the compiler: passes over a Keras model, and the manager that runs them.

A pass has a stable kebab-case ``id``, a frozen ``Params`` dataclass (its
parameters, with defaults) and a contract, ``requirements()``: the layer types
it supports, whether it needs labeled data or a class-score output. ``apply``
works on a private copy of the model and returns a ``PassResult`` that says
whether the model changed.

The ``PassManager`` owns what every pass would otherwise repeat: it checks each
pass's requirements before running it (one line naming the pass, the layer and
what is supported), hands the pass a copy so the caller's model is never
modified, times each pass, records parameter counts before and after, and adds
context to a failure: "'prune' failed after ['lowrank']: ...".
"""

from __future__ import annotations

import dataclasses
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from edgec.errors import EdgecError, InputError, UnsupportedModelError

if TYPE_CHECKING:
    from edgec.data import Dataset
    from edgec.profiles import Profile


@dataclass(kw_only=True)
class PassContext:
    """What every pass may use besides the model itself."""

    data: Dataset
    profile: Profile | None = None
    seed: int = 0
    # Multiplies every pass's fine-tuning epochs; tests and quick runs lower it.
    epochs_scale: float = 1.0
    log: Callable[[str], None] = field(default=lambda message: None)
    # Model files a pass loads (a distillation student) may carry code: --trust-model.
    trust_model: bool = False


@dataclass(frozen=True, kw_only=True)
class PassResult:
    model: Any  # keras.Model
    changed: bool
    details: dict[str, Any] = field(default_factory=dict)  # JSON-able facts for the report


@dataclass(frozen=True, kw_only=True)
class PassRecord:
    """What the manifest and report keep of one pass run."""

    id: str
    params: dict[str, Any]
    changed: bool
    seconds: float
    params_before: int
    params_after: int
    details: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, kw_only=True)
class Requirements:
    """What a pass needs of its input; the manager checks it before the pass runs."""

    # Layer classes the pass can handle; None: any built-in Keras layer. Sequential and
    # functional models only, always: a subclassed model's call() cannot be rebuilt.
    layers: frozenset[str] | None = None
    nested_models: bool = True  # whether a nested Sequential/functional model is accepted
    labeled_data: bool = False  # trains on (x_train, y_train)
    class_scores: bool = False  # one output of class scores (linear logits or softmax)


class Pass(ABC):
    id: ClassVar[str]
    Params: ClassVar[type]  # a frozen, keyword-only dataclass with defaults

    def __init__(self, params: Any | None = None) -> None:
        self.params = params if params is not None else self.Params()

    def requirements(self) -> Requirements:
        """This pass's contract with these params (fine-tuning passes need labels iff epochs>0)."""
        return Requirements()

    @property
    def needs_data(self) -> bool:
        return self.requirements().labeled_data

    @abstractmethod
    def apply(self, model: Any, ctx: PassContext) -> PassResult:
        """Transform ``model``, a private copy the pass may change in place."""

    def run(self, model: Any, ctx: PassContext) -> PassResult:
        """This pass alone through the manager: contract checked, ``model`` left untouched."""
        return PassManager([self]).run_pass(self, model, ctx, done=[])

    def param_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.params)


def count_params(model: Any) -> int:
    return int(sum(math.prod(int(d) for d in w.shape) for w in model.weights))


class PassManager:
    def __init__(self, passes: list[Pass]) -> None:
        self.passes = passes

    def run(self, model: Any, ctx: PassContext) -> tuple[Any, list[PassRecord]]:
        """Run every pass in order on ``model`` (never modified); the result and the records."""
        records: list[PassRecord] = []
        for p in self.passes:
            before = count_params(model)
            start = time.perf_counter()
            result = self.run_pass(p, model, ctx, done=[r.id for r in records])
            model = result.model
            records.append(
                PassRecord(
                    id=p.id,
                    params=p.param_dict(),
                    changed=result.changed,
                    seconds=round(time.perf_counter() - start, 3),
                    params_before=before,
                    params_after=count_params(model),
                    details=result.details,
                )
            )
        return model, records

    def run_pass(self, p: Pass, model: Any, ctx: PassContext, *, done: list[str]) -> PassResult:
        """One pass: its contract checked, then applied to a copy of ``model``."""
        check_requirements(p, model, ctx)
        ctx.log(f"pass {p.id} {p.param_dict()}")
        try:
            from edgec.passes.common import copy_model

            return p.apply(copy_model(model), ctx)
        except EdgecError as exc:
            raise type(exc)(f"{p.id!r} failed after {done}: {exc}") from exc
        except Exception as exc:  # a bug or a TF error: keep the context, not the noise
            raise EdgecError(f"{p.id!r} failed after {done}: {type(exc).__name__}: {exc}") from exc


def check_requirements(p: Pass, model: Any, ctx: PassContext) -> None:
    """Refuse, in one line naming the pass, what ``p`` declares it cannot handle."""
    from edgec.passes.common import check_exclude, check_supported, iter_layers, output_kind

    req = p.requirements()
    if req.labeled_data and (ctx.data is None or ctx.data.y_train is None):
        raise InputError(
            f"pass {p.id!r} needs labeled training data; give --data "
            "(.npz with x_train/y_train, or an image folder)"
        )
    check_supported(model, p.id, allow_nested=req.nested_models)
    if req.layers is not None:
        for layer in iter_layers(model):
            kind = type(layer).__name__
            if kind not in req.layers:
                raise UnsupportedModelError(
                    f"{p.id}: layer {layer.name!r} is a {kind}, which this pass does not "
                    f"support; supported: {', '.join(sorted(req.layers))}"
                )
    if req.class_scores:
        try:
            output_kind(model)
        except UnsupportedModelError as exc:
            raise UnsupportedModelError(f"{p.id}: {exc}") from None
    exclude = getattr(p.params, "exclude", None)
    if exclude:
        check_exclude(p.id, model, exclude)
