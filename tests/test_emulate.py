"""Emulated ARM boards: a real Debian arm64 rootfs under real qemu-user, never skipped.

The rootfs is a slow fixture (about a minute and a half, once): ``.ci/run``
prepares it before pytest (``edgec device emulate rpi4``) so its time shows,
and every later run finds it in the cache. The artifact is a copy of the
session's real rpi4 build (conftest ``real_build``: a tiny Keras model, int8,
with the reference outputs the build stores); the harness then really runs on
the emulated Cortex-A72 and its outputs are compared with the host's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgec.deploy import emulate
from edgec.errors import UsageError

EDGEC = str(Path(sys.executable).with_name("edgec"))


def edgec(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EDGEC_PROGRESS": "0"}
    return subprocess.run(
        [EDGEC, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


@pytest.fixture(scope="module")
def board() -> emulate.Prepared:
    # Cached: built once on a new machine (.ci/run does it first), reused after.
    return emulate.prepare("rpi4")


@pytest.fixture(scope="module")
def artifact(tmp_path_factory, real_build) -> Path:
    # A copy (the benches here write results/ into it) without the host bench's results.
    folder = tmp_path_factory.mktemp("emulated-build") / "rpi4"
    shutil.copytree(real_build / "rpi4", folder, ignore=shutil.ignore_patterns("results"))
    return folder


def run_emulated(board: emulate.Prepared, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(board.python), "-c", code], capture_output=True, text=True, timeout=300, check=False
    )


def test_board_runs_aarch64_python_with_its_own_packages(board):
    code = (
        "import os, platform, sys, numpy, ai_edge_litert\n"
        "print(platform.machine(), os.environ.get('EDGEC_EMULATED'), numpy.__version__)\n"
        "print(open('/proc/cpuinfo').read().count('CPU part\\t: 0xd08'))\n"
        "for mod in ('edgec', 'click', 'tensorflow'):\n"
        "    try:\n"
        "        __import__(mod)\n"
        "        print('host module visible:', mod)\n"
        "    except ImportError:\n"
        "        pass\n"
        # the transport's verify-then-run helper re-executes sys.executable
        "sys.stdout.flush()\n"
        "os.execv(sys.executable, [sys.executable, '-c', 'import platform; "
        'print("child", platform.machine())\'])\n'
    )
    res = run_emulated(board, code)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.split("\n")
    machine, label, numpy_version = lines[0].split()
    assert (machine, label) == ("aarch64", "qemu-aarch64")
    assert numpy_version == board.rootfs["packages"]["numpy"]
    assert lines[1] == "4"  # the Cortex-A72 cpuinfo, not the host's x86 one
    assert "host module visible" not in res.stdout
    assert lines[2] == "child aarch64"
    # the rootfs holds real aarch64 binaries
    libc = board.folder / "lib" / "aarch64-linux-gnu" / "libc.so.6"
    assert libc.read_bytes()[18:20] == (183).to_bytes(2, "little")  # e_machine EM_AARCH64
    assert board.rootfs["packages"]["ai-edge-litert"]


def test_prepare_is_cached_and_atomic(board, tmp_path):
    again = emulate.prepare("rpi4")
    assert not again.built and again.folder == board.folder
    # a killed preparation leaves only hidden temporaries, removed by the next one
    stale = board.folder.parent / ".rpi5.tmp-killed"
    stale.mkdir()
    (stale / "python3").write_text("half")
    emulate.prepare("rpi5")
    assert not stale.exists()
    cpuinfo = (board.folder.parent / "rpi5" / "proc" / "cpuinfo").read_text()
    assert "CPU part\t: 0xd0b" in cpuinfo
    assert "-cpu cortex-a76" in (board.folder.parent / "rpi5" / "python3").read_text()


def test_offline_wheels_install_from_a_folder(board, tmp_path):
    # What --wheels DIR does: pip from that folder only, for aarch64 and the rootfs's Python.
    wheels = tmp_path / "wheels"
    shutil.copytree(emulate.layout().wheels, wheels)
    tags = emulate.platform_tags(int(board.rootfs["glibc"].split(".")[1]))
    assert "manylinux_2_28_aarch64" in tags and "manylinux_2_34_aarch64" in tags
    site = tmp_path / "site"
    got = emulate.install_wheels(
        site,
        source=wheels,
        requirements=emulate.PACKAGES,
        target=emulate._pip_target_args(board.rootfs["python"], tags),
    )
    assert got["numpy"] == board.rootfs["packages"]["numpy"]
    assert got["ai-edge-litert"] == board.rootfs["packages"]["ai-edge-litert"]
    assert list(site.glob("numpy/_core/*aarch64-linux-gnu.so"))
    empty = tmp_path / "empty"
    empty.mkdir()
    res = edgec("device", "emulate", "rpi4", "--wheels", str(empty))
    assert res.returncode == 2 and "no .whl files" in res.stderr


def test_emulated_bench_checks_outputs(board, artifact):
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["reference_outputs"]["runtime"]["name"] == "litert"
    assert (artifact / "reference-outputs.json").is_file()

    res = edgec("bench", str(artifact), "--device", "emulated:rpi4", "--runs", "3", "--json")
    assert res.returncode == 0, res.stderr
    (outcome,) = json.loads(res.stdout)["devices"]
    result = outcome["result"]
    assert result["measured"]["emulated"] == "qemu-aarch64 -cpu cortex-a72"
    assert result["measured"]["arch"] == result["platform"]["machine"] == "aarch64"
    assert result["runtime"]["name"] == "litert"
    check = result["outputs_check"]
    assert check["ok"] and check["reference"]["source"] == "stored at build"
    assert check["reference"]["machine"] == "x86_64"
    assert not check["reference"]["model_changed_since"]
    assert check["inputs"] == {"generator": "seeded", "seed": 0, "count": 16}
    assert check["max_steps"] <= check["tolerance"]["max_steps"] == 2
    assert "aarch64" in check["tolerance"]["basis"]
    assert check["top1_agreement"] >= 0.9
    # emulated latency is reported, never judged against the profile's 100 ms
    note = result["budgets"]["note"]
    assert "latency_ms not judged" in note and "measured on the emulator, not the target" in note
    assert "ram_bytes not judged" in note and "emulator's own memory" in note
    assert result["budgets"]["checks"] == []
    stored = json.loads((artifact / "results" / "bench-emulated_rpi4.json").read_text())
    assert "outputs_check" in stored and "data" not in json.dumps(stored["outputs_check"])

    # the table a person sees says it ran on aarch64, emulated, outputs checked
    res = edgec("bench", str(artifact), "--device", "emulated:rpi4", "--runs", "2")
    assert res.returncode == 0, res.stderr
    row = next(line for line in res.stdout.splitlines() if line.startswith("emulated:rpi4"))
    assert "aarch64 emulated (qemu-aarch64 -cpu cortex-a72)" in row
    assert re.search(r"\bok [012] step", row), row
    assert "outputs ok: max" in res.stderr


def _negate_largest_weights(model: Path) -> None:
    """Tamper with a model: flip the sign of its largest int8 weight tensor."""
    from ai_edge_litert.interpreter import Interpreter

    content = model.read_bytes()
    it = Interpreter(model_content=content)
    it.allocate_tensors()
    weights = []
    for d in it.get_tensor_details():
        if d["dtype"] == np.int8 and len(d["shape"]) >= 2:
            try:
                weights.append(np.array(it.get_tensor(d["index"])))
            except ValueError:
                continue
    w = max(weights, key=lambda a: a.size)
    raw = w.tobytes()
    at = content.find(raw)
    assert at > 0 and content.find(raw, at + 1) < 0
    flipped = np.clip(-w.astype(np.int16), -127, 127).astype(np.int8).tobytes()
    model.write_bytes(content[:at] + flipped + content[at + len(raw) :])


def test_tampered_artifact_fails_the_outputs_check(board, artifact, tmp_path):
    tampered = tmp_path / "rpi4"
    shutil.copytree(artifact, tampered, ignore=shutil.ignore_patterns("results"))
    _negate_largest_weights(tampered / "model.tflite")
    res = edgec(
        "bench", str(tampered), "--device", "emulated:rpi4", "--runs", "1", "--check-count", "16"
    )
    assert res.returncode == 7, res.stderr
    assert "outputs differ from the reference (stored at build)" in res.stderr
    assert "steps (tolerance 2)" in res.stderr
    assert len(res.stderr.strip().splitlines()[-1]) < 600
    stored = json.loads((tampered / "results" / "bench-emulated_rpi4.json").read_text())
    assert stored["outputs_check"]["ok"] is False
    assert stored["outputs_check"]["reference"]["model_changed_since"] is True


def test_bare_tflite_is_checked_against_the_host_on_a_local_device(artifact, tmp_path):
    # No stored reference: the host runs the harness for it; --check-outputs works anywhere.
    model = tmp_path / "model.tflite"
    shutil.copy(artifact / "model.tflite", model)
    res = edgec(
        "bench", str(model), "--device", "local", "--runs", "2", "--check-outputs", "--json"
    )
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout)["devices"][0]["result"]
    check = result["outputs_check"]
    assert result["measured"]["emulated"] is None
    assert check["ok"] and check["reference"]["source"] == "host" and check["max_steps"] == 0
    _negate_largest_weights(model)
    res = edgec("bench", str(model), "--device", "local", "--runs", "1", "--json")
    assert res.returncode == 0
    assert json.loads(res.stdout)["devices"][0]["result"]["outputs_check"] is None


def test_unprepared_board_and_bad_specs(artifact, tmp_path):
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path), "EDGEC_PROGRESS": "0"}
    res = subprocess.run(
        [EDGEC, "bench", str(artifact), "--device", "emulated:rpi5", "--no-check-outputs"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert res.returncode == 6
    assert "not prepared; run `edgec device emulate rpi5` first" in res.stderr
    assert not (tmp_path / "edgec" / "emulate" / "rootfs").exists()
    res = edgec("device", "setup", "emulated:rpi4")
    assert res.returncode == 2 and "set up by `edgec device emulate rpi4`" in res.stderr
    res = edgec("device", "emulate", "pi9")
    assert res.returncode == 2 and "valid: rpi4, rpi5, phone" in res.stderr
    with pytest.raises(UsageError, match="valid: rpi4, rpi5, phone"):
        emulate.board_named("emulated:pi9")


@pytest.mark.unit
def test_apt_mirror_is_read_from_the_apt_config(tmp_path):
    etc = tmp_path / "apt"
    (etc / "sources.list.d").mkdir(parents=True)
    (etc / "sources.list").write_text("# nothing here\n")
    (etc / "sources.list.d" / "vendor.list").write_text(
        "deb [arch=amd64 signed-by=/k.gpg] file:///srv/vendor stable-vendor main\n"
    )
    (etc / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: file:///srv/debian-security\nSuites: bookworm-security\n"
        "Components: main\n\n"
        "Types: deb deb-src\nURIs: file:///srv/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main contrib\n"
    )
    assert emulate.apt_mirror(etc) == "file:///srv/debian"
    (etc / "sources.list").write_text("deb [trusted=yes] file:///srv/mirror trixie main\n")
    assert emulate.apt_mirror(etc) == "file:///srv/mirror"
    (etc / "sources.list").write_text("")
    (etc / "sources.list.d" / "debian.sources").unlink()
    with pytest.raises(UsageError, match="pass --mirror URL"):
        emulate.apt_mirror(etc)
