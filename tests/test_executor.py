"""The executor seam: jobs are (fn, shared, job); a failing job is a row, not a crash."""

from __future__ import annotations

from edgec.executor import JobFailure, LocalExecutor, ordered


def _square(shared: int, job: int) -> int:
    if job < 0:
        raise ValueError(f"negative job {job}")
    return shared + job * job


def test_local_executor_runs_in_order_and_survives_a_failing_job():
    jobs = [1, -2, 3]
    results = ordered(LocalExecutor().map(_square, 10, jobs), len(jobs))
    assert results[0] == 11
    assert results[2] == 19
    assert isinstance(results[1], JobFailure)
    assert results[1].reason == "ValueError: negative job -2"
