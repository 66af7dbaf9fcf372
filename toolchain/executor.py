"""Executors: where independent jobs run (the search's candidates, batch builds).

A job is ``fn(shared, job)``: ``fn`` is a module-level function (so another
process can import it by name), ``shared`` is what every job needs (the model
as bytes, the data arrays, the profile: sent once), and ``job`` is one small,
picklable description (a recipe). Nothing closes over an in-memory Keras model,
so a job can run in this process, in a child, or on another machine.

``Executor.map`` yields ``(index, outcome)`` as jobs finish, in any order; the
caller orders them by index, so the answer does not depend on which worker was
faster. An outcome is ``fn``'s return value, or a ``JobFailure`` when the job
raised or its worker died: one failed job never stops the others.

``LocalExecutor`` runs the jobs one after another in this process and is the
default. The Ray executor (``edgec.executor_ray``, the ``distributed`` extra)
satisfies the same protocol.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol, TypeVar

from edgec.errors import UsageError

S = TypeVar("S")
J = TypeVar("J")


class ExecutorKind(StrEnum):
    LOCAL = "local"
    RAY = "ray"


@dataclass(frozen=True, kw_only=True)
class Resources:
    """What one job asks of a worker."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0


@dataclass(frozen=True, kw_only=True)
class JobFailure:
    """A job that raised, or whose worker died: the reason is one line for the report."""

    reason: str


class Executor(Protocol):
    name: str

    def map(
        self,
        fn: Callable[[S, J], Any],
        shared: S,
        jobs: Sequence[J],
        *,
        resources: Resources | None = None,
    ) -> Iterator[tuple[int, Any]]:
        """Run ``fn(shared, job)`` for every job; yield ``(index, result or JobFailure)``."""
        ...

    def share(self, value: Any) -> Any:
        """A handle on ``value`` that a job turns back into it with ``fetch``.

        For parts only some jobs need (one model of a batch): sent once, each job
        fetching its own, instead of every job receiving all of them in ``shared``.
        """
        ...

    def close(self) -> None: ...


def fetch(handle: Any) -> Any:
    """The value behind ``Executor.share``'s handle (a Ray reference is read from the store)."""
    ray = sys.modules.get("ray")  # a handle from Ray means this process imported it
    if ray is not None and isinstance(handle, ray.ObjectRef):
        return ray.get(handle)
    return handle


def failure(exc: BaseException) -> JobFailure:
    """The one-line reason for a job that raised."""
    text = " ".join(str(exc).split())
    return JobFailure(reason=f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


class LocalExecutor:
    """Every job in this process, one after another, in order."""

    name = "local"

    def map(
        self,
        fn: Callable[[S, J], Any],
        shared: S,
        jobs: Sequence[J],
        *,
        resources: Resources | None = None,
    ) -> Iterator[tuple[int, Any]]:
        for i, job in enumerate(jobs):
            try:
                outcome = fn(shared, job)
            except Exception as exc:  # the job's failure is its row, not the caller's crash
                outcome = failure(exc)
            yield i, outcome

    def share(self, value: Any) -> Any:
        return value  # the jobs run in this process

    def close(self) -> None:
        pass


def ordered(outcomes: Iterator[tuple[int, Any]], count: int) -> list[Any]:
    """Collect ``map``'s outcomes by job index."""
    results: list[Any] = [None] * count
    for i, outcome in outcomes:
        results[i] = outcome
    return results


@contextlib.contextmanager
def open_executor(kind: str = ExecutorKind.LOCAL, address: str | None = None) -> Iterator[Executor]:
    """The executor named ``kind`` (``address``: a Ray cluster's), closed when the block ends."""
    try:
        kind = ExecutorKind(kind)
    except ValueError:
        valid = ", ".join(k.value for k in ExecutorKind)
        raise UsageError(f"unknown executor {kind!r}; valid: {valid}") from None
    executor: Executor
    if kind is ExecutorKind.RAY:
        from edgec.executor_ray import RayExecutor

        executor = RayExecutor(address)
    else:  # an address (say from $EDGEC_RAY_ADDRESS) means nothing to the local executor
        executor = LocalExecutor()
    try:
        yield executor
    finally:
        executor.close()
