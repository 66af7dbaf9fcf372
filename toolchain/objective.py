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
  a host figure that ranks candidates, never a claim about the device. Timed
  anew in every run, it is noisy: the search times the candidates side by side
  at ``RANKING_THREADS``, and those within ``LATENCY_MARGIN`` of the fastest are
  tied on it, so bytes decides among them and two runs choose alike;
* ``download``: gzip -9 bytes (what an app ships; pruned and clustered weights
  compress), then bytes.

The last figure of every key is the accuracy drop, so equal figures keep the
more accurate candidate. No TensorFlow here: profiles import this module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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

# Host latencies within this fraction of the fastest candidate's are tied: bytes decides
# among them. Measured by benchmarks/suite/scaleout.py ("latency_noise": the ratio of two
# candidates' side-by-side medians, repeated 8 times on this loaded 2-core host) at one
# LiteRT thread, the ratio moved by up to 3.6%, 4.1% and 18.5% in three runs: 25% covers
# them with room. At 4 threads (rpi4's) it moved by 88% to 1670%, the threads fighting
# other processes for two cores, so the search ranks at RANKING_THREADS.
LATENCY_MARGIN = 0.25
RANKING_THREADS = 1

DESCRIPTIONS: dict[Objective, str] = {
    Objective.BYTES: "on-device bytes of the .tflite, then the TFLM arena (RAM)",
    Objective.LATENCY: "host latency (a host figure that ranks candidates, not the device's; "
    f"within {LATENCY_MARGIN:.0%} of the fastest counts as tied, the run-to-run noise), "
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


def objective_key(
    objective: Objective, m: Measured, accuracy_drop: float, *, fastest_ms: float | None = None
) -> tuple[float, ...]:
    """Smaller is better; a figure not measured ranks last on that figure.

    ``fastest_ms``: the fastest host latency among the candidates ranked together; a
    latency within ``LATENCY_MARGIN`` of it counts as equal to it (see ``ranking``).
    """
    values = [getattr(m, name) for name in FIGURES[objective]]
    key = [float("inf") if v is None else float(v) for v in values]
    if objective is Objective.LATENCY and fastest_ms is not None:
        key[0] = fastest_ms if key[0] <= fastest_ms * (1.0 + LATENCY_MARGIN) else key[0]
    return (*key, accuracy_drop)


def ranking(
    objective: Objective, measured: Sequence[Measured]
) -> Callable[[Measured, float], tuple[float, ...]]:
    """The key that ranks ``measured`` together: latencies near the fastest are tied.

    A tie margin relative to the fastest, not fixed buckets: a grid would split two
    near-equal latencies whenever a bucket edge fell between them, in one run and not
    the next. Only a candidate near the edge of the margin itself can still rank
    differently between runs.
    """
    latencies = [m.host_latency_ms for m in measured if m.host_latency_ms is not None]
    fastest = min(latencies) if objective is Objective.LATENCY and latencies else None
    return lambda m, drop: objective_key(objective, m, drop, fastest_ms=fastest)
