"""The finished CLI: release/verify/report/sign commands, --json, exit codes, completion, --version,
and progress bars that stay quiet off a terminal. Runs the installed `edgec` as a user would."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_report import make_build

from edgec import __version__
from edgec.errors import ExitCode

REPO = Path(__file__).resolve().parents[1]


def edgec(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    full_env = {
        k: v for k, v in os.environ.items() if k not in ("EDGEC_ALLOWED_SIGNERS", "EDGEC_PROGRESS")
    }
    full_env.update({"TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "edgec.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory, real_build: Path) -> Path:
    return make_build(tmp_path_factory.mktemp("cli"), real_build)


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("key")
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ci", "-f", str(d / "id")], check=True
    )
    allowed = d / "allowed_signers"
    allowed.write_text(f"ci@example.com {(d / 'id.pub').read_text()}")
    return d / "id", allowed


def test_version() -> None:
    proc = edgec("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"edgec, version {__version__}"


def test_release_verify_json_round_trip(
    build: Path, key: tuple[Path, Path], tmp_path: Path
) -> None:
    sign_key, allowed = key
    rel = edgec(
        "release",
        str(build),
        "--version",
        "1.2.0",
        "--out",
        str(tmp_path / "dist"),
        "--sign-key",
        str(sign_key),
        "--json",
    )
    assert rel.returncode == 0, rel.stderr
    doc = json.loads(rel.stdout)
    assert doc["ok"] and doc["signed"] and doc["targets"] == ["cortex-m4", "rpi4"]
    bundle = Path(doc["bundle"])
    assert bundle.name == "digits_tiny-1.2.0.tar.gz" and bundle.is_file()

    ver = edgec("verify", str(bundle), "--allowed-signers", str(allowed), "--json")
    assert ver.returncode == 0, ver.stderr
    v = json.loads(ver.stdout)
    assert v["ok"] and v["trusted"] and v["signer"] == "ci@example.com"
    assert v["sha256"] == doc["sha256"] and len(v["models"]) == 3

    # Signing configured through the environment: an unsigned bundle is refused.
    unsigned = edgec("release", str(build), "--version", "1.2.1", "--out", str(tmp_path / "u"))
    assert unsigned.returncode == 0, unsigned.stderr
    bad = edgec(
        "verify",
        str(tmp_path / "u" / "digits_tiny-1.2.1.tar.gz"),
        "--json",
        env={"EDGEC_ALLOWED_SIGNERS": str(allowed)},
    )
    assert bad.returncode == ExitCode.VERIFY
    err = json.loads(bad.stdout)
    assert (
        err == {"ok": False, "exit_code": 7, "error": err["error"]} and "unsigned" in err["error"]
    )
    assert bad.stderr.count("\n") == 1 and bad.stderr.startswith("edgec: error: ")


def test_verify_names_the_tampered_file(build: Path, tmp_path: Path) -> None:
    from edgec.bundle_verify import read_bundle
    from edgec.release import pack

    rel = edgec("release", str(build), "--version", "3", "--out", str(tmp_path))
    assert rel.returncode == 0, rel.stderr
    bundle = tmp_path / "digits_tiny-3.tar.gz"
    b = read_bundle(bundle)
    files = {k: (v, 0o644) for k, v in b.files.items()}
    content = bytearray(files["rpi4/model.tflite"][0])
    content[len(content) // 3] ^= 0x40
    files["rpi4/model.tflite"] = (bytes(content), 0o644)
    bundle.write_bytes(pack(b.root, files, 0))
    proc = edgec("verify", str(bundle))
    assert proc.returncode == ExitCode.VERIFY
    assert re.fullmatch(
        r"edgec: error: .*rpi4/model\.tflite: sha256 does not match .*\n", proc.stderr
    ), proc.stderr
    assert proc.stdout == ""


def test_exit_codes_for_bad_input(build: Path, tmp_path: Path) -> None:
    assert edgec("verify", str(tmp_path / "missing.tar.gz")).returncode == ExitCode.INPUT
    (tmp_path / "junk.tar.gz").write_bytes(b"not a bundle at all")
    assert edgec("verify", str(tmp_path / "junk.tar.gz")).returncode == ExitCode.VERIFY
    bad = edgec("release", str(build), "--version", "1 0", "--out", str(tmp_path))
    assert bad.returncode == ExitCode.USAGE and "--version" in bad.stderr
    assert edgec("release", str(tmp_path)).returncode == ExitCode.INPUT  # no targets inside
    assert edgec("report", str(tmp_path)).returncode == ExitCode.INPUT
    assert [p.name for p in tmp_path.glob("*.tar.gz")] == ["junk.tar.gz"]  # nothing written


def test_exit_codes_are_documented() -> None:
    doc = (REPO / "docs" / "exit-codes.md").read_text()
    for code in ExitCode:
        assert re.search(rf"^\| {int(code)}\s+\| {code.name}\s+\|", doc, re.M), code


def test_report_command_rerenders(build: Path) -> None:
    (build / "rpi4" / "report.html").unlink()
    proc = edgec("report", str(build), "--json")
    assert proc.returncode == 0, proc.stderr
    written = json.loads(proc.stdout)["written"]
    assert str(build / "rpi4" / "report.html") in written and str(build / "report.md") in written
    assert "data:image/png;base64," in (build / "rpi4" / "report.html").read_text()


def test_sign_command_and_signed_folder(build: Path, key: tuple[Path, Path]) -> None:
    from edgec.signing import require_signed

    sign_key, allowed = key
    proc = edgec("sign", str(build / "cortex-m4"), "--key", str(sign_key))
    assert proc.returncode == 0, proc.stderr
    assert require_signed(build / "cortex-m4", allowed) == "ci@example.com"


def test_progress_is_quiet_off_a_terminal_and_shown_when_forced(
    build: Path, tmp_path: Path
) -> None:
    rel = edgec("release", str(build), "--version", "9", "--out", str(tmp_path))
    assert rel.returncode == 0
    bundle = str(tmp_path / "digits_tiny-9.tar.gz")
    quiet = edgec("verify", bundle)
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert "\x1b[" not in quiet.stdout
    loud = edgec("verify", bundle, env={"EDGEC_PROGRESS": "1"})
    assert loud.returncode == 0 and "loading models" in loud.stderr
    assert "ok  3 models load in the runtime" in loud.stdout


def test_shell_completion(tmp_path: Path) -> None:
    for shell in ("bash", "zsh", "fish"):
        proc = edgec("completion", shell)
        assert proc.returncode == 0 and "_EDGEC_COMPLETE" in proc.stdout, shell
    script = tmp_path / "edgec.bash"
    script.write_text(edgec("completion", "bash").stdout)
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    # Click's own protocol, as the sourced script calls it.
    exe = Path(sys.executable).with_name("edgec")
    proc = subprocess.run(
        [str(exe)],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "_EDGEC_COMPLETE": "bash_complete",
            "COMP_WORDS": "edgec re",
            "COMP_CWORD": "1",
        },
    )
    words = {line.split(",", 1)[1] for line in proc.stdout.splitlines() if "," in line}
    assert {"release", "report"} <= words and "verify" not in words
    proc = subprocess.run(
        [str(exe)],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "_EDGEC_COMPLETE": "bash_complete",
            "COMP_WORDS": "edgec verify --",
            "COMP_CWORD": "2",
        },
    )
    assert "--allowed-signers" in proc.stdout and "--json" in proc.stdout
    assert edgec("completion", "tcsh").returncode == ExitCode.USAGE
