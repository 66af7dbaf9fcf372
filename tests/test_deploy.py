"""Deploy and bench over a real OpenSSH sshd on 127.0.0.1 (never mocked, never skipped).

The "device" is this machine reached through sshd as the current user; its
Python is ``sys.executable`` (which has numpy and ai-edge-litert). Work folders
have spaces and shell metacharacters in their names, so every test also checks
that remote arguments are quoted and never injected.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from sshd import ClientKeys, Sshd, free_port, keygen

from edgec.cli import main
from edgec.deploy.devices import load_devices, parse_spec, resolve_device
from edgec.deploy.options import BenchOptions, locate_artifact
from edgec.deploy.publish import deploy_to
from edgec.deploy.transport import ConnectOptions, connect
from edgec.errors import DeviceError, InputError, UsageError

NASTY = "work dir; $(touch PWNED) `touch PWNED2` 'q\""


def _convert(model) -> bytes:
    import tensorflow as tf

    return tf.lite.TFLiteConverter.from_keras_model(model).convert()


def _retargeted(built: Path, folder: Path, target: dict) -> Path:
    """A copy of a real build's artifact folder whose manifest names another profile."""
    shutil.copytree(built, folder, ignore=shutil.ignore_patterns("results", "report.*"))
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    manifest["target"] = target
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory, digits_npz) -> dict[str, Path]:
    """A tiny artifact folder written by the real build (x86-64 target) and a ~4 MB bare
    .tflite for upload tests."""
    import keras

    from edgec.build import BuildRequest, build_target, float_baseline
    from edgec.data import load_dataset
    from edgec.loaders import load_model
    from edgec.profiles import Quantization, load_profile

    keras.utils.set_random_seed(0)
    root = tmp_path_factory.mktemp("artifacts")
    tiny = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)], name="tiny"
    )
    tiny.save(root / "tiny.keras")
    data = load_dataset(digits_npz, (8, 8, 1))
    model = load_model(root / "tiny.keras")
    req = BuildRequest(
        model=root / "tiny.keras",
        targets=("x86-64",),
        out=root / "out",
        data=str(digits_npz),
        calibration_size=32,
        quantization=Quantization.FLOAT32,  # no accuracy lost: the build passes untrained
    )
    built = build_target(
        req, load_profile("x86-64"), model, data, float_baseline(model, data), log=lambda _: None
    )
    assert built.ok and built.directory is not None, built.message
    big = keras.Sequential([keras.Input((1000,)), keras.layers.Dense(1000), keras.layers.Dense(10)])
    out = {"tiny": built.directory, "big": root / "big.tflite"}
    out["big"].write_bytes(_convert(big))
    return out


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A client HOME (key, known_hosts) and one running sshd that trusts the key."""
    root = tmp_path_factory.mktemp("ssh")
    client = ClientKeys.create(root / "home")
    server = Sshd(root / "sshd", client).start()
    client.trust(server)
    mp = pytest.MonkeyPatch()
    mp.setenv("HOME", str(client.home))
    mp.delenv("SSH_AUTH_SOCK", raising=False)
    mp.delenv("EDGEC_DEVICES", raising=False)
    mp.setenv("EDGEC_PROGRESS", "0")
    # The local device's folder (and anything else edgec caches) starts empty in every run:
    # CI keeps $XDG_CACHE_HOME between runs, and a model left there changes what bench logs.
    mp.setenv("XDG_CACHE_HOME", str(root / "cache"))
    try:
        yield client, server, root
    finally:
        mp.undo()
        server.stop()


def devices_toml(path: Path, entries: dict[str, dict]) -> Path:
    lines = []
    for name, e in entries.items():
        lines.append(f"[devices.{json.dumps(name)}]")
        for k, v in e.items():
            lines.append(f"{k} = {json.dumps(v)}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def device_entry(server: Sshd, client: ClientKeys, workdir: Path, **extra) -> dict:
    return {
        "host": "127.0.0.1",
        "port": server.port,
        "user": server.user,
        "key": str(client.key),
        "python": sys.executable,
        "workdir": str(workdir),
        **extra,
    }


def cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def no_injection(*folders: Path) -> None:
    for folder in (*folders, Path(os.path.expanduser("~")), Path("/root"), Path.cwd()):
        assert not (folder / "PWNED").exists() and not (folder / "PWNED2").exists()


# ---------------------------------------------------------------- deploy, bench
def test_deploy_then_idempotent_redeploy(env, models, tmp_path):
    client, server, _ = env
    work = tmp_path / NASTY
    devs = devices_toml(tmp_path / "devices.toml", {"dev": device_entry(server, client, work)})
    code, out, err = cli("deploy", str(models["tiny"]), "--device", "dev", "--devices", str(devs))
    assert code == 0, err
    assert "uploaded" in out and "already" not in out
    digest = sha(models["tiny"] / "model.tflite")
    remote = work / "models" / "tiny-x86-64" / digest[:12] / "model.tflite"
    assert sha(remote) == digest
    assert len(list((work / "harness").glob("*/harness.py"))) == 1
    mtime = remote.stat().st_mtime_ns

    code, out, err = cli(
        "deploy", str(models["tiny"]), "--device", "dev", "--devices", str(devs), "--json"
    )
    assert code == 0, err
    dep = json.loads(out)
    assert dep["ok"] is True and dep["model"]["uploaded"] is False and "not re-uploaded" in err
    assert dep["model"]["sha256"] == sha(models["tiny"] / "model.tflite")
    assert remote.stat().st_mtime_ns == mtime  # the same file, not sent again
    assert not list(remote.parent.glob(".upload-*"))
    no_injection(work, tmp_path)


def test_bench_end_to_end_over_ssh(env, models, tmp_path):
    client, server, _ = env
    art = tmp_path / "art"
    shutil.copytree(models["tiny"], art)
    work = tmp_path / NASTY
    devs = devices_toml(tmp_path / "devices.toml", {"board-1": device_entry(server, client, work)})
    code, out, err = cli(
        "bench",
        str(art),
        "--device",
        "board-1",
        "--devices",
        str(devs),
        "--runs",
        "30",
        "--warmup",
        "2",
        "--threads",
        "2",
    )
    assert code == 0, err
    assert "running the harness" in err and "done: 30 runs" in err  # streamed progress
    result = json.loads((art / "results" / "bench-board-1.json").read_text())
    assert result["schema"] == "edgec.bench/2" and result["device"] == "board-1"
    measured = result["measured"]  # what measured it: this machine, through sshd
    assert measured["where"] == "device" and measured["arch"] == os.uname().machine
    assert measured["cores"] == os.cpu_count() and measured["kernel"] == os.uname().release
    assert measured["runtime"] == "litert" and measured["threads"] == 2
    assert measured["emulated"] is None and measured["arch_mismatch"] is False
    assert result["steady"]["count"] == 30 and len(result["steady"]["samples_ms"]) == 30
    assert result["threads"] == 2 and result["runtime"]["name"] == "litert"
    assert result["artifact"]["sha256"] == sha(art / "model.tflite")
    assert result["device_info"]["address"] == f"{server.user}@127.0.0.1:{server.port}"
    assert result["budgets"]["profile"] == "x86-64" and result["budgets"]["ok"] is True
    assert [c["name"] for c in result["budgets"]["checks"]] == ["ram_bytes"]
    assert result["memory"]["peak_rss_bytes"] > 0
    assert "board-1" in out and " ok " in out  # the comparison table
    report = (art / "report.md").read_text()
    assert "board-1" in report  # latency and memory made it into the report

    code, out, err = cli(
        "bench", str(art), "--device", "board-1", "--devices", str(devs), "--runs", "7"
    )
    assert code == 0, err
    assert "already on device (same sha256), not re-uploaded" in err
    again = json.loads((art / "results" / "bench-board-1.json").read_text())
    assert again["steady"]["count"] == 7 and again["remote"]["uploaded"] is False
    assert result["remote"]["uploaded"] is True

    import numpy as np

    np.save(tmp_path / "x in.npy", np.ones((1, 8, 8, 1), np.float32))
    code, _, err = cli(
        "bench",
        str(art),
        "--device",
        "board-1",
        "--devices",
        str(devs),
        "--runs",
        "3",
        "--inputs",
        str(tmp_path / "x in.npy"),
    )
    assert code == 0, err
    with_inputs = json.loads((art / "results" / "bench-board-1.json").read_text())
    assert with_inputs["params"]["input"].endswith("x_in.npy")
    assert with_inputs["output_checksum"] != again["output_checksum"]
    no_injection(work, tmp_path)


def test_local_device_and_budget_exceeded(env, models, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(models["tiny"], art)
    strict = tmp_path / "strict.toml"
    strict.write_text('extends = "x86-64"\n[budgets]\nlatency_ms = 0.000001\n', encoding="utf-8")
    code, out, err = cli("bench", str(art), "--runs", "5", "--target", str(strict))
    assert code == 5, err
    assert "latency_ms budget of profile 'strict' exceeded" in err
    result = json.loads((art / "results" / "bench-local.json").read_text())
    assert result["device_info"]["kind"] == "local" and result["budgets"]["ok"] is False
    assert "EXCEEDED" in out


def test_micro_artifact_runs_on_the_tflm_interpreter(env, models, tmp_path):
    from edgec.profiles import load_profile

    art = _retargeted(models["tiny"], tmp_path / "m4", load_profile("cortex-m4").to_dict())
    code, out, err = cli("bench", str(art), "--runs", "5", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["ok"] is True and [d["device"] for d in doc["devices"]] == ["local"]
    result = doc["devices"][0]["result"]
    assert result["runtime"]["name"] == "tflm" and result["threads"] == 1
    # A microcontroller's RAM budget is its arena, not this process's RSS; the
    # figures are the host's TFLM interpreter's, and say so.
    assert result["budgets"]["checks"] == [] and "arena" in result["budgets"]["note"]
    assert result["measured"]["where"] == "host" and result["measured"]["profile_arch"]


def test_ssh_config_alias_is_honoured(env, models, tmp_path):
    client, server, _ = env
    key = tmp_path / "keys" / "special"
    key.parent.mkdir()
    shutil.copy(client.key, key)  # not a default name: only IdentityFile can find it
    os.chmod(key, 0o600)
    config = client.home / ".ssh" / "config"
    config.write_text(
        f"Host my-board\n  HostName 127.0.0.1\n  Port {server.port}\n"
        f"  User {server.user}\n  IdentityFile {key}\n",
        encoding="utf-8",
    )
    default_key = client.key.rename(client.key.with_name("moved-away"))
    try:
        work = tmp_path / "w"
        devs = devices_toml(
            tmp_path / "d.toml",
            {"b": {"host": "my-board", "python": sys.executable, "workdir": str(work)}},
        )
        code, out, err = cli("device", "check", "b", "--devices", str(devs))
        assert code == 0, err
        assert out.startswith("b: ok:") and "numpy" in out and "litert" in out
        # Each runtime really ran a tiny model on the device: "ok" means it runs.
        assert "litert 2." in out and "tflm" in out and "tflite_runtime not installed" in out
    finally:
        default_key.rename(client.key)
        config.unlink()


# ---------------------------------------------------------------- trust and reachability
def test_unknown_host_key_refused_until_accepted(env, models, tmp_path):
    client, server, _ = env
    client.known_hosts.rename(tmp_path / "saved_known_hosts")
    try:
        devs = devices_toml(
            tmp_path / "d.toml", {"dev": device_entry(server, client, tmp_path / "w")}
        )
        code, _, err = cli("deploy", str(models["tiny"]), "--device", "dev", "--devices", str(devs))
        assert code == 6 and "unknown host key SHA256:" in err and "refusing" in err
        assert len(err.strip().splitlines()) == 1
        assert not client.known_hosts.exists()

        code, _, err = cli(
            "deploy",
            str(models["tiny"]),
            "--device",
            "dev",
            "--devices",
            str(devs),
            "--accept-new-host-key",
        )
        assert code == 0, err
        assert client.known_hosts.read_text() == server.known_hosts_line()
        code, _, err = cli("deploy", str(models["tiny"]), "--device", "dev", "--devices", str(devs))
        assert code == 0, err  # recorded: trusted from now on
    finally:
        os.replace(tmp_path / "saved_known_hosts", client.known_hosts)


def test_changed_host_key_is_always_refused(env, models, tmp_path):
    client, server, _ = env
    other = keygen(tmp_path / "impostor")
    kind, b64 = Path(str(other) + ".pub").read_text().split()[:2]
    saved = client.known_hosts.read_text()
    client.known_hosts.write_text(f"[127.0.0.1]:{server.port} {kind} {b64}\n")
    try:
        devs = devices_toml(
            tmp_path / "d.toml", {"dev": device_entry(server, client, tmp_path / "w")}
        )
        for extra in ([], ["--accept-new-host-key"]):
            code, _, err = cli(
                "bench", str(models["tiny"]), "--device", "dev", "--devices", str(devs), *extra
            )
            assert code == 6 and "host key CHANGED" in err and "ssh-keygen" in err
        assert client.known_hosts.read_text() == f"[127.0.0.1]:{server.port} {kind} {b64}\n"
        assert not (models["tiny"] / "results").exists()  # nothing recorded
    finally:
        client.known_hosts.write_text(saved)


def test_wrong_credentials_and_unreachable_host(env, models, tmp_path):
    client, server, _ = env
    stranger = keygen(tmp_path / "stranger")
    devs = devices_toml(
        tmp_path / "d.toml",
        {
            "wrongkey": device_entry(server, client, tmp_path / "w", key=str(stranger)),
            "nobody": device_entry(server, client, tmp_path / "w", user="no-such-user"),
        },
    )
    # Keep ~/.ssh's own key out of it: only the configured (wrong) key may be tried.
    moved = client.key.rename(client.key.with_name("moved-away"))
    try:
        code, _, err = cli(
            "deploy", str(models["tiny"]), "--device", "wrongkey", "--devices", str(devs)
        )
        assert code == 6 and "authentication failed for user" in err
    finally:
        moved.rename(client.key)
    code, _, err = cli("deploy", str(models["tiny"]), "--device", "nobody", "--devices", str(devs))
    assert code == 6 and "authentication failed for user 'no-such-user'" in err

    port = free_port()  # nothing listens there
    code, _, err = cli(
        "deploy",
        str(models["tiny"]),
        "--device",
        f"root@127.0.0.1:{port}",
        "--connect-timeout",
        "3",
    )
    assert code == 6 and "cannot reach the device" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- failures mid-way
def test_connection_killed_mid_upload_then_clean_retry(env, models, tmp_path):
    client, server, _ = env
    work = tmp_path / NASTY
    devs = devices_toml(tmp_path / "d.toml", {"dev": device_entry(server, client, work)})
    device = resolve_device("dev", devs)
    artifact = locate_artifact(models["big"])
    assert artifact.model.stat().st_size > 3_000_000
    killed = []

    def cut(done: int, total: int) -> None:
        if not killed and done > total // 4:
            killed.append(server.kill_sessions())

    transport = connect(device, ConnectOptions())
    try:
        with pytest.raises(DeviceError, match=r"connection dropped while uploading big\.tflite"):
            deploy_to(transport, device, artifact, progress=cut)
    finally:
        transport.close()
    assert killed and killed[0] >= 1
    digest = sha(artifact.model)
    final = work / "models" / "big" / digest[:12] / "big.tflite"
    assert not final.exists()  # nothing that looks deployed
    leftovers = list(final.parent.glob(".upload-*"))
    assert len(leftovers) <= 1 and all(
        p.stat().st_size < artifact.model.stat().st_size for p in leftovers
    )

    transport = connect(device, ConnectOptions())
    try:
        dep = deploy_to(transport, device, artifact)
        # The protocol's plain file verbs (SFTP here), with a path that needs quoting.
        transport.download(dep.model.remote, tmp_path / "back.tflite")
        transport.upload(tmp_path / "back.tflite", str(work / "plain copy;.tflite"))
    finally:
        transport.close()
    assert dep.model.uploaded and sha(final) == digest == sha(tmp_path / "back.tflite")
    assert sha(work / "plain copy;.tflite") == digest
    no_injection(work)


def test_full_disk_on_device(env, models, tmp_path):
    client, server, _ = env
    mount = tmp_path / "tiny fs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], check=True)
    try:
        devs = devices_toml(tmp_path / "d.toml", {"dev": device_entry(server, client, mount)})
        filler = mount / "filler"
        filler.write_bytes(b"\0" * 4_000_000)  # leaves less than the 4 MB model needs
        code, _, err = cli("bench", str(models["big"]), "--device", "dev", "--devices", str(devs))
        assert code == 6 and "not enough space" in err and "ENOSPC" in err
        filler.unlink()

        # Each file fits alone, both together do not: the disk fills up mid-transfer.
        inputs = tmp_path / "inputs.npy"
        inputs.write_bytes(b"\0" * 4_000_000)
        code, _, err = cli(
            "bench",
            str(models["big"]),
            "--device",
            "dev",
            "--devices",
            str(devs),
            "--inputs",
            str(inputs),
        )
        assert code == 6 and "disk filled up" in err and "ENOSPC" in err, err
        assert err.strip().splitlines()[-1].startswith("edgec: error: device dev (")
        assert err.count("edgec: error") == 1
        assert not (models["big"].parent / "results").exists()
        assert not [p for p in mount.rglob("*") if p.is_file()]  # no partial or temp file
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_missing_runtime_then_device_setup(env, models, tmp_path):
    client, server, _ = env
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    work = tmp_path / "setup work"
    devs = devices_toml(
        tmp_path / "d.toml",
        {
            "bare": device_entry(server, client, work, python=str(bare / "bin" / "python")),
            "fresh": {k: v for k, v in device_entry(server, client, work).items() if k != "python"},
        },
    )
    code, _, err = cli("bench", str(models["tiny"]), "--device", "bare", "--devices", str(devs))
    assert code == 6
    assert "is missing numpy and a TFLite runtime" in err
    assert "edgec device setup bare" in err and len(err.strip().splitlines()) == 1

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    code, out, err = cli(
        "device",
        "setup",
        "fresh",
        "--devices",
        str(devs),
        "--wheels",
        str(wheels),
        "--python",
        sys.executable,
        "--system-site-packages",
    )
    assert code == 0, err
    venv_python = work / "venv" / "bin" / "python"
    assert venv_python.exists() and str(venv_python) in out
    code, out, err = cli("device", "check", "--device", "fresh", "--devices", str(devs), "--json")
    assert code == 0, err
    facts = json.loads(out)
    assert facts["ok"] is True and facts["python"].endswith("venv/bin/python")  # found
    assert {r["name"]: r["status"] for r in facts["runtimes"]}["litert"] == "ok"

    # A device that sets python: setup says plainly that bench will not use the venv.
    devs2 = devices_toml(
        tmp_path / "d2.toml", {"pinned": device_entry(server, client, tmp_path / "pinned")}
    )
    code, out, err = cli(
        "device",
        "setup",
        "--device",
        "pinned",
        "--devices",
        str(devs2),
        "--wheels",
        str(wheels),
        "--system-site-packages",
        "--json",
    )
    assert code == 0, err
    (note,) = json.loads(out)["notes"]
    assert f"sets python = {sys.executable!r}" in note and "not this venv" in note


def test_harness_timeout_and_crash(env, models, tmp_path):
    client, server, _ = env
    work = tmp_path / "w"
    devs = devices_toml(tmp_path / "d.toml", {"dev": device_entry(server, client, work)})
    art = tmp_path / "art"
    shutil.copytree(models["tiny"], art)
    start = time.monotonic()
    code, _, err = cli(
        "bench",
        str(art),
        "--device",
        "dev",
        "--devices",
        str(devs),
        "--runs",
        "1",
        "--min-secs",
        "120",
        "--timeout",
        "2",
    )
    assert code == 6 and "did not finish within 2 s and was killed" in err
    assert time.monotonic() - start < 30
    assert not (art / "results").exists()
    time.sleep(0.5)
    assert not [p for p in server.session_pids() if _cmdline(p).find("harness.py") >= 0]

    broken = tmp_path / "broken.tflite"
    broken.write_bytes(b"\x18\x00\x00\x00TFL3" + b"\x00" * 256)
    code, _, err = cli("bench", str(broken), "--device", "dev", "--devices", str(devs))
    assert code == 6 and "the harness" in err and ("failed" in err or "crashed" in err)
    assert not (tmp_path / "results").exists()


def _cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return ""


# ---------------------------------------------------------------- fleet
def test_fleet_with_one_device_down(env, models, tmp_path):
    client, server, root = env
    extra = [Sshd(root / f"fleet-{i}", client).start() for i in range(2)]
    try:
        for s in extra:
            client.trust(s)
        down = free_port()
        entries = {"a": device_entry(server, client, tmp_path / "wa", groups=["lab"])}
        for i, s in enumerate(extra):
            entries[f"b{i}"] = device_entry(s, client, tmp_path / f"wb{i}", groups=["lab"])
        entries["down"] = {
            **device_entry(server, client, tmp_path / "wd", groups=["lab"]),
            "port": down,
        }
        entries["other"] = device_entry(server, client, tmp_path / "wo", groups=["elsewhere"])
        devs = devices_toml(tmp_path / "d.toml", entries)
        art = tmp_path / "art"
        shutil.copytree(models["tiny"], art)
        code, out, err = cli(
            "bench",
            str(art),
            "--group",
            "lab",
            "--devices",
            str(devs),
            "--runs",
            "10",
            "--jobs",
            "3",
            "--connect-timeout",
            "3",
        )
        assert code == 6
        assert "1 of 4 devices failed (down)" in err and "cannot reach" in err
        stored = sorted(p.name for p in (art / "results").glob("*.json"))
        assert stored == ["bench-a.json", "bench-b0.json", "bench-b1.json"]
        rows = {line.split()[0]: line for line in out.splitlines()[1:]}
        assert set(rows) == {"a", "b0", "b1", "down"}
        assert "FAILED" in rows["down"] and all(" ok " in rows[n] for n in ("a", "b0", "b1"))
        assert "[b0]" in err and "[b1]" in err  # progress is labelled per device
    finally:
        for s in extra:
            s.stop()


# ---------------------------------------------------------------- devices file
def test_devices_file_and_specs(tmp_path):
    good = devices_toml(
        tmp_path / "d.toml",
        {"pi": {"host": "10.0.0.5", "port": 2222, "groups": ["lab"], "profile": "rpi4"}},
    )
    pi = load_devices(good)["pi"]
    assert (pi.host, pi.port, pi.groups, pi.workdir) == ("10.0.0.5", 2222, ("lab",), ".edgec")
    bad = devices_toml(tmp_path / "bad.toml", {"pi": {"host": "x", "prot": 22}})
    with pytest.raises(UsageError, match="unknown key 'prot'; valid keys: groups, host"):
        load_devices(bad)
    spec = parse_spec("pi@[::1]:2200")
    assert (spec.user, spec.host, spec.port) == ("pi", "::1", 2200)
    with pytest.raises(UsageError, match=r"\[user@\]host\[:port\]"):
        parse_spec("a b")
    code, out, _ = cli("devices", "--devices", str(good))
    assert code == 0 and out.split()[:4] == ["pi", "10.0.0.5:2222", "rpi4", "lab"]
    assert BenchOptions().runs == 50


# ---------------------------------------------------------------- honest results
def test_arch_mismatch_is_refused_unless_allowed(env, models, tmp_path):
    from edgec.profiles import load_profile

    other = "aarch64" if os.uname().machine == "x86_64" else "x86_64"
    profile = {**load_profile("rpi4").to_dict(), "arch": other}
    art = _retargeted(models["tiny"], tmp_path / "pi", profile)
    code, out, err = cli("bench", str(art), "--runs", "3", "--json")
    assert code == 6 and f"profile 'rpi4' is for {other}" in err
    assert "--allow-arch-mismatch" in err and len(err.strip().splitlines()) == 1
    assert json.loads(out)["devices"][0]["ok"] is False
    assert not (art / "results").exists()  # nothing stored as the rpi4's

    code, out, err = cli("bench", str(art), "--runs", "3", "--allow-arch-mismatch")
    assert code == 0, err
    result = json.loads((art / "results" / "bench-local.json").read_text())
    assert result["measured"]["arch_mismatch"] is True
    assert result["measured"]["profile_arch"] == other
    assert result["budgets"]["checks"] == [] and "not judged" in result["budgets"]["note"]
    assert "MISMATCH" in out and "ARCH MISMATCH" in err

    # The model is on the device now, so bench takes its no-upload path: it still refuses,
    # and the labelled result stored above is left as it was.
    stored = (art / "results" / "bench-local.json").read_bytes()
    code, out, err = cli("bench", str(art), "--runs", "3")
    assert code == 6 and f"profile 'rpi4' is for {other}" in err.strip().splitlines()[-1]
    assert (art / "results" / "bench-local.json").read_bytes() == stored


def test_emulated_latency_and_ram_are_never_judged(env, models, tmp_path, monkeypatch):
    art = tmp_path / "art"
    shutil.copytree(models["tiny"], art)
    strict = tmp_path / "strict.toml"
    strict.write_text('extends = "x86-64"\n[budgets]\nlatency_ms = 0.000001\n', encoding="utf-8")
    monkeypatch.setenv("EDGEC_EMULATED", "qemu-x86_64")  # what an emulated board's transport sets
    code, out, err = cli("bench", str(art), "--runs", "3", "--target", str(strict))
    assert code == 0, err
    result = json.loads((art / "results" / "bench-local.json").read_text())
    assert result["measured"]["emulated"] == "qemu-x86_64"
    # Neither latency nor RAM (the RSS holds the emulator itself) is the board's figure.
    assert result["budgets"]["checks"] == []
    note = result["budgets"]["note"]
    assert "latency_ms not judged" in note and "measured on the emulator" in note
    assert "ram_bytes not judged" in note and "emulator's own memory" in note
    assert "emulated (qemu-x86_64)" in out


def test_a_crashing_runtime_is_survived_and_named(env, models, tmp_path, monkeypatch):
    from test_harness import crashing_runtime

    art = tmp_path / "art"
    shutil.copytree(models["tiny"], art)
    monkeypatch.setenv("PYTHONPATH", str(crashing_runtime(tmp_path / "broken")))
    code, out, err = cli("bench", str(art), "--runs", "3", "--json")
    assert code == 0, err
    result = json.loads(out)["devices"][0]["result"]
    assert result["runtime"]["name"] == "tflm"
    skipped = {c["name"]: c for c in result["runtime_candidates"]}["litert"]
    assert skipped["status"] == "crashed" and "SIGSEGV" in skipped["detail"]
    assert "runtime litert skipped: crashed: killed by SIGSEGV" in err
    # The verdict is kept beside the deployed model: the next bench does not crash it again.
    code, out, err = cli("bench", str(art), "--runs", "3", "--json")
    assert code == 0, err
    again = {c["name"]: c for c in json.loads(out)["devices"][0]["result"]["runtime_candidates"]}
    assert again["litert"]["status"] == "crashed" and again["litert"]["cached"] is True

    # Chosen explicitly, it kills the harness: the error names the signal and what it said.
    code, _, err = cli("bench", str(art), "--runs", "3", "--runtime", "litert")
    assert code == 6 and "the harness crashed (killed by SIGSEGV" in err
    assert "Fatal Python error: Segmentation fault" in err and "nothing was recorded" in err
    assert len(err.strip().splitlines()[-1:]) == 1 and err.count("edgec: error") == 1

    # device check loads a model in each runtime: importable is not "ok", the crash is named.
    code, out, err = cli("device", "check", "--device", "local", "--json")
    assert code == 6 and "litert: crashed (killed by SIGSEGV" in err
    assert "a TFLite runtime that runs" in err and json.loads(out)["exit_code"] == 6
    code, out, err = cli("device", "check", "--device", "local", "--micro")
    assert code == 0 and "litert CRASHED (killed by SIGSEGV" in out and "tflm 0." in out


def test_local_device_leaves_the_working_directory_clean(env, models, tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    code, out, err = cli("deploy", str(models["tiny"]), "--device", "local")
    assert code == 0, err
    assert list(cwd.iterdir()) == []
    digest = sha(models["tiny"] / "model.tflite")
    remote = tmp_path / "cache" / "edgec" / "local" / "models" / "tiny-x86-64" / digest[:12]
    assert (remote / "model.tflite").is_file() and str(remote) in out


def test_group_all_unreachable_json_names_each_failure(env, models, tmp_path):
    client, server, _ = env
    entries = {
        f"gone{i}": {**device_entry(server, client, tmp_path / "w", groups=["lab"]), "port": p}
        for i, p in enumerate((free_port(), free_port()))
    }
    devs = devices_toml(tmp_path / "d.toml", entries)
    code, out, _ = cli(
        "bench",
        str(models["tiny"]),
        "--group",
        "lab",
        "--devices",
        str(devs),
        "--connect-timeout",
        "3",
        "--json",
    )
    assert code == 6
    doc = json.loads(out)  # one document
    assert doc["ok"] is False and doc["exit_code"] == 6 and "none was stored" in doc["error"]
    assert sorted(d["device"] for d in doc["devices"]) == ["gone0", "gone1"]
    assert all(not d["ok"] and "cannot reach" in d["error"] for d in doc["devices"])
    code, out, _ = cli(
        "bench", str(models["tiny"]), "--group", "nope", "--devices", str(devs), "--json"
    )
    assert code == 2 and json.loads(out)["exit_code"] == 2  # the same envelope as build


def test_a_harness_crash_over_ssh_names_the_signal(env, models, tmp_path):
    """SSH drops a command's exit signal; the device helper names it instead."""
    from test_harness import crashing_runtime

    client, server, _ = env
    broken = crashing_runtime(tmp_path / "broken")
    python = tmp_path / "python-with-broken-litert"
    python.write_text(f'#!/bin/sh\nPYTHONPATH={broken} exec {sys.executable} "$@"\n')
    python.chmod(0o755)
    devs = devices_toml(
        tmp_path / "d.toml",
        {"dev": device_entry(server, client, tmp_path / "w", python=str(python))},
    )
    code, _, err = cli(
        "bench",
        str(models["tiny"]),
        "--device",
        "dev",
        "--devices",
        str(devs),
        "--runtime",
        "litert",
    )
    assert code == 6 and "the harness crashed (killed by SIGSEGV, exit 139)" in err
    assert "Fatal Python error: Segmentation fault" in err
    assert not (models["tiny"] / "results").exists()


def test_bench_result_reader_is_strict_and_reads_v1(env, models, tmp_path):
    """One reader: the typed result round-trips, a v1 file still reads, a foreign one is named."""
    from edgec.results import BenchResult

    art = tmp_path / "art"
    shutil.copytree(models["tiny"], art)
    code, out, err = cli("bench", str(art), "--runs", "3", "--json")
    assert code == 0, err
    stored = json.loads((art / "results" / "bench-local.json").read_text())
    result = BenchResult.from_dict(stored, "bench-local.json")
    assert result.to_dict() == stored == json.loads(out)["devices"][0]["result"]

    v1 = {k: v for k, v in stored.items() if k not in ("measured", "machine")}
    v1["schema"] = "edgec.bench/1"
    old = BenchResult.from_dict(v1, "old.json")
    assert old.measured.arch == stored["platform"]["machine"] and old.measured.where == "device"

    with pytest.raises(InputError, match=r"old\.json: field 'schema' = 'edgec.bench/9'"):
        BenchResult.from_dict({**stored, "schema": "edgec.bench/9"}, "old.json")
    with pytest.raises(InputError, match=r"x\.json: steady: field 'count' is missing"):
        BenchResult.from_dict({**stored, "steady": {"p50_ms": 1.0}}, "x.json")
