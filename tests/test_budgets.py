"""edgec.budgets: one model for every budget check, from typed figures with their sources."""

from __future__ import annotations

import pytest

from edgec.budgets import (
    BudgetCheck,
    Figure,
    Measurements,
    Source,
    check_budgets,
    fits,
    flash_figure,
)
from edgec.profiles import Budgets

pytestmark = pytest.mark.unit


def test_every_budget_is_checked_against_its_figure() -> None:
    budgets = Budgets(
        model_bytes=1000, flash_bytes=5000, ram_bytes=800, latency_ms=2.0, max_accuracy_drop=0.01
    )
    report = check_budgets(
        budgets,
        Measurements(
            model_bytes=Figure(value=900, source=Source.ARTIFACT),
            flash_bytes=flash_figure(
                model_bytes=900, runtime_code_bytes=4500, runtime_code_estimated=True
            ),
            ram_bytes=Figure(value=700, source=Source.EMULATOR),
            latency_ms=Figure(value=2.5, source=Source.DEVICE),
            accuracy_drop=Figure(value=0.005, source=Source.HOST),
        ),
    )
    by_name = {c.name: c for c in report.checks}
    assert set(by_name) == {
        "model_bytes",
        "flash_bytes",
        "ram_bytes",
        "latency_ms",
        "max_accuracy_drop",
    }
    # flash is model + runtime code: 5,400 > 5,000, and an estimate because the code is.
    assert not by_name["flash_bytes"].ok and by_name["flash_bytes"].value == 5400
    assert by_name["flash_bytes"].estimate and by_name["flash_bytes"].source == "estimate"
    assert not by_name["latency_ms"].ok and by_name["latency_ms"].source == "device"
    assert by_name["model_bytes"].ok and by_name["ram_bytes"].ok and by_name["max_accuracy_drop"].ok
    assert not report.ok
    assert report.failures() == [
        "flash_bytes 5,400 B exceeds 5,000 B (estimate)",
        "latency_ms 2.5 ms exceeds 2 ms",
    ]


def test_latency_and_ram_are_not_judged_off_the_target() -> None:
    budgets = Budgets(ram_bytes=100, latency_ms=1.0)
    report = check_budgets(
        budgets,
        Measurements(
            ram_bytes=Figure(value=10_000, source=Source.HOST),
            latency_ms=Figure(value=50.0, source=Source.EMULATOR),
        ),
    )
    assert report.checks == () and report.ok
    assert len(report.notes) == 2 and all("not judged" in n for n in report.notes)
    assert "measured on the host" in report.notes[0]


def test_unset_limits_and_missing_figures_are_not_checks() -> None:
    report = check_budgets(
        Budgets(model_bytes=None, max_accuracy_drop=0.01),
        Measurements(model_bytes=Figure(value=10**9, source=Source.ARTIFACT)),
    )
    assert report.checks == ()


def test_the_request_bound_overrides_the_profile_and_the_rounding_is_allowed() -> None:
    drop = Measurements(accuracy_drop=Figure(value=0.0100000001, source=Source.HOST))
    assert check_budgets(Budgets(max_accuracy_drop=0.01), drop).ok
    tighter = check_budgets(Budgets(max_accuracy_drop=0.5), drop, max_accuracy_drop=0.001)
    assert not tighter.ok and tighter.checks[0].limit == 0.001


def test_fits_ignores_accuracy_but_not_flash() -> None:
    b = Budgets(flash_bytes=1000, max_accuracy_drop=0.0)
    model_only = Measurements(
        model_bytes=Figure(value=600, source=Source.ARTIFACT),
        accuracy_drop=Figure(value=0.5, source=Source.HOST),
    )
    assert fits(b, model_only)
    real_flash = Measurements(
        flash_bytes=flash_figure(
            model_bytes=600, runtime_code_bytes=500, runtime_code_estimated=False
        )
    )
    assert not fits(b, real_flash)


def test_a_check_round_trips_and_a_bad_one_names_the_field() -> None:
    from edgec.manifest import ManifestError

    c = BudgetCheck(name="ram_bytes", limit=10, value=11, ok=False, source="device")
    assert BudgetCheck.from_dict(c.to_dict()) == c
    with pytest.raises(ManifestError, match="'limit'"):
        BudgetCheck.from_dict({"name": "x", "value": 1, "ok": True})
