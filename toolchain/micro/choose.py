"""The smallest artifact that fits: converter choices for TFLM, measured side by side.

``micro_candidates`` converts the model in the ways that matter on TFLM (per-channel
against per-tensor fully connected weights); ``choose_smallest`` measures every
candidate with ``fit_report`` and keeps the smallest that still agrees and, if any
can, fits.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgec.errors import BudgetError, ConversionError
from edgec.micro.report import MicroReport, fit_report
from edgec.profiles import Profile


@dataclass(frozen=True, kw_only=True)
class Candidate:
    """One converter choice, measured: the rows of the comparison table."""

    label: str
    model_bytes: int
    arena_required: int
    flash_bytes: int
    ram_bytes: int
    fits: bool
    tflm_matches_litert: bool
    top1_vs_reference: float | None
    max_abs_diff_vs_reference: float
    agrees: bool
    kept: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True, kw_only=True)
class Choice:
    label: str
    content: bytes
    report: MicroReport
    table: tuple[Candidate, ...]
    reference: str  # what the outputs were compared against

    def to_dict(self) -> dict[str, Any]:
        """For the manifest's ``micro.choice`` key."""
        return {
            "kept": self.label,
            "reference": self.reference,
            "candidates": [c.to_dict() for c in self.table],
        }

    def format_text(self) -> str:
        lines = [f"converter choices (outputs compared with {self.reference}):"]
        for c in self.table:
            t1 = "n/a" if c.top1_vs_reference is None else f"{c.top1_vs_reference:.2%}"
            lines.append(
                f"  {'*' if c.kept else ' '} {c.label:<18} {c.model_bytes:>9,} B  arena "
                f"{c.arena_required:>8,} B  top-1 {t1:>7}  "
                f"max diff {c.max_abs_diff_vs_reference:.3g}"
                f"{'' if c.agrees else '  (disagrees)'}{'' if c.fits else '  (over budget)'}"
            )
        return "\n".join(lines)


def micro_candidates(
    source: Any, profile: Profile, calibration: np.ndarray, **extra: Any
) -> dict[str, bytes]:
    """Conversions of ``source`` in the profile's scheme that differ only in dense weight scales.

    Per-tensor scales store one float per dense layer instead of one per output
    unit; on TFLM that means smaller flatbuffers and smaller persistent op data.
    ``extra`` goes to ``ConvertOptions`` (e.g. the int4 layers of mixed-int4).
    """
    from edgec.convert import ConvertOptions, convert

    out: dict[str, bytes] = {}
    for label, per_channel in (("per-channel dense", True), ("per-tensor dense", False)):
        opts = ConvertOptions(
            quantization=profile.quantization,
            input_dtype=profile.input_dtype,
            output_dtype=profile.output_dtype,
            per_channel_dense=per_channel,
            float_fallback=profile.float_fallback,
            **extra,
        )
        content = convert(source, opts, calibration)
        if content not in out.values():  # a model without dense layers converts the same way
            out[label] = content
    return out


def choose_smallest(
    candidates: Mapping[str, bytes],
    profile: Profile,
    inputs: np.ndarray,
    *,
    reference_outputs: np.ndarray | None = None,
    max_agreement_loss: float = 0.01,
    trusted: bool = True,
    report: Callable[..., MicroReport] | None = None,
    firmware_elf: str | Path | None = None,
) -> Choice:
    """Measure every candidate and keep the smallest that still agrees and, if any can, fits.

    Outputs are compared (LiteRT, float space) with ``reference_outputs`` (e.g. the
    float model's) or else with the first candidate's. A candidate agrees if its
    top-1 agreement is within ``max_agreement_loss`` of the first candidate's and
    TFLM matches LiteRT on it. Among those, one that fits the budgets wins over one
    that does not; then fewer model bytes, then a smaller arena. With ``firmware_elf``
    every candidate's flash and static RAM are measured from that linked firmware.
    """
    from edgec.runtime import TFLiteModel

    if not candidates:
        raise ConversionError("no candidate artifacts to choose from")
    make = report or fit_report
    x = np.asarray(inputs, dtype=np.float32)
    reports: dict[str, MicroReport] = {}
    too_big: dict[str, BudgetError] = {}
    for k in candidates:
        try:
            extra = {} if firmware_elf is None else {"firmware_elf": firmware_elf}
            where = f"{profile.name} {profile.quantization} artifact ({k})"  # names the candidate
            reports[k] = make(candidates[k], profile, x, where=where, trusted=trusted, **extra)
        except BudgetError as exc:  # over a lower bound: TFLM never ran it
            too_big[k] = exc
    if not reports:
        raise too_big[min(too_big, key=lambda k: len(candidates[k]))]
    labels = list(reports)  # a candidate that cannot fit at all is not a choice
    preds = {k: TFLiteModel(candidates[k]).predict(x) for k in labels}
    ref = reference_outputs if reference_outputs is not None else preds[labels[0]]
    ref_name = "the given reference outputs" if reference_outputs is not None else labels[0]

    def top1(p: np.ndarray) -> float | None:
        if p.ndim < 2 or p.shape[-1] < 2:
            return None
        a, b = p.reshape(len(p), -1), np.asarray(ref).reshape(len(ref), -1)
        return float(np.mean(a.argmax(-1) == b.argmax(-1)))

    base = top1(preds[labels[0]])
    rows = []
    for k in labels:
        r, t1 = reports[k], top1(preds[k])
        diff = float(np.max(np.abs(preds[k].astype(np.float64) - np.asarray(ref, np.float64))))
        agrees = (r.agreement is None or r.agreement.ok) and (
            t1 is None or base is None or t1 >= base - max_agreement_loss
        )
        rows.append(
            Candidate(
                label=k,
                model_bytes=r.model_bytes,
                arena_required=r.arena_required,
                flash_bytes=r.flash_bytes,
                ram_bytes=r.ram_bytes,
                fits=all(c.ok for c in r.checks),
                tflm_matches_litert=r.agreement is None or r.agreement.ok,
                top1_vs_reference=t1,
                max_abs_diff_vs_reference=diff,
                agrees=agrees,
            )
        )
    pool = [c for c in rows if c.agrees] or rows[:1]  # nothing agrees: keep the reference
    best = min(pool, key=lambda c: (not c.fits, c.model_bytes, c.arena_required))
    table = tuple(Candidate(**{**c.__dict__, "kept": c.label == best.label}) for c in rows)
    return Choice(
        label=best.label,
        content=candidates[best.label],
        report=reports[best.label],
        table=table,
        reference=ref_name,
    )
