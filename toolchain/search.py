"""The accuracy-aware search: step compression up, measure each step, keep the best that fits.

The mission's "apply iteratively with careful monitoring" as an algorithm. A
``Ladder`` holds families of rungs of rising strength (pruning sparsity, low-rank
parameter fraction, fewer clusters). Each rung's passes run on the original
model, and the caller's ``evaluate`` callback turns the result into an artifact
and measures it (bytes, gzip bytes, accuracy, host latency). A family stops at
its first rung that breaks the accuracy bound, since stronger rungs only lose
more. Then the strongest passing rung of each family are combined (low-rank,
then pruning, then clustering).

The plain model (no passes) is always a candidate, so the choice is never worse
on size than plain quantization at the same bound. The chosen candidate is the
smallest (gzip bytes, then bytes) that meets both the accuracy bound and
``fits_budgets``. When none does, the result says ``met=False`` and holds the
best there is: the smallest one within the accuracy bound, else the most
accurate. Every candidate tried is a row of ``SearchResult.table``.

This module knows nothing about conversion or the build: that is the
``evaluate`` callback's business.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgec.errors import EdgecError, InputError
from edgec.pipeline import PassContext, PassManager, count_params
from edgec.recipe import Step


@dataclass(frozen=True, kw_only=True)
class Measurement:
    """What ``evaluate`` reports for one candidate model, as its artifact."""

    bytes: int
    gzip_bytes: int
    accuracy: float
    host_latency_ms: float | None = None
    payload: Any = None  # anything the caller wants back with the choice (e.g. the .tflite bytes)


@dataclass(frozen=True, kw_only=True)
class Rung:
    label: str
    steps: tuple[Step, ...]


@dataclass(frozen=True, kw_only=True)
class Ladder:
    """Families of rungs, each family ordered from weakest to strongest."""

    families: tuple[tuple[Rung, ...], ...]
    combine: bool = True


def _rung(label: str, pass_id: str, **params: Any) -> Rung:
    return Rung(label=label, steps=(Step(id=pass_id, params=params),))


def default_ladder() -> Ladder:
    prune = tuple(
        _rung(f"prune {s:.0%}", "prune", initial_sparsity=min(0.5, s), final_sparsity=s)
        for s in (0.5, 0.7, 0.8, 0.9, 0.95)
    )
    lowrank = tuple(
        _rung(f"lowrank {f:.0%} params", "lowrank", param_fraction=f) for f in (0.5, 0.3, 0.2)
    )
    cluster = tuple(_rung(f"cluster k={k}", "cluster", k=k) for k in (64, 32, 16, 8))
    return Ladder(families=(lowrank, prune, cluster))


@dataclass(frozen=True, kw_only=True)
class Candidate:
    label: str
    steps: tuple[Step, ...]
    measurement: Measurement | None  # None when the passes failed
    accuracy_drop: float | None
    fits_budgets: bool
    ok: bool
    params: int | None
    seconds: float
    records: list[dict[str, Any]] = field(default_factory=list)  # PassRecord.to_dict() each
    error: str = ""

    def row(self) -> dict[str, Any]:
        m = self.measurement
        return {
            "label": self.label,
            "passes": [s.resolved() for s in self.steps],
            "bytes": m.bytes if m else None,
            "gzip_bytes": m.gzip_bytes if m else None,
            "params": self.params,
            "accuracy": None if m is None else round(m.accuracy, 6),
            "accuracy_drop": None if self.accuracy_drop is None else round(self.accuracy_drop, 6),
            "host_latency_ms": None
            if m is None or m.host_latency_ms is None
            else round(m.host_latency_ms, 4),
            "fits_budgets": self.fits_budgets,
            "ok": self.ok,
            "seconds": round(self.seconds, 2),
            "error": self.error,
        }


@dataclass(frozen=True, kw_only=True)
class SearchResult:
    chosen: Candidate
    model: Any  # the chosen Keras model (the input model itself when plain wins)
    met: bool  # the chosen candidate meets the accuracy bound and the budgets
    reference_accuracy: float
    max_accuracy_drop: float
    candidates: tuple[Candidate, ...]

    @property
    def table(self) -> list[dict[str, Any]]:
        return [c.row() for c in self.candidates]

    def to_dict(self) -> dict[str, Any]:
        """The manifest's ``search`` section."""
        return {
            "met": self.met,
            "chosen": self.chosen.label,
            "chosen_passes": [s.resolved() for s in self.chosen.steps],
            "reference_accuracy": round(self.reference_accuracy, 6),
            "max_accuracy_drop": self.max_accuracy_drop,
            "candidates": self.table,  # the report charts these against the chosen one
        }


def _size_key(c: Candidate) -> tuple[float, float, float]:
    m = c.measurement
    assert m is not None
    return (m.gzip_bytes, m.bytes, c.accuracy_drop or 0.0)


def search(
    model: Any,
    ctx: PassContext,
    *,
    evaluate: Callable[[Any, str], Measurement],
    max_accuracy_drop: float,
    fits_budgets: Callable[[Measurement], bool] | None = None,
    reference_accuracy: float | None = None,
    ladder: Ladder | None = None,
    max_candidates: int = 24,
) -> SearchResult:
    """Try the ladder on ``model``; return the most compressed candidate that fits.

    ``evaluate(keras_model, label)`` converts and measures one candidate.
    ``reference_accuracy`` is what drops are measured from (the float32
    baseline's accuracy); by default the Keras model's own validation accuracy.
    """
    from edgec.passes.common import accuracy

    data = ctx.data
    if data is None or data.y_val is None:
        raise InputError("the accuracy-aware search needs labeled validation data; give --data")
    if reference_accuracy is None:
        reference_accuracy = accuracy(model, data.x_val, data.y_val)
    fits = fits_budgets or (lambda m: True)
    ladder = ladder or default_ladder()
    tried: list[Candidate] = []
    # The smallest candidate that fits, and the best fallback; each (key, candidate, model).
    best_ok: tuple[tuple[float, ...], Candidate, Any] | None = None
    fallback: tuple[tuple[float, ...], Candidate, Any] | None = None

    def consider(c: Candidate, new_model: Any) -> None:
        nonlocal best_ok, fallback
        tried.append(c)
        if c.measurement is None:
            return
        if c.ok:
            if best_ok is None or _size_key(c) < best_ok[0]:
                best_ok = (_size_key(c), c, new_model)
            return
        # Within the accuracy bound but over a budget beats any accuracy failure.
        drop = c.accuracy_drop or 0.0
        key = (0.0, *_size_key(c)) if accurate(c) else (1.0, drop, *_size_key(c)[:2])
        if fallback is None or key < fallback[0]:
            fallback = (key, c, new_model)

    def attempt(label: str, steps: tuple[Step, ...]) -> Candidate:
        # The plain candidate's failure is the caller's (conversion, data): let it surface.
        ctx.log(f"search: trying {label}")
        start = time.perf_counter()
        records: list[dict[str, Any]] = []
        new_model = model

        def failed(error: str, params: int | None) -> Candidate:
            c = Candidate(
                label=label,
                steps=steps,
                measurement=None,
                accuracy_drop=None,
                fits_budgets=False,
                ok=False,
                params=params,
                seconds=time.perf_counter() - start,
                records=records,
                error=error,
            )
            consider(c, None)
            return c

        try:
            if steps:
                passes = [s.instantiate() for s in steps]
                new_model, recs = PassManager(passes).run(model, ctx)
                records = [r.to_dict() for r in recs]
                if not any(r.changed for r in recs):
                    raise _NoChange
            m = evaluate(new_model, label)
        except _NoChange:
            return failed("the passes changed nothing", count_params(new_model))
        except EdgecError as exc:
            if not steps:
                raise
            return failed(str(exc), None)
        drop = float(reference_accuracy) - float(m.accuracy)
        fit = bool(fits(m))
        c = Candidate(
            label=label,
            steps=steps,
            measurement=m,
            accuracy_drop=drop,
            fits_budgets=fit,
            ok=drop <= max_accuracy_drop + 1e-9 and fit,
            params=count_params(new_model),
            seconds=time.perf_counter() - start,
            records=records,
        )
        ctx.log(f"search: {label}: gzip {m.gzip_bytes} B, accuracy drop {drop:+.4f}, ok {c.ok}")
        consider(c, new_model)
        return c

    def accurate(c: Candidate) -> bool:
        return c.measurement is not None and (c.accuracy_drop or 0.0) <= max_accuracy_drop + 1e-9

    attempt("plain", ())
    strongest: list[Rung] = []  # the strongest rung of each family within the accuracy bound
    for family in ladder.families:
        last: Rung | None = None
        for rung in family:
            if len(tried) >= max_candidates:
                break
            c = attempt(rung.label, rung.steps)
            if not accurate(c):
                break  # stronger rungs of this family would only lose more accuracy
            last = rung
        if last is not None:
            strongest.append(last)
    if ladder.combine and len(strongest) >= 2:
        full = attempt(" + ".join(r.label for r in strongest), _steps(strongest))
        if not accurate(full) and len(strongest) > 2:
            # All of them together lose too much: try each family left out in turn.
            for skip in strongest:
                if len(tried) >= max_candidates:
                    break
                rest = [r for r in strongest if r is not skip]
                attempt(" + ".join(r.label for r in rest), _steps(rest))
    met = best_ok is not None
    pick = best_ok or fallback
    assert pick is not None  # the plain candidate was measured, or raised
    _, chosen, chosen_model = pick
    # Only the chosen candidate keeps its payload (an artifact each would add up for big models).
    slim = tuple(
        c
        if c is chosen or c.measurement is None
        else dataclasses.replace(c, measurement=dataclasses.replace(c.measurement, payload=None))
        for c in tried
    )
    return SearchResult(
        chosen=chosen,
        model=chosen_model,
        met=met,
        reference_accuracy=float(reference_accuracy),
        max_accuracy_drop=max_accuracy_drop,
        candidates=slim,
    )


def _steps(rungs: list[Rung]) -> tuple[Step, ...]:
    return tuple(s for r in rungs for s in r.steps)


class _NoChange(Exception):
    pass
