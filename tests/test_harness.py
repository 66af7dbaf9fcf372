"""The on-device harness, run as the device runs it: a lone file in a child process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

HARNESS_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "harness"
FORBIDDEN = ("edgec", "click", "tensorflow", "keras")


def _convert(model) -> bytes:
    import tensorflow as tf

    return tf.lite.TFLiteConverter.from_keras_model(model).convert()


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    )
    path = tmp_path_factory.mktemp("harness-model") / "model.tflite"
    path.write_bytes(_convert(model))
    return path


@pytest.fixture(scope="module")
def lone_harness(tmp_path_factory) -> Path:
    """harness.py copied alone into an empty folder, as deploy puts it on a device."""
    folder = tmp_path_factory.mktemp("device")
    shutil.copy(HARNESS_DIR / "harness.py", folder / "harness.py")
    return folder / "harness.py"


def run_harness(harness: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, str(harness), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=harness.parent,
        env=env,
    )


def doc_of(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_report_has_every_field_of_the_method(lone_harness, model_file):
    proc = run_harness(lone_harness, str(model_file), "--runs", "25", "--warmup-runs", "3")
    doc = doc_of(proc)
    assert doc["schema"] == "edgec.harness/2"
    assert doc["runtime"]["name"] == "litert" and doc["runtime"]["version"][0].isdigit()
    assert doc["threads"] == 1
    assert doc["init_ms"] > 0 and doc["first_inference_ms"] > 0
    assert doc["warmup"]["count"] == 3 and doc["warmup"]["mean_ms"] > 0
    s = doc["steady"]
    assert s["count"] == 25 and len(s["samples_ms"]) == 25
    assert s["min_ms"] <= s["p50_ms"] <= s["p90_ms"] <= s["p99_ms"] <= s["max_ms"]
    assert s["min_ms"] <= s["mean_ms"] <= s["max_ms"] and s["std_ms"] >= 0
    assert s["p50_ms"] == pytest.approx(float(np.median(s["samples_ms"])), rel=1e-3)
    m = doc["memory"]
    assert 0 < m["rss_before_load_bytes"] <= m["peak_rss_bytes"]
    assert m["rss_after_load_bytes"] <= m["peak_rss_bytes"] and m["peak_source"] == "VmHWM"
    assert doc["model"]["bytes"] == model_file.stat().st_size
    assert len(doc["output_checksum"]["sha256"]) == 64
    assert doc["platform"]["cpu_count"] == os.cpu_count()
    assert doc["platform"]["python"] == ".".join(map(str, sys.version_info[:3]))
    # LiteRT's Python API has no op profiler: said plainly, not faked.
    assert (
        doc["op_profile"]["available"] is False
        and "no per-op timings" in doc["op_profile"]["reason"]
    )
    assert sum(doc["op_profile"]["execution_plan_ops"].values()) >= 1
    assert "edgec-harness: pid" in proc.stderr and "edgec-harness: done" in proc.stderr
    # What measured it: this machine, as uname and /proc see it.
    machine = doc["machine"]
    assert machine["arch"] == os.uname().machine and machine["cores"] == os.cpu_count()
    assert machine["kernel"] == os.uname().release and machine["cpu_model"]
    assert machine["emulated"] is None
    assert doc["runtime_candidates"] == [
        {"name": "litert", "status": "ok", "version": doc["runtime"]["version"], "detail": ""}
    ]


def test_never_imports_edgec_click_or_tensorflow(lone_harness, model_file):
    probe = (
        "import runpy, sys, json\n"
        f"sys.argv = ['harness.py', {str(model_file)!r}, '--runs', '3', '--quiet']\n"
        "try:\n    runpy.run_path('harness.py', run_name='__main__')\n"
        "except SystemExit as e:\n    assert not e.code, e.code\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "print('FORBIDDEN', json.dumps(bad), file=sys.stderr)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", probe],
        capture_output=True,
        text=True,
        cwd=lone_harness.parent,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(ln for ln in proc.stderr.splitlines() if ln.startswith("FORBIDDEN"))
    assert json.loads(line.split(" ", 1)[1]) == []
    imported = [
        ln.rsplit("|", 1)[-1].strip()
        for ln in proc.stderr.splitlines()
        if ln.startswith("import time:")
    ]
    assert "ai_edge_litert.interpreter" in imported  # the check does see real imports
    assert not [m for m in imported if m.split(".")[0] in FORBIDDEN]


def test_seeded_inputs_are_reproducible_and_files_work(lone_harness, model_file, tmp_path):
    a = doc_of(run_harness(lone_harness, str(model_file), "--runs", "2", "--seed", "7"))
    b = doc_of(run_harness(lone_harness, str(model_file), "--runs", "2", "--seed", "7"))
    c = doc_of(run_harness(lone_harness, str(model_file), "--runs", "2", "--seed", "8"))
    assert a["output_checksum"] == b["output_checksum"] != c["output_checksum"]

    x = np.random.default_rng(3).uniform(-1, 1, (1, 8, 8, 1)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "x.npz", x[0])  # without the batch axis, by position
    d = doc_of(
        run_harness(
            lone_harness, str(model_file), "--runs", "2", "--input", str(tmp_path / "x.npy")
        )
    )
    e = doc_of(
        run_harness(
            lone_harness, str(model_file), "--runs", "2", "--input", str(tmp_path / "x.npz")
        )
    )
    assert d["output_checksum"] == e["output_checksum"] != a["output_checksum"]
    assert d["params"]["input"].endswith("x.npy")

    np.save(tmp_path / "bad.npy", np.zeros((3, 3), np.float32))
    bad = run_harness(lone_harness, str(model_file), "--input", str(tmp_path / "bad.npy"))
    assert bad.returncode == 2 and bad.stdout == ""
    assert "shape [3, 3], the model wants [1, 8, 8, 1]" in bad.stderr


def test_min_and_max_secs_bound_the_steady_state(lone_harness, model_file):
    longer = doc_of(run_harness(lone_harness, str(model_file), "--runs", "1", "--min-secs", "0.3"))
    assert longer["steady"]["count"] > 1
    assert sum(longer["steady"]["samples_ms"]) > 0.2 * 1000 * 0.3  # ran for ~0.3 s of invokes
    capped = doc_of(
        run_harness(lone_harness, str(model_file), "--runs", "100000000", "--max-secs", "0.3")
    )
    assert 1 <= capped["steady"]["count"] < 100000000


def test_tflm_runtime_and_missing_runtime(lone_harness, model_file):
    micro = doc_of(run_harness(lone_harness, str(model_file), "--runtime", "tflm", "--runs", "5"))
    assert micro["runtime"]["name"] == "tflm" and micro["threads"] == 1
    lite = doc_of(run_harness(lone_harness, str(model_file), "--runs", "2"))
    # The same seeded input through two interpreters: the same float model, close outputs.
    assert micro["output_checksum"]["sum"] == pytest.approx(
        lite["output_checksum"]["sum"], abs=1e-3
    )
    missing = run_harness(lone_harness, str(model_file), "--runtime", "tflite_runtime")
    assert missing.returncode == 4 and "pip install ai-edge-litert" in missing.stderr


def test_corrupt_model_fails_cleanly(lone_harness, tmp_path):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\x18\x00\x00\x00TFL3" + b"\x00" * 64)
    proc = run_harness(lone_harness, str(bad))
    assert proc.returncode != 0 and proc.stdout == ""
    nope = run_harness(lone_harness, str(tmp_path / "missing.tflite"))
    assert nope.returncode == 2 and "does not exist" in nope.stderr


def test_watchdog_kills_a_hung_run(lone_harness, model_file):
    start = time.monotonic()
    proc = run_harness(
        lone_harness,
        str(model_file),
        "--runs",
        "1",
        "--min-secs",
        "60",
        "--timeout",
        "1",
        timeout=30,
    )
    assert proc.returncode == -14  # SIGALRM, default action: the process is gone
    assert time.monotonic() - start < 15 and proc.stdout == ""


def test_runs_as_module_and_as_zip(model_file, tmp_path):
    as_module = subprocess.run(
        [sys.executable, "-m", "edgec.harness", str(model_file), "--runs", "2", "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert json.loads(doc_of(as_module)["steady"]["count"].__str__()) == 2
    archive = tmp_path / "harness.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(HARNESS_DIR / "harness.py", "harness.py")
        zf.write(HARNESS_DIR / "__main__.py", "__main__.py")
    as_zip = subprocess.run(
        [sys.executable, str(archive), str(model_file), "--runs", "3"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert doc_of(as_zip)["steady"]["count"] == 3


def crashing_runtime(folder: Path) -> Path:
    """An ``ai_edge_litert`` package whose Interpreter dereferences NULL: a real SIGSEGV
    in a real child process, as a broken runtime wheel crashes (not a mock: nothing is
    faked but the crash's cause)."""
    pkg = folder / "ai_edge_litert"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "interpreter.py").write_text(
        "import ctypes\n"
        "class Interpreter:\n"
        "    def __init__(self, *args, **kwargs):\n"
        "        ctypes.string_at(0)  # reads address 0: SIGSEGV\n"
    )
    return folder


def test_auto_skips_a_runtime_that_crashes_and_names_it(lone_harness, model_file, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(crashing_runtime(tmp_path / "broken"))}
    proc = subprocess.run(
        [sys.executable, str(lone_harness), str(model_file), "--runs", "3"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    doc = doc_of(proc)
    assert doc["runtime"]["name"] == "tflm"  # the next one that runs
    by_name = {c["name"]: c for c in doc["runtime_candidates"]}
    assert by_name["litert"]["status"] == "crashed"
    assert by_name["litert"]["detail"].startswith("killed by SIGSEGV")
    assert "Segmentation fault" in by_name["litert"]["detail"]  # faulthandler's report
    assert by_name["tflite_runtime"]["status"] == "not installed"
    assert "runtime litert skipped: crashed: killed by SIGSEGV" in proc.stderr

    # Chosen explicitly, the crashing runtime kills the harness: a signal, not a JSON.
    direct = subprocess.run(
        [sys.executable, str(lone_harness), str(model_file), "--runtime", "litert"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert direct.returncode == -11 and direct.stdout == ""
    assert "Fatal Python error: Segmentation fault" in direct.stderr


def test_check_runtimes_runs_a_tiny_model_in_each(lone_harness, tmp_path):
    doc = doc_of(run_harness(lone_harness, "--check-runtimes"))
    status = {r["name"]: r["status"] for r in doc["runtimes"]}
    assert status == {"litert": "ok", "tflite_runtime": "not installed", "tflm": "ok"}
    assert doc["numpy"] == np.__version__ and doc["machine"]["arch"] == os.uname().machine
    env = {**os.environ, "PYTHONPATH": str(crashing_runtime(tmp_path / "broken"))}
    proc = subprocess.run(
        [sys.executable, str(lone_harness), "--check-runtimes"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    crashed = {r["name"]: r for r in doc_of(proc)["runtimes"]}["litert"]
    assert crashed["status"] == "crashed" and "SIGSEGV" in crashed["detail"]


def test_emulation_is_detected(lone_harness, model_file):
    env = {**os.environ, "EDGEC_EMULATED": "qemu-aarch64"}
    proc = subprocess.run(
        [sys.executable, str(lone_harness), str(model_file), "--runs", "2", "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    emulated = doc_of(proc)["machine"]["emulated"]
    assert emulated == {"name": "qemu-aarch64", "evidence": "$EDGEC_EMULATED"}
    sys.path.insert(0, str(lone_harness.parent))
    try:
        import harness

        tcg = "processor\t: 0\nmodel name\t: QEMU Virtual CPU version 2.5+\n"
        assert harness.emulation(tcg)["evidence"] == "/proc/cpuinfo names a QEMU CPU"
        assert harness._cpu_model(tcg) == "QEMU Virtual CPU version 2.5+"
        assert harness._cpu_model("CPU implementer\t: 0x41\nCPU part\t: 0xd08\n").endswith(
            "part 0xd08"
        )
    finally:
        sys.path.remove(str(lone_harness.parent))
