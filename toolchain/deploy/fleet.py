"""``edgec bench``: one device or a group of them, and the side-by-side table.

A group fans out with bounded concurrency (``--jobs``); one failing device
does not stop the others. Progress lines are labelled per device; the results
are compared in one table, and the exit says what went wrong first (a device
failed: 6, outputs differ from the reference: 7, a budget was exceeded: 5).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from edgec import agreement
from edgec.deploy import RUNTIMES
from edgec.deploy.bench import Outcome, bench_one
from edgec.deploy.devices import resolve_device, resolve_group
from edgec.deploy.options import Artifact, BenchOptions, Log, locate_artifact, quiet
from edgec.deploy.publish import upload_bar
from edgec.errors import BudgetError, DeviceError, EdgecError, UsageError
from edgec.signing import require_signed


def summary_rows(outcomes: list[Outcome]) -> list[list[str]]:
    """The side-by-side comparison: one row per device."""
    rows = [
        [
            "device",
            "status",
            "measured on",
            "runtime",
            "threads",
            "runs",
            "p50 ms",
            "p90 ms",
            "mean ms",
            "init ms",
            "peak RSS MB",
            "outputs",
            "budgets",
        ]
    ]
    for o in outcomes:
        if o.result is None:
            rows.append([o.device.name, "FAILED", *["-"] * 10, str(o.error)])
            continue
        r = o.result
        s, b, m = r.steady, r.budgets, r.measured
        peak = r.memory.peak_rss_bytes
        btxt = (
            "ok"
            if b.ok
            else "EXCEEDED: "
            + ", ".join(f"{c.name} {c.value:.4g} > {c.limit:.4g}" for c in b.checks if not c.ok)
        )
        oc = r.outputs_check
        otxt = "-"
        if oc:
            steps = f" {oc['max_steps']} step(s)" if oc.get("max_steps") is not None else ""
            otxt = ("ok" if oc["ok"] else "MISMATCH") + steps
        where = (m.arch or "?") + (" host TFLM" if m.where == "host" else "")
        where += f" emulated ({m.emulated})" if m.emulated else ""
        where += f" MISMATCH (profile: {m.profile_arch})" if m.arch_mismatch else ""
        rows.append(
            [
                o.device.name,
                "ok",
                where,
                f"{r.runtime} {r.runtime_version}",
                str(r.threads),
                str(s.count),
                f"{s.p50_ms or 0:.3f}",
                f"{s.p90_ms or 0:.3f}",
                f"{s.mean_ms or 0:.3f}",
                f"{r.init_ms or 0:.1f}",
                f"{peak / 2**20:.1f}" if peak else "-",
                otxt,
                btxt if b.checks else "not judged" if b.notes else "-",
            ]
        )
    return rows


def format_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows if i < len(r)) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        cells = [c.ljust(widths[i]) if i < len(r) - 1 else c for i, c in enumerate(r)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def run_fleet(
    artifact_path: Path,
    *,
    device: str | None = None,
    group: str | None = None,
    devices_file: Path | None = None,
    options: BenchOptions | None = None,
    allowed_signers: Path | None = None,
    log: Log = quiet,
) -> list[Outcome]:
    """Benchmark on one device or a group; every device's result or failure, never raises
    for a device (only for bad options, a bad artifact or an unknown device or group)."""
    options = options or BenchOptions()
    if options.runs < 1 or options.warmup < 0 or options.timeout <= 0 or options.jobs < 1:
        raise UsageError("--runs and --jobs must be >= 1, --warmup >= 0, --timeout > 0")
    if options.threads is not None and options.threads < 1:
        raise UsageError("--threads must be >= 1")
    if options.runtime not in RUNTIMES:
        raise UsageError(f"--runtime {options.runtime!r}: valid: {', '.join(RUNTIMES)}")
    if options.inputs is not None and not Path(options.inputs).is_file():
        raise UsageError(f"--inputs {options.inputs}: no such .npy/.npz file")
    if device and group:
        raise UsageError("give --device or --group, not both")
    require_signed(artifact_path, allowed_signers)
    artifact = locate_artifact(artifact_path)
    devices = (
        resolve_group(group, devices_file)
        if group
        else [resolve_device(device or "local", devices_file)]
    )

    lock = threading.Lock()

    def logger(name: str) -> Log:
        def emit(line: str) -> None:
            with lock:
                log(f"[{name}] {line}" if len(devices) > 1 else line)

        return emit

    if len(devices) == 1:
        with upload_bar(artifact.model) as progress:
            outcomes = [
                bench_one(
                    artifact, devices[0], options, log=logger(devices[0].name), progress=progress
                )
            ]
    else:
        with ThreadPoolExecutor(max_workers=min(options.jobs, len(devices))) as pool:
            futures = [
                pool.submit(bench_one, artifact, d, options, log=logger(d.name)) for d in devices
            ]
            outcomes = [f.result() for f in futures]

    if any(o.ok for o in outcomes) and options.save and artifact.manifest is not None:
        refresh_report(artifact, log)
    for o in outcomes:
        if o.path is not None:
            log(f"stored {o.path}")
    return outcomes


def verdict(outcomes: list[Outcome]) -> EdgecError | None:
    """What the run as a whole failed of: a device (6), then outputs beyond the
    tolerance (7), then a budget (5); or None."""
    failed = [o for o in outcomes if not o.ok]
    if len(outcomes) == 1 and failed:
        return failed[0].error
    if failed:
        names = ", ".join(o.device.name for o in failed)
        stored = "none was stored" if len(failed) == len(outcomes) else "the others' were stored"
        return DeviceError(
            f"{len(failed)} of {len(outcomes)} devices failed ({names}); results: {stored}; "
            f"first error: {failed[0].error}"
        )
    mismatched = [o for o in outcomes if not o.outputs_ok]
    if mismatched:
        check = mismatched[0].result.outputs_check  # type: ignore[union-attr]
        return agreement.mismatch_error(check, f"device {mismatched[0].device.name}")  # type: ignore[arg-type]
    over = [o for o in outcomes if not o.budgets_ok]
    if over:
        first = over[0].result.budgets  # type: ignore[union-attr]
        bad = next(c for c in first.checks if not c.ok)
        return BudgetError(
            f"device {over[0].device.name}: {bad.name} budget of profile {first.profile!r} "
            f"exceeded: measured {bad.value:.4g}, limit {bad.limit:.4g}"
            + (f" ({len(over)} devices over budget)" if len(over) > 1 else "")
        )
    return None


def fleet_json(outcomes: list[Outcome], error: EdgecError | None) -> dict[str, Any]:
    """``bench --json``: one document, each device's result or failure, and the verdict
    in the same envelope as every other command (``ok``, ``error``, ``exit_code``)."""
    doc: dict[str, Any] = {"ok": error is None, "devices": [o.to_dict() for o in outcomes]}
    if error is not None:
        doc["error"], doc["exit_code"] = str(error), int(error.exit_code)
    return doc


def bench(
    artifact_path: Path,
    *,
    device: str | None = None,
    group: str | None = None,
    devices_file: Path | None = None,
    options: BenchOptions | None = None,
    allowed_signers: Path | None = None,
    log: Log = quiet,
    out: Log = quiet,
) -> list[Outcome]:
    """``edgec bench``: one device or a group; ``out`` gets the side-by-side table.

    Progress goes to ``log``. Raises (after the table) DeviceError when a device
    failed, else BudgetError when a budget was exceeded.
    """
    outcomes = run_fleet(
        artifact_path,
        device=device,
        group=group,
        devices_file=devices_file,
        options=options,
        allowed_signers=allowed_signers,
        log=log,
    )
    error = verdict(outcomes)
    if len(outcomes) == 1 and outcomes[0].error is not None:
        raise outcomes[0].error
    out(format_table(summary_rows(outcomes)))
    if error is not None:
        raise error
    return outcomes


def refresh_report(artifact: Artifact, log: Log) -> None:
    """Re-render the artifact's report so it shows the new latency and memory."""
    try:
        from edgec.report import render_reports

        render_reports(artifact.folder)
    except EdgecError as exc:
        log(f"report not updated: {exc}")
