"""The middle of the compiler: passes over a Keras model, and the manager that runs them.

A pass has a stable kebab-case ``id``, a frozen ``Params`` dataclass (its
parameters, with defaults), and says whether it needs training data. ``run``
returns a ``PassResult`` that says whether the model changed. The
``PassManager`` runs a list of passes in order, times each, records parameter
counts before and after, and adds context to a failure:
"'prune' failed after ['lowrank']: ...".
"""

from __future__ import annotations

import dataclasses
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from edgec.errors import EdgecError, InputError

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


class Pass(ABC):
    id: ClassVar[str]
    Params: ClassVar[type]  # a frozen, keyword-only dataclass with defaults

    def __init__(self, params: Any | None = None) -> None:
        self.params = params if params is not None else self.Params()

    @property
    def needs_data(self) -> bool:
        """Whether ``run`` trains on labeled data: by default, when it fine-tunes (epochs > 0)."""
        return getattr(self.params, "epochs", 1) > 0

    @abstractmethod
    def run(self, model: Any, ctx: PassContext) -> PassResult: ...

    def param_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.params)


def count_params(model: Any) -> int:
    return int(sum(math.prod(int(d) for d in w.shape) for w in model.weights))


class PassManager:
    def __init__(self, passes: list[Pass]) -> None:
        self.passes = passes

    def run(self, model: Any, ctx: PassContext) -> tuple[Any, list[PassRecord]]:
        records: list[PassRecord] = []
        for p in self.passes:
            done = [r.id for r in records]
            if p.needs_data and (ctx.data is None or ctx.data.y_train is None):
                raise InputError(
                    f"pass {p.id!r} needs labeled training data; give --data "
                    "(.npz with x_train/y_train, or an image folder)"
                )
            ctx.log(f"pass {p.id} {p.param_dict()}")
            before = count_params(model)
            start = time.perf_counter()
            try:
                result = p.run(model, ctx)
            except EdgecError as exc:
                raise type(exc)(f"{p.id!r} failed after {done}: {exc}") from exc
            except Exception as exc:  # a bug or a TF error: keep the context, not the noise
                raise EdgecError(
                    f"{p.id!r} failed after {done}: {type(exc).__name__}: {exc}"
                ) from exc
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
