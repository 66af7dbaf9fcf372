"""Shared fixtures: tiny real Keras models and real data, made once per test session.

Test tiers (pytest markers registered in pyproject.toml, all run by CI's
``python3 -m pytest``): ``unit`` (no model built), ``integration`` (real tiny
models, converter, LiteRT/TFLM, CLI) and ``device`` (a real sshd, a compiler or
a browser). ``TIERS`` assigns each test file its tier; a file may also mark
tests itself. ``-m unit`` runs the fast tier alone.

``real_build`` is one real ``edgec build`` (through ``build_target``) that the
report, release and CLI tests read: their manifests are the ones build writes.

A run ends with each test file's seconds (setup, call and teardown summed), so a
CI log shows where the suite's time goes.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

TIERS = {
    "test_budgets.py": "unit",
    "test_profiles.py": "unit",
    "test_recipe.py": "unit",
    "test_executor.py": "unit",
    "test_deploy.py": "device",
    "test_emulate.py": "device",  # a Debian arm64 rootfs under qemu-user
    "test_firmware.py": "device",
    "test_report_browser.py": "device",
    "test_release.py": "device",  # signs with ssh-keygen and deploys over sshd
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    tiers = {"unit", "integration", "device"}
    for item in items:
        if tiers & {m.name for m in item.iter_markers()}:
            continue
        item.add_marker(getattr(pytest.mark, TIERS.get(item.path.name, "integration")))


_FILE_SECONDS: Counter[str] = Counter()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _FILE_SECONDS[report.nodeid.split("::", 1)[0]] += report.duration


def pytest_terminal_summary(terminalreporter) -> None:
    if not _FILE_SECONDS:
        return
    total = sum(_FILE_SECONDS.values())
    terminalreporter.write_sep("=", f"seconds per test file ({total:.0f} s in tests)")
    for path, seconds in _FILE_SECONDS.most_common():
        terminalreporter.write_line(f"{seconds:8.1f}  {path}")


@pytest.fixture(scope="session")
def digits():
    from edgec.data import demo_dataset

    return demo_dataset(seed=0)


@pytest.fixture(scope="session")
def digits_npz(tmp_path_factory, digits) -> Path:
    path = tmp_path_factory.mktemp("data") / "digits.npz"
    np.savez(
        path, x_train=digits.x_train, y_train=digits.y_train, x_val=digits.x_val, y_val=digits.y_val
    )
    return path


def _train(model, data, epochs: int = 8):
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(data.x_train, data.y_train, epochs=epochs, batch_size=64, verbose=0)
    return model


@pytest.fixture(scope="session")
def cnn_model(digits):
    """A small sequential CNN trained a few epochs on the digits (about 95% accurate)."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ],
        name="tiny_cnn",
    )
    return _train(model, digits)


@pytest.fixture(scope="session")
def cnn_keras_file(tmp_path_factory, cnn_model) -> Path:
    path = tmp_path_factory.mktemp("models") / "tiny_cnn.keras"
    cnn_model.save(path)
    return path


@pytest.fixture(scope="session")
def residual_keras_file(tmp_path_factory, digits) -> Path:
    """A functional model with a residual Add, trained briefly."""
    import keras

    keras.utils.set_random_seed(1)
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    y = keras.layers.Conv2D(8, 3, padding="same")(x)
    x = keras.layers.Activation("relu")(keras.layers.Add()([x, y]))
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(10, activation="softmax")(x)
    model = _train(keras.Model(inp, out, name="tiny_resnet"), digits, epochs=4)
    path = tmp_path_factory.mktemp("models") / "tiny_resnet.keras"
    model.save(path)
    return path


@pytest.fixture(scope="session")
def run_cli():
    """Invoke the real click CLI in-process; returns (exit code, stdout, stderr).

    Session-scoped (it holds no state), so module fixtures can build through it too."""
    from click.testing import CliRunner

    from edgec.cli import main

    def run(*args: str):
        result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
        return result.exit_code, result.stdout, result.stderr

    return run


REAL_BUILD_MODEL = "digits_tiny"


@pytest.fixture(scope="session")
def real_build(tmp_path_factory, digits_npz) -> Path:
    """``OUT/digits_tiny`` written by the real build: rpi4 (int8 + float16) after a low-rank
    pass and the accuracy-aware search (real candidates), cortex-m4 plain (TFLM fit and firmware), each with the results/ of
    the real harness run on this host, and the build summary. Copy it before changing it."""
    import dataclasses

    import keras

    from edgec.build import BuildRequest, build_target, float_baseline
    from edgec.data import load_dataset
    from edgec.deploy.bench import bench_one
    from edgec.deploy.devices import local_device
    from edgec.deploy.options import BenchOptions, locate_artifact
    from edgec.loaders import load_model
    from edgec.profiles import load_profile
    from edgec.report import render_build_summary, render_reports

    data = load_dataset(digits_npz, (8, 8, 1))
    keras.utils.set_random_seed(0)
    net = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ],
        name=REAL_BUILD_MODEL,
    )
    _train(net, data, epochs=3)
    root = tmp_path_factory.mktemp("real_build")
    path = root / f"{REAL_BUILD_MODEL}.keras"
    net.save(path)
    model = load_model(path)
    base = float_baseline(model, data)
    out = root / "out"
    common = {"model": path, "out": out, "data": str(digits_npz), "calibration_size": 64}
    # rpi4 with a float16 variant beside int8, a low-rank pass, then the search on top.
    rpi4 = root / "profiles" / "rpi4.toml"
    rpi4.parent.mkdir()
    rpi4.write_text('extends = "rpi4"\nvariants = ["float16"]\n')
    searched = BuildRequest(
        targets=(str(rpi4),),
        overrides=("lowrank:min_params=512,energy=0.8,epochs=0",),
        max_accuracy_drop=0.2,
        epochs_scale=0.1,
        **common,
    )
    plain = BuildRequest(targets=("cortex-m4",), **common)
    for req in (searched, plain):
        profile = load_profile(req.targets[0])
        result = build_target(req, profile, model, data, base, log=lambda _: None)
        assert result.ok and result.directory is not None, result.message
        # The real on-device harness, run by `edgec bench`'s code on this host as a local
        # device; this host is not the target's board, so the result says it is mismatched.
        runtime = "tflm" if profile.is_micro else "litert"
        device = dataclasses.replace(local_device(), name=f"local-{runtime}")
        options = BenchOptions(runs=40, runtime=runtime, allow_arch_mismatch=True)
        outcome = bench_one(locate_artifact(result.directory), device, options)
        assert outcome.result is not None, outcome.error
        render_reports(result.directory)  # as bench does after saving a result
    render_build_summary(out / REAL_BUILD_MODEL)
    return out / REAL_BUILD_MODEL
