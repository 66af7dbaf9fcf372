"""What the search optimizes for a target: the objective, its figures and how they rank.

A profile names one ``Objective`` (key ``objective`` in ``targets/*.toml``;
``edgec build --objective`` overrides it for one build). Among the candidates
within the accuracy bound and the budgets the search keeps the best by the
objective's figures, compared in order:

* ``bytes``: the ``.tflite`` as it sits on the device (flash or disk), then the
  TFLM arena (RAM) measured by running the candidate in the real TFLM
  interpreter on the host (microcontrollers only: elsewhere there is no arena);
* ``latency``: the steady-state median invoke time *on this host* (LiteRT, the
  profile's thread count, the candidates timed side by side), then bytes. It is
  a host figure that ranks candidates, never a claim about the device;
* ``download``: gzip -9 bytes (what an app ships; pruned and clustered weights
  compress), then bytes.

The last figure of every key is the accuracy drop, so equal figures keep the
more accurate candidate. No TensorFlow here: profiles import this module.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Protocol


class Objective(StrEnum):
    BYTES = "bytes"
    LATENCY = "latency"
    DOWNLOAD = "download"


class Measured(Protocol):
    """What the key reads of a candidate's measurement (``edgec.search.Measurement``)."""

    bytes: int
    gzip_bytes: int
    host_latency_ms: float | None
    arena_bytes: int | None


# The measurement fields each objective compares, in order (the accuracy drop comes last).
FIGURES: dict[Objective, tuple[str, ...]] = {
    Objective.BYTES: ("bytes", "arena_bytes"),
    Objective.LATENCY: ("host_latency_ms", "bytes"),
    Objective.DOWNLOAD: ("gzip_bytes", "bytes"),
}

DESCRIPTIONS: dict[Objective, str] = {
    Objective.BYTES: "on-device bytes of the .tflite, then the TFLM arena (RAM)",
    Objective.LATENCY: "host latency (a host figure that ranks candidates, not the device's), "
    "then bytes",
    Objective.DOWNLOAD: "gzip -9 bytes (the download), then bytes",
}


def default_objective(micro: bool) -> Objective:
    """What a profile that names none pays for: flash and RAM on a microcontroller, else time."""
    return Objective.BYTES if micro else Objective.LATENCY


def needs_arena(objective: Objective, micro: bool) -> bool:
    """Whether each candidate must be run in TFLM for its arena (a child process each)."""
    return objective is Objective.BYTES and micro


def figures(objective: Objective, m: Measured) -> dict[str, Any]:
    """The objective's figures of one measurement, by name (None where not measured)."""
    return {name: getattr(m, name) for name in FIGURES[objective]}


def objective_key(objective: Objective, m: Measured, accuracy_drop: float) -> tuple[float, ...]:
    """Smaller is better; a figure not measured ranks last on that figure."""
    values = [getattr(m, name) for name in FIGURES[objective]]
    return (*(float("inf") if v is None else float(v) for v in values), accuracy_drop)
