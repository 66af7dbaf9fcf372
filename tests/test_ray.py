"""The Ray executor against a real Ray cluster started on 127.0.0.1.

One cluster for the session (``ray start --head``, 2 CPUs, a small object store:
``tests/raycluster.py``, shared with ``test_batch.py``),
tiny models and few epochs: this machine has 2 cores. Workers are really
killed (SIGKILL of their own pid), Ctrl-C is a real SIGINT, and the missing
extra is Ray made unimportable in a child process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from raycluster import free_port, head_cluster, running_tasks  # sets Ray's loopback env first

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import ray
import ray.cloudpickle

from edgec.convert import ConvertOptions
from edgec.data import Dataset, demo_dataset
from edgec.executor import JobFailure, LocalExecutor, ordered
from edgec.executor_ray import RayExecutor
from edgec.passes.common import accuracy
from edgec.profiles import Quantization
from edgec.recipe import Step
from edgec.search import CandidateJob, Ladder, Rung, SearchShared, run_candidate, run_search

# The job functions below travel to the workers by value (this test module is not importable
# there); the search's own job, run_candidate, travels by reference as in production.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

EDGEC = str(Path(sys.executable).with_name("edgec"))


@pytest.fixture(autouse=True)
def ctrl_c_reaches_python():
    """Python's Ctrl-C handler, here and in the CLI children: a job a shell starts with ``&``
    inherits SIGINT ignored, and Python then never raises KeyboardInterrupt."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


@pytest.fixture(scope="module")
def cluster(pytestconfig):
    """The session's real head node with 2 CPUs on 127.0.0.1 (tests/raycluster.py)."""
    return head_cluster(pytestconfig)


@pytest.fixture(scope="module")
def digits() -> Dataset:
    full = demo_dataset()
    # A third of the digits keeps each candidate a few seconds on 2 shared cores.
    return Dataset(
        x_train=full.x_train[:600],
        y_train=full.y_train[:600],
        x_val=full.x_val,
        y_val=full.y_val,
        source="digits (600 training rows)",
    )


@pytest.fixture(scope="module")
def model(digits: Dataset):
    keras.utils.set_random_seed(0)
    m = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    m.compile("adam", "sparse_categorical_crossentropy")
    m.fit(digits.x_train, digits.y_train, epochs=15, verbose=0)
    return m


LADDER = Ladder(
    families=(
        # Low-rank's SVD is where thread counts once changed the bytes (see run_candidate).
        (
            Rung(
                label="lowrank 50%",
                steps=(Step(id="lowrank", params={"param_fraction": 0.5, "min_params": 1024}),),
            ),
        ),
        (
            Rung(label="prune 50%", steps=(Step(id="prune", params={"final_sparsity": 0.5}),)),
            Rung(label="prune 80%", steps=(Step(id="prune", params={"final_sparsity": 0.8}),)),
        ),
        (
            Rung(label="cluster k=16", steps=(Step(id="cluster", params={"k": 16}),)),
            Rung(label="cluster k=4", steps=(Step(id="cluster", params={"k": 4, "epochs": 0}),)),
        ),
    )
)


def _search(model, digits, executor, **kw):
    return run_search(
        model,
        digits,
        options=ConvertOptions(quantization=Quantization.INT8),
        calibration=digits.calibration(100),
        max_accuracy_drop=0.02,
        reference_accuracy=accuracy(model, digits.x_val, digits.y_val),
        epochs_scale=0.3,
        executor=executor,
        ladder=LADDER,
        **kw,
    )


def _measured(table):
    # Timings differ run to run; everything measured about the artifacts must not.
    timing = ("seconds", "host_latency_ms")
    return [
        {
            k: (
                {f: x for f, x in v.items() if f not in timing}
                if k == "objective_figures" and v
                else v
            )
            for k, v in r.items()
            if k not in timing
        }
        for r in table
    ]


def test_ray_search_tries_the_same_candidates_and_chooses_as_local(cluster, model, digits):
    local = _search(model, digits, LocalExecutor())
    executor = RayExecutor(cluster)
    try:
        assert executor.resources()["CPU"] == 2.0
        distributed = _search(model, digits, executor)
    finally:
        executor.close()
    assert distributed.executor == "ray"
    assert [r["label"] for r in distributed.table] == [r["label"] for r in local.table]
    assert distributed.chosen.label == local.chosen.label
    # Equal, not close: every job is seeded, so the accuracies and artifacts are the same.
    assert _measured(distributed.table) == _measured(local.table)
    assert distributed.content == local.content
    assert distributed.table[1]["label"] == "lowrank 50%" and distributed.table[1]["bytes"]
    assert ray.is_initialized()  # joining a cluster never shuts it down


def _dies_or_raises(shared: SearchShared, job: CandidateJob):
    """The real job, except that one candidate's worker is SIGKILLed mid-run and one raises."""
    if job.label == "cluster k=16":
        # A real death part-way into the candidate's work, from a timer inside the worker.
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGKILL)).start()
    if job.label == "prune 50%":
        raise RuntimeError("this candidate raised")
    return run_candidate(shared, job)


def test_a_killed_worker_or_a_raising_candidate_fails_that_candidate_only(cluster, model, digits):
    lines: list[str] = []
    executor = RayExecutor(cluster)
    try:
        result = _search(model, digits, executor, job_fn=_dies_or_raises, log=lines.append)
    finally:
        executor.close()
    rows = {r["label"]: r for r in result.table}
    assert rows["cluster k=16"]["error"] == "worker died while running it (WorkerCrashedError)"
    assert rows["prune 50%"]["error"] == "RuntimeError: this candidate raised"
    for label in ("cluster k=16", "prune 50%"):
        assert rows[label]["ok"] is False and rows[label]["bytes"] is None
    # Both families stopped at their failure; the search went on with the rest.
    assert list(rows)[:4] == ["plain", "lowrank 50%", "prune 50%", "cluster k=16"]
    assert rows["plain"]["bytes"] > 0 and rows["lowrank 50%"]["bytes"] > 0
    assert result.chosen.label in ("plain", "lowrank 50%")
    assert any("cluster k=16: failed: worker died" in line for line in lines)
    # The cluster lived on: a new search still runs there.
    again = RayExecutor(cluster)
    try:
        assert ordered(again.map(_square, 3, [1, 2]), 2) == [4, 7]
    finally:
        again.close()


def _square(shared: int, job: int) -> int:
    return shared + job * job


def _sleep(shared: float, job: int) -> int:
    time.sleep(shared)
    return job


def test_ctrl_c_cancels_the_outstanding_tasks(cluster):
    executor = RayExecutor(cluster)
    running: list[str] = []
    stop = threading.Event()

    def interrupt_once_running() -> None:
        # Ctrl-C once the tasks are seen on this cluster's workers (which also shows that
        # running_tasks finds them, so the check below is not vacuous).
        while not stop.is_set() and not running:
            running.extend(running_tasks("_call"))
            time.sleep(0.2)
        if running:
            os.kill(os.getpid(), signal.SIGINT)

    watcher = threading.Thread(target=interrupt_once_running, daemon=True)
    got = []
    try:
        watcher.start()
        with pytest.raises(KeyboardInterrupt):
            for i, outcome in executor.map(_sleep, 60.0, list(range(4))):
                got.append((i, outcome))
    finally:
        stop.set()
        executor.close()
    assert got == [] and running
    deadline = time.monotonic() + 30
    while running_tasks("_call") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert running_tasks("_call") == []  # force-cancelled, not left sleeping for a minute


@pytest.fixture(scope="module")
def files(tmp_path_factory, model, digits):
    root = tmp_path_factory.mktemp("ray-cli")
    model.save(root / "m.keras")
    np.savez(
        root / "d.npz",
        x_train=digits.x_train,
        y_train=digits.y_train,
        x_val=digits.x_val,
        y_val=digits.y_val,
    )
    return root


def _edgec(*args: str, cwd: Path, timeout: float = 1200) -> subprocess.CompletedProcess:
    return subprocess.run([EDGEC, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_cli_search_with_executor_ray_prints_the_same_choice_as_local(cluster, files):
    # rpi4's own objective, host latency, timed anew in each run: latencies within the
    # objective's noise margin of the fastest tie and bytes decides, so the choice repeats.
    # The default ladder at a quarter of its epochs: every family, a third of the time.
    common = ["build", "m.keras", "-t", "rpi4", "-d", "d.npz", "--search", "--json"]
    common += ["--epochs-scale", "0.25"]
    local = _edgec(*common, "-o", "out-local", "--executor", "local", cwd=files)
    distributed = _edgec(
        *common, "-o", "out-ray", "--executor", "ray", "--ray-address", cluster, cwd=files
    )
    assert local.returncode == 0, local.stderr[-2000:]
    assert distributed.returncode == 0, distributed.stderr[-2000:]
    manifests = [
        json.loads((files / out / "m" / "rpi4" / "manifest.json").read_text())
        for out in ("out-local", "out-ray")
    ]
    chosen = [m["search"]["chosen"] for m in manifests]
    assert chosen[0] == chosen[1]
    assert f"search chose {chosen[0]!r}" in local.stderr
    assert f"search chose {chosen[0]!r}" in distributed.stderr
    assert _measured(manifests[0]["search"]["candidates"]) == _measured(
        manifests[1]["search"]["candidates"]
    )
    assert manifests[0]["artifacts"][0]["sha256"] == manifests[1]["artifacts"][0]["sha256"]
    assert "search 1/" in distributed.stderr and "best so far" in distributed.stderr
    assert "Traceback" not in distributed.stderr
    assert "WARNING:tensorflow" not in local.stderr  # TensorFlow's logger is for its programmers


def test_cli_ctrl_c_during_a_ray_search_writes_nothing(cluster, files):
    args = ["build", "m.keras", "-t", "rpi4", "-d", "d.npz", "--search", "-o", "out-int"]
    proc = subprocess.Popen(
        [EDGEC, *args, "--executor", "ray", "--ray-address", cluster],
        cwd=files,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:  # wait until candidates are out on the cluster
        seen.append(line)
        if "search 1/" in line:
            break
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, "".join(seen) + rest
    assert "edgec: interrupted" in rest and "Traceback" not in rest
    assert not (files / "out-int" / "m" / "rpi4").exists()
    deadline = time.monotonic() + 30
    while running_tasks("_call") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert running_tasks("_call") == []


@pytest.mark.parametrize(
    "command",
    [("build", "m.keras", "-d", "d.npz", "--search"), ("batch", "builds.toml")],
    ids=["build", "batch"],
)
def test_an_unreachable_address_is_one_line_and_exit_6(files, command):
    (files / "builds.toml").write_text('[[build]]\nmodel = "m.keras"\ndata = "d.npz"\n')
    port = free_port()  # nothing listens there
    run = _edgec(
        *command, "--executor", "ray", "--ray-address", f"127.0.0.1:{port}",
        cwd=files, timeout=120,
    )  # fmt: skip
    assert run.returncode == 6
    assert run.stderr.strip().splitlines() == [
        f"edgec: error: cannot reach the Ray cluster at 127.0.0.1:{port}: Connection refused; "
        "check the address (`ray status` on the head node) or drop --ray-address to start a "
        "local cluster"
    ]


def test_without_the_extra_executor_ray_says_how_to_install_it(tmp_path):
    # Ray made unimportable in a child process: the package is absent, nothing is mocked.
    code = (
        "import sys; sys.modules['ray'] = None; from edgec.cli import main; "
        "sys.argv = ['edgec', 'build', 'm.keras', '--search', '--executor', 'ray']; main()"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "edgec: error: --executor ray needs Ray, which is not installed; "
        "install it with: pip install 'edgec[distributed]'"
    ]


def test_local_and_ray_failures_read_the_same(cluster):
    executor = RayExecutor(cluster)
    try:
        remote = ordered(executor.map(_square_or_raise, 1, [2, -1]), 2)
    finally:
        executor.close()
    local = ordered(LocalExecutor().map(_square_or_raise, 1, [2, -1]), 2)
    assert remote == local == [5, JobFailure(reason="ValueError: negative -1")]


def _square_or_raise(shared: int, job: int) -> int:
    if job < 0:
        raise ValueError(f"negative {job}")
    return shared + job * job
