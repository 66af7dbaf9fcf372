"""One budget model: every check of a profile's budgets, from typed measurements.

A profile's ``[budgets]`` (``edgec.profiles.Budgets``) sets limits; this module
alone decides whether a measured figure meets one. Build, the search's budget
callback, the microcontroller fit report and ``edgec bench`` all call it, so a
budget means the same thing everywhere.

API::

    from edgec.budgets import Figure, Measurements, Source, check_budgets

    measured = Measurements(
        model_bytes=Figure(value=len(content), source=Source.ARTIFACT),
        flash_bytes=flash_figure(model_bytes=len(content), runtime_code_bytes=code,
                                 runtime_code_estimated=True),
        ram_bytes=Figure(value=ram, source=Source.EMULATOR, what="TFLM arena on the host"),
        latency_ms=Figure(value=p50, source=Source.DEVICE, what="steady p50, 4 threads"),
        accuracy_drop=Figure(value=0.004, source=Source.HOST),
    )
    report = check_budgets(profile.budgets, measured, max_accuracy_drop=None)
    report.ok, report.checks, report.notes, report.failures()

- A ``Figure`` is one number with the ``Source`` that measured it (``artifact``:
  counted from the file itself; ``host``: this machine's LiteRT; ``emulator``:
  the target's runtime run elsewhere, e.g. TFLM on the host or an emulated
  board; ``device``: the board itself; ``estimate``: computed from a table) and
  ``estimate=True`` when any part of it is computed rather than measured. A
  check built from an estimate says so (``BudgetCheck.estimate``) and its
  message ends in "(estimate)".
- Latency and RAM are properties of the target: ``check_budgets`` refuses to
  judge them on a figure from another source (``JUDGED_FROM``). It adds a note
  instead of a check (a host latency says nothing about a Cortex-M's).
- An unset limit (``None``) is unchecked; a limit with no figure is not a check.
- ``BudgetCheck.to_dict()`` is the manifest's ``budgets.checks[]`` entry
  (keys ``name``, ``limit``, ``value``, ``ok``, ``estimate``, ``detail``,
  ``source``); ``BudgetCheck.from_dict`` reads one back.
- ``flash_figure`` is flash for a microcontroller: model bytes + runtime and
  kernel code. ``fits`` is the boolean the search's budget callback needs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

from edgec.profiles import Budgets


class Source(StrEnum):
    """What measured a figure."""

    ARTIFACT = "artifact"  # counted from the artifact file: exact
    HOST = "host"  # this machine's LiteRT, not the target
    EMULATOR = "emulator"  # the target's runtime off the target (TFLM on the host, QEMU)
    DEVICE = "device"  # the target board itself
    ESTIMATE = "estimate"  # computed from a table, not measured


class Budget(StrEnum):
    """The budgets a profile can set (the keys of ``[budgets]``)."""

    MODEL_BYTES = "model_bytes"
    FLASH_BYTES = "flash_bytes"
    RAM_BYTES = "ram_bytes"
    LATENCY_MS = "latency_ms"
    MAX_ACCURACY_DROP = "max_accuracy_drop"


# The sources a budget may be judged from; a figure from any other one is not the target's.
JUDGED_FROM: dict[Budget, frozenset[Source]] = {
    Budget.MODEL_BYTES: frozenset(Source),
    Budget.FLASH_BYTES: frozenset(Source),
    Budget.RAM_BYTES: frozenset({Source.DEVICE, Source.EMULATOR}),
    Budget.LATENCY_MS: frozenset({Source.DEVICE}),
    Budget.MAX_ACCURACY_DROP: frozenset(Source),
}


@dataclass(frozen=True, kw_only=True)
class Figure:
    """One measured (or estimated) number and where it came from."""

    value: float
    source: Source
    estimate: bool = False  # part of it is computed, not measured
    what: str = ""  # how it was measured, for messages: "steady p50 over 200 runs"
    detail: str = ""  # what a failed check says instead of the plain numbers

    @property
    def is_estimate(self) -> bool:
        return self.estimate or self.source is Source.ESTIMATE


@dataclass(frozen=True, kw_only=True)
class Measurements:
    """The figures one artifact is judged on; ``None`` where nothing measured it."""

    model_bytes: Figure | None = None
    flash_bytes: Figure | None = None
    ram_bytes: Figure | None = None
    latency_ms: Figure | None = None
    accuracy_drop: Figure | None = None


@dataclass(frozen=True, kw_only=True)
class BudgetCheck:
    """One limit against one figure: the manifest's ``budgets.checks[]`` entry."""

    name: str
    limit: float
    value: float
    ok: bool
    estimate: bool = False
    detail: str = ""  # for a failed check: the numbers and the biggest contributors
    source: str = ""  # a Source value, or "" for checks that are not measurements (search)

    def message(self) -> str:
        """One line for a failed check."""
        if self.detail:
            return self.detail
        return (
            f"{self.name} {fmt_value(self.name, self.value)} exceeds "
            + fmt_value(self.name, self.limit)
            + (" (estimate)" if self.estimate else "")
        )

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "budget check") -> BudgetCheck:
        from edgec.manifest import ManifestError

        for key, kinds in (("name", (str,)), ("limit", (int, float)), ("value", (int, float))):
            if key not in d:
                raise ManifestError(f"{where}: field {key!r} missing")
            if isinstance(d[key], bool) or not isinstance(d[key], kinds):
                raise ManifestError(f"{where}: field {key!r} = {d[key]!r} has the wrong type")
        if not isinstance(d.get("ok"), bool):
            raise ManifestError(f"{where}: field 'ok' missing or not true/false")
        return cls(
            name=d["name"],
            limit=d["limit"],
            value=d["value"],
            ok=d["ok"],
            estimate=bool(d.get("estimate", False)),
            detail=str(d.get("detail", "")),
            source=str(d.get("source", "")),
        )


@dataclass(frozen=True, kw_only=True)
class BudgetReport:
    checks: tuple[BudgetCheck, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)  # figures not judged, and why

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def failures(self) -> list[str]:
        return [c.message() for c in self.checks if not c.ok]


def fmt_value(name: str, value: float) -> str:
    if "bytes" in name:
        return f"{int(value):,} B"
    if "accuracy" in name:
        return f"{100 * value:.2f} pt"
    if name.endswith("_ms"):
        return f"{value:g} ms"
    return f"{value:g}"


def flash_figure(
    *, model_bytes: int, runtime_code_bytes: int, runtime_code_estimated: bool
) -> Figure:
    """Flash of a microcontroller: the model plus TFLM's runtime and kernel code."""
    return Figure(
        value=model_bytes + runtime_code_bytes,
        source=Source.ESTIMATE if runtime_code_estimated else Source.ARTIFACT,
        estimate=runtime_code_estimated,
        what=f"model {model_bytes:,} + runtime and kernels {runtime_code_bytes:,}"
        + (" (edgec per-op table)" if runtime_code_estimated else " (profile)"),
    )


def check_budgets(
    budgets: Budgets, measured: Measurements, *, max_accuracy_drop: float | None = None
) -> BudgetReport:
    """Judge every figure that has a limit; ``max_accuracy_drop`` overrides the profile's."""
    limits: dict[Budget, float | None] = {
        Budget.MODEL_BYTES: budgets.model_bytes,
        Budget.FLASH_BYTES: budgets.flash_bytes,
        Budget.RAM_BYTES: budgets.ram_bytes,
        Budget.LATENCY_MS: budgets.latency_ms,
        Budget.MAX_ACCURACY_DROP: max_accuracy_drop
        if max_accuracy_drop is not None
        else budgets.max_accuracy_drop,
    }
    figures: dict[Budget, Figure | None] = {
        Budget.MODEL_BYTES: measured.model_bytes,
        Budget.FLASH_BYTES: measured.flash_bytes,
        Budget.RAM_BYTES: measured.ram_bytes,
        Budget.LATENCY_MS: measured.latency_ms,
        Budget.MAX_ACCURACY_DROP: measured.accuracy_drop,
    }
    checks: list[BudgetCheck] = []
    notes: list[str] = []
    for budget, limit in limits.items():
        fig = figures[budget]
        if limit is None or fig is None:
            continue
        if fig.source not in JUDGED_FROM[budget]:
            notes.append(
                f"{budget} not judged: {fmt_value(budget, fig.value)} was measured on the "
                f"{fig.source}, not the target"
            )
            continue
        # Accuracy figures are rounded to 6 places: allow that much on the bound.
        slack = 1e-9 if budget is Budget.MAX_ACCURACY_DROP else 0
        ok = fig.value <= limit + slack
        checks.append(
            BudgetCheck(
                name=str(budget),
                limit=limit,
                value=fig.value,
                ok=ok,
                estimate=fig.is_estimate,
                detail="" if ok else fig.detail,
                source=str(fig.source),
            )
        )
    return BudgetReport(checks=tuple(checks), notes=tuple(notes))


def fits(budgets: Budgets, measured: Measurements) -> bool:
    """Whether every size, RAM and latency budget is met (the search judges accuracy itself)."""
    no_accuracy = Measurements(
        model_bytes=measured.model_bytes,
        flash_bytes=measured.flash_bytes,
        ram_bytes=measured.ram_bytes,
        latency_ms=measured.latency_ms,
    )
    return check_budgets(budgets, no_accuracy).ok
