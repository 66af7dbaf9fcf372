"""Batch builds: a TOML list of models x targets, each (model, target) one job, local or on Ray.

Real tiny Keras models (a digits MLP, and one with a SQUARE op, which has no int8 kernel:
rpi4 keeps it in float, cortex-m4 refuses it in a real conversion), the real converter,
LiteRT and TFLM. The local batch runs as a user runs it (``edgec batch``); the Ray batch
runs on the session's real head node on 127.0.0.1 (tests/raycluster.py), where one
worker is really SIGKILLed mid-job.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from raycluster import head_cluster  # sets Ray's loopback env first

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import ray
import ray.cloudpickle

from edgec.batch import BatchFailed, BuildJob, load_batch, run_batch, run_build_job
from edgec.data import demo_dataset
from edgec.errors import InputError, RecipeError, UsageError
from edgec.executor_ray import RayExecutor
from edgec.files import sha256_path

# The job function below travels to the workers by value (this module is not importable there).
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

EDGEC = str(Path(sys.executable).with_name("edgec"))

BATCH = """\
[defaults]
data = "d.npz"
targets = ["rpi4", "cortex-m4"]
epochs_scale = 0.3

[[build]]
model = "models/mlp.keras"
passes = ["prune:final_sparsity=0.5"]

[[build]]
model = "models/square.keras"
targets = ["cortex-m4"]
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """A batch folder: two tiny trained models, the digits as .npz, builds.toml."""
    from keras import ops

    root = tmp_path_factory.mktemp("batch")
    full = demo_dataset()
    x, y = full.x_train[:500], full.y_train[:500]
    np.savez(root / "d.npz", x_train=x, y_train=y, x_val=full.x_val, y_val=full.y_val)
    (root / "models").mkdir()
    for name, square in (("mlp", False), ("square", True)):
        keras.utils.set_random_seed(0)
        inp = keras.Input((8, 8, 1))
        h = keras.layers.Dense(16, activation="relu")(keras.layers.Flatten()(inp))
        if square:  # no int8 kernel: cortex-m4 (float_fallback = "refuse") fails to convert
            h = ops.square(h)
        model = keras.Model(inp, keras.layers.Dense(10, activation="softmax")(h), name=name)
        model.compile("adam", "sparse_categorical_crossentropy")
        model.fit(x, y, epochs=8, verbose=0)
        model.save(root / "models" / f"{name}.keras")
    (root / "builds.toml").write_text(BATCH)
    return root


def _edgec(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([EDGEC, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _write(root: Path, text: str) -> Path:
    path = root / "bad.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "error", "message"),
    [
        ("[[build]]\nmodel = 'nope.keras'\n", InputError, r"build 1: model .*nope.keras does not"),
        ("[[build]]\nmodel = 'models/mlp.keras'\ntarget = 'rpi4'\n", UsageError,
         r"build 1: unknown key 'target'; valid: model, data, targets,"),
        ("[[build]]\nmodel = 'models/mlp.keras'\ntargets = ['rpi9']\n", UsageError,
         r"build 1: unknown target 'rpi9'; valid targets: cortex-m4,"),
        ("[[build]]\nmodel = 'models/mlp.keras'\nseed = 'zero'\n", UsageError,
         r"build 1: seed = 'zero'; give an integer"),
        ("[[build]]\nmodel = 'models/mlp.keras'\npasses = ['prun:x=1']\n", RecipeError,
         "build 1: "),
        ("[defaults]\nsearch = true\n", UsageError, r"no builds; add \[\[build\]\] tables"),
        ("[[build]]\nmodel = 'models/mlp.keras'\n[[build]]\nmodel = 'models/mlp.keras'\n",
         UsageError, r"build 2: model 'mlp' for target 'rpi4' is also build 1; both would write"),
        ("[[build]]\nmodel = 'models/mlp.keras'\nobjective = 'bytes'\n", UsageError,
         r"build 1: objective = 'bytes' ranks the search's candidates"),
        ("[[build]\n", UsageError, r"bad.toml: not valid TOML: "),
    ],
)  # fmt: skip
def test_bad_batch_files_fail_in_one_line_before_any_work(files, text, error, message):
    with pytest.raises(error, match=message) as caught:
        load_batch(_write(files, text))
    assert "\n" not in str(caught.value)


def test_cli_bad_batch_file_is_one_line_and_writes_nothing(files):
    _write(files, "[[build]]\nmodel = 'models/mlp.keras'\nepochs_scale = 0\n")
    run = _edgec("batch", "bad.toml", "-o", "out-bad", cwd=files, timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "edgec: error: bad.toml: build 1: epochs_scale = 0; give a number > 0"
    ]
    assert not (files / "out-bad").exists()


@pytest.fixture(scope="module")
def local(files) -> dict:
    """``edgec batch builds.toml --json`` with the local executor, as a user runs it."""
    run = _edgec("batch", "builds.toml", "-o", "out-local", "--json", cwd=files)
    return {"run": run, "doc": json.loads(run.stdout)}


def test_cli_local_batch_writes_every_build_and_a_failing_one_is_a_row(files, local):
    run, doc = local["run"], local["doc"]
    rows = {(r["model"], r["target"]): r for r in doc["builds"]}
    assert list(rows) == [("mlp", "rpi4"), ("mlp", "cortex-m4"), ("square", "cortex-m4")]
    failed = rows[("square", "cortex-m4")]
    assert failed["ok"] is False and failed["directory"] is None and failed["exit_code"] == 4
    assert failed["message"].startswith(
        "build cortex-m4: stage 'convert' failed: the full-int8 artifact still computes in "
        "float in ops SQUARE"
    )
    assert not (files / "out-local" / "square" / "cortex-m4").exists()
    for key in [("mlp", "rpi4"), ("mlp", "cortex-m4")]:
        row = rows[key]
        folder = files / "out-local" / key[0] / key[1]
        assert row["ok"] and Path(row["directory"]) == Path("out-local") / key[0] / key[1]
        manifest = json.loads((folder / "manifest.json").read_text())
        # Written here as `edgec build` writes it: this machine's paths, the real sha256.
        assert manifest["model"]["source"] == f"models/{key[0]}.keras"
        assert manifest["data"]["sha256"] == sha256_path(files / "d.npz")
        assert manifest["artifacts"][0]["sha256"] == sha256_path(folder / "model.tflite")
        assert row["artifacts"][0]["sha256"] == manifest["artifacts"][0]["sha256"]
    mlp = json.loads((files / "out-local/mlp/rpi4/manifest.json").read_text())
    assert [p["id"] for p in mlp["passes"]] == ["prune"]  # the build's passes ran in its job
    assert (files / "out-local/mlp/cortex-m4/firmware").is_dir()  # written by the driver
    assert not list((files / "out-local").rglob("*.tmp"))
    # One JSON document; the failure's one line on stderr; the failed build's exit code.
    assert doc["ok"] is False and run.returncode == 4
    assert (
        run.stderr.strip()
        .splitlines()[-1]
        .startswith(
            "edgec: error: batch: 1 of 3 builds failed (square/cortex-m4); first: square/cortex-m4: "
            "build cortex-m4: stage 'convert' failed:"
        )
    )
    assert "batch 3/3: " in run.stderr and "Traceback" not in run.stderr


def _dies_for_x86(shared, job: BuildJob):
    """The real job, except that the x86-64 build's worker is SIGKILLed (a real death)."""
    if job.profile.name == "x86-64":
        os.kill(os.getpid(), signal.SIGKILL)
    return run_build_job(shared, job)


def test_ray_batch_equals_the_local_batch_and_a_dead_worker_is_one_row(
    pytestconfig, files, local, tmp_path
):
    address = head_cluster(pytestconfig)
    # The same builds, plus one for x86-64 whose worker is killed.
    text = BATCH + '\n[[build]]\nmodel = "models/mlp.keras"\ntargets = ["x86-64"]\n'
    spec = files / "builds-ray.toml"
    spec.write_text(text)
    lines: list[str] = []
    executor = RayExecutor(address)
    try:
        result = run_batch(
            load_batch(spec, out=tmp_path / "out-ray"),
            executor=executor,
            log=lines.append,
            job_fn=_dies_for_x86,
        )
    finally:
        executor.close()
    assert result.executor == "ray"
    rows = {(r.model, r.target): r for r in result.rows}
    dead = rows.pop(("mlp", "x86-64"))
    assert not dead.ok and dead.message == "worker died while running it (WorkerCrashedError)"
    assert dead.exit_code == 6 and not (tmp_path / "out-ray" / "mlp" / "x86-64").exists()
    want = {(r["model"], r["target"]): r for r in local["doc"]["builds"]}
    assert list(rows) == list(want)
    for key, row in rows.items():
        # Identical artifacts, byte for byte; the failure is the same row.
        got = [a["sha256"] for a in row.artifacts]
        assert got == [a["sha256"] for a in want[key]["artifacts"]], key
        assert (row.ok, row.exit_code, row.message) == (
            want[key]["ok"], want[key]["exit_code"], want[key]["message"],
        )  # fmt: skip
    assert (tmp_path / "out-ray/mlp/rpi4/model.tflite").read_bytes() == (
        files / "out-local/mlp/rpi4/model.tflite"
    ).read_bytes()
    assert any(line.startswith("batch 4/4: ") for line in lines)
    with pytest.raises(BatchFailed, match=r"batch: 2 of 4 builds failed") as caught:
        result.check()
    assert caught.value.exit_code == 4  # the first failed build's, in the file's order
