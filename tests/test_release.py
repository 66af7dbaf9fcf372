"""edgec release and edgec verify: reproducible bundles, tamper detection, SSH signatures."""

from __future__ import annotations

import hashlib
import json
import subprocess
import tarfile
from pathlib import Path

import pytest
from test_report import make_build

from edgec.errors import BudgetError, ExitCode, VerifyError


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory, real_build: Path) -> Path:
    return make_build(tmp_path_factory.mktemp("release"), real_build)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("keys")
    out = {}
    for who in ("release", "mallory"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", who, "-f", str(d / who)],
            check=True,
        )
        out[who] = d / who
    allowed = d / "allowed_signers"
    allowed.write_text(f"release@example.com {(d / 'release.pub').read_text()}")
    out["allowed"] = allowed
    return out


@pytest.fixture(scope="module")
def bundle(build: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgec.release import release

    return release(build, version="1.0.0", out=tmp_path_factory.mktemp("dist")).bundle


def _members(bundle: Path) -> tuple[str, dict[str, bytes]]:
    from edgec.bundle_verify import read_bundle

    b = read_bundle(bundle)
    return b.root, b.files


def _repack(root: str, files: dict[str, bytes], dest: Path) -> Path:
    from edgec.release import pack

    dest.write_bytes(pack(root, {k: (v, 0o644) for k, v in files.items()}, 0))
    return dest


def _flip(data: bytes, at: int | None = None) -> bytes:
    i = len(data) // 2 if at is None else at
    return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :]


def test_two_releases_are_byte_identical(
    build: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgec.release import release

    a = release(build, version="1.0.0", out=tmp_path / "a")
    b = release(build, version="1.0.0", out=tmp_path / "b")
    assert a.bundle.name == "digits_tiny-1.0.0.tar.gz"
    assert a.bundle.read_bytes() == b.bundle.read_bytes() and a.sha256 == b.sha256
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    c = release(build, version="1.0.0", out=tmp_path / "c")
    d = release(build, version="1.0.0", out=tmp_path / "d")
    assert c.bundle.read_bytes() == d.bundle.read_bytes() != a.bundle.read_bytes()
    with tarfile.open(c.bundle) as tar:
        assert {m.mtime for m in tar} == {1700000000}


def test_bundle_layout_and_checksums(bundle: Path, tmp_path: Path) -> None:
    blob = bundle.read_bytes()
    assert blob[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"  # no name, mtime 0
    with tarfile.open(bundle) as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        assert names == sorted(names) and names[0] == "digits_tiny-1.0.0"
        assert {(m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, "", "")}
        assert {m.mode for m in members if m.isfile()} <= {0o644, 0o755}
        tar.extractall(tmp_path, filter="data")
    root = tmp_path / "digits_tiny-1.0.0"
    for rel in (
        "MODEL_CARD.md",
        "SHA256SUMS",
        "release.json",
        "report.html",
        "report.md",
        "rpi4/model.tflite",
        "rpi4/model.float16.tflite",
        "rpi4/manifest.json",
        "rpi4/report.html",
        "rpi4/results/bench-local-litert.json",
        "cortex-m4/model.tflite",
        "cortex-m4/report.md",
    ):
        assert (root / rel).is_file(), rel
    # The real sha256sum agrees with every line, inside and next to the bundle.
    check = subprocess.run(
        ["sha256sum", "--strict", "-c", "SHA256SUMS"], cwd=root, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.count(": OK") == sum(1 for p in root.rglob("*") if p.is_file()) - 1
    side = bundle.parent / "SHA256SUMS"
    assert side.read_text() == f"{hashlib.sha256(blob).hexdigest()}  {bundle.name}\n"
    info = json.loads((root / "release.json").read_text())
    assert info["version"] == "1.0.0" and info["targets"] == ["cortex-m4", "rpi4"]


def test_model_card_says_what_and_how(bundle: Path) -> None:
    _, files = _members(bundle)
    card = files["MODEL_CARD.md"].decode()
    manifest = json.loads(files["rpi4/manifest.json"])
    for text in (
        "## Intended targets",
        "| rpi4 |",
        "| cortex-m4 |",
        "## Compression applied",
        "`lowrank`",
        "energy=0.8",
        "## Accuracy and size per target",
        "## Latency and memory on devices",
        "local-litert",
        "local-tflm",
        "## How these numbers were measured",
        "validation split",
        f"{100 * manifest['artifacts'][0]['metrics']['accuracy']:.2f} %",
    ):
        assert text in card, text


def test_version_defaults_from_the_manifest(build: Path, tmp_path: Path) -> None:
    from edgec.release import release

    r = release(build, out=tmp_path)
    manifest = json.loads((build / "rpi4" / "manifest.json").read_text())
    assert r.version == "0.0.0+" + manifest["model"]["sha256"][:12] and r.name == "digits_tiny"
    copy = tmp_path / "b" / "digits_tiny"
    import shutil

    shutil.copytree(build, copy)
    manifest["model"]["version"] = "2.3.4"
    (copy / "rpi4" / "manifest.json").write_text(json.dumps(manifest))
    assert release(copy, out=tmp_path, name="digits").bundle.name == "digits-2.3.4.tar.gz"


def test_failed_budgets_are_refused_unless_allowed(build: Path, tmp_path: Path) -> None:
    import shutil

    from edgec.release import release

    copy = tmp_path / "digits_tiny"
    shutil.copytree(build, copy)
    path = copy / "cortex-m4" / "manifest.json"
    m = json.loads(path.read_text())
    m["budgets"]["ok"] = False
    next(c for c in m["budgets"]["checks"] if c["name"] == "max_accuracy_drop")["ok"] = False
    path.write_text(json.dumps(m))
    with pytest.raises(BudgetError, match=r"cortex-m4.*max_accuracy_drop.*--allow-failed") as exc:
        release(copy, version="1", out=tmp_path / "dist")
    assert exc.value.exit_code == ExitCode.BUDGET
    assert not (tmp_path / "dist").exists()  # nothing half-written
    r = release(copy, version="1", out=tmp_path / "dist", allow_failed=True)
    assert r.failed_budgets == ["cortex-m4"]
    card = _members(r.bundle)[1]["MODEL_CARD.md"].decode()
    assert "released with failed budget checks for cortex-m4" in card


def test_verify_accepts_a_good_bundle(bundle: Path) -> None:
    from edgec.bundle_verify import verify_bundle

    res = verify_bundle(bundle)
    assert res.models == [
        "cortex-m4/model.tflite",
        "rpi4/model.float16.tflite",
        "rpi4/model.tflite",
    ]
    assert res.manifests == ["cortex-m4/manifest.json", "rpi4/manifest.json"]
    assert not res.signed and res.sidecar_checked and res.version == "1.0.0"


def test_verify_catches_a_flipped_byte_in_every_member(bundle: Path, tmp_path: Path) -> None:
    from edgec.bundle_verify import verify_bundle

    root, files = _members(bundle)
    assert len(files) >= 15
    for rel in sorted(files):
        for at in (0, None, len(files[rel]) - 1):  # first, middle and last byte
            damaged = dict(files)
            damaged[rel] = _flip(files[rel], at)
            path = _repack(root, damaged, tmp_path / "damaged.tar.gz")
            with pytest.raises(VerifyError) as exc:
                verify_bundle(path, probe=False)
            named = rel if rel != "SHA256SUMS" else "SHA256SUMS"
            assert named in str(exc.value) or "SHA256SUMS" in str(exc.value), (rel, exc.value)
            assert exc.value.exit_code == ExitCode.VERIFY


def test_verify_catches_damage_to_the_archive_itself(bundle: Path, tmp_path: Path) -> None:
    from edgec.bundle_verify import verify_bundle

    blob = bundle.read_bytes()
    for at in (1, 4, 9, 10, 100, len(blob) // 2, len(blob) - 5, len(blob) - 1):
        path = tmp_path / "x" / bundle.name  # no sidecar SHA256SUMS here
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(_flip(blob, at))
        with pytest.raises(VerifyError):
            verify_bundle(path, probe=False)
    path.write_bytes(blob + b"\0" * 10)  # trailing bytes after the gzip stream
    with pytest.raises(VerifyError):
        verify_bundle(path, probe=False)


def test_verify_catches_added_removed_and_inconsistent_files(bundle: Path, tmp_path: Path) -> None:
    from edgec.bundle_verify import format_sums, sha256_hex, verify_bundle

    root, files = _members(bundle)
    added = {**files, "rpi4/extra.txt": b"hi"}
    with pytest.raises(VerifyError, match=r"extra.txt: not listed"):
        verify_bundle(_repack(root, added, tmp_path / "a.tar.gz"), probe=False)
    removed = {k: v for k, v in files.items() if k != "rpi4/model.float16.tflite"}
    with pytest.raises(
        VerifyError, match=r"model.float16.tflite: listed in SHA256SUMS but missing"
    ):
        verify_bundle(_repack(root, removed, tmp_path / "r.tar.gz"), probe=False)

    def resummed(changed: dict[str, bytes]) -> dict[str, bytes]:
        body = {k: v for k, v in changed.items() if k != "SHA256SUMS"}
        return {**body, "SHA256SUMS": format_sums({k: sha256_hex(v) for k, v in body.items()})}

    # A model swapped with checksums recomputed: the manifest still names the old sha256.
    swapped = resummed({**files, "rpi4/model.tflite": files["cortex-m4/model.tflite"]})
    with pytest.raises(VerifyError, match=r"rpi4/model.tflite.*(bytes|sha256)"):
        verify_bundle(_repack(root, swapped, tmp_path / "s.tar.gz"), probe=False)
    # Consistent checksums and manifest, but the model does not load.
    junk = b"\0\0\0\0TFL3" + b"\xff" * 600
    m = json.loads(files["rpi4/manifest.json"])
    m["artifacts"][0].update(sha256=sha256_hex(junk), bytes=len(junk))
    broken = resummed(
        {**files, "rpi4/model.tflite": junk, "rpi4/manifest.json": json.dumps(m).encode()}
    )
    path = _repack(root, broken, tmp_path / "j.tar.gz")
    verify_bundle(path, probe=False)  # every checksum is consistent...
    with pytest.raises(VerifyError, match=r"rpi4/model.tflite: not a loadable TFLite model"):
        verify_bundle(path)  # ...but the runtime refuses it


def test_signed_bundle_verifies_and_tampering_is_refused(
    build: Path, keys: dict[str, Path], tmp_path: Path
) -> None:
    from edgec.bundle_verify import format_sums, sha256_hex, verify_bundle
    from edgec.release import release
    from edgec.signing import sign_bytes

    signed = release(build, version="1.0.0", out=tmp_path / "s", sign_key=keys["release"])
    again = release(build, version="1.0.0", out=tmp_path / "t", sign_key=keys["release"])
    assert signed.bundle.read_bytes() == again.bundle.read_bytes()  # ed25519 is deterministic
    res = verify_bundle(signed.bundle, keys["allowed"], probe=False)
    assert res.signed and res.trusted and res.signer == "release@example.com"
    assert verify_bundle(signed.bundle, probe=False).signer.startswith("untrusted")

    root, files = _members(signed.bundle)
    for rel in sorted(files):  # any damaged file, the signature included
        path = _repack(root, {**files, rel: _flip(files[rel])}, tmp_path / "d.tar.gz")
        with pytest.raises(VerifyError):
            verify_bundle(path, keys["allowed"], probe=False)
    # A consistent forgery signed with another key is refused by the allowed signers.
    body = {k: v for k, v in files.items() if k not in ("SHA256SUMS", "SHA256SUMS.sig")}
    body["MODEL_CARD.md"] += b"\nforged\n"
    sums = format_sums({k: sha256_hex(v) for k, v in body.items()})
    forged = {**body, "SHA256SUMS": sums, "SHA256SUMS.sig": sign_bytes(sums, keys["mallory"])}
    path = _repack(root, forged, tmp_path / "f.tar.gz")
    verify_bundle(path, probe=False)  # internally consistent
    with pytest.raises(VerifyError, match=r"not in"):
        verify_bundle(path, keys["allowed"], probe=False)
    # Stripping the signature does not help once signing is configured.
    unsigned = {**body, "SHA256SUMS": sums}
    with pytest.raises(VerifyError, match=r"unsigned"):
        verify_bundle(_repack(root, unsigned, tmp_path / "u.tar.gz"), keys["allowed"], probe=False)


def test_require_signed_for_deploy(
    build: Path,
    bundle: Path,
    keys: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import shutil

    from edgec.release import release
    from edgec.signing import ENV_ALLOWED_SIGNERS, require_signed, sign_dir

    monkeypatch.delenv(ENV_ALLOWED_SIGNERS, raising=False)
    assert require_signed(bundle) is None  # signing not configured: nothing to check
    monkeypatch.setenv(ENV_ALLOWED_SIGNERS, str(keys["allowed"]))
    with pytest.raises(VerifyError, match=r"unsigned"):
        require_signed(bundle)
    signed = release(build, version="2", out=tmp_path / "dist", sign_key=keys["release"]).bundle
    assert require_signed(signed) == "release@example.com"

    # An extracted bundle and one of its targets (what deploy gets as an artifact folder).
    with tarfile.open(signed) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    target = tmp_path / "x" / "digits_tiny-2" / "rpi4"
    assert require_signed(target) == "release@example.com"
    assert require_signed(target / "model.tflite") == "release@example.com"
    (target / "results" / "bench-new.json").write_text("{}")  # a later bench is fine
    assert require_signed(target) == "release@example.com"
    model = target / "model.tflite"
    model.write_bytes(_flip(model.read_bytes()))
    with pytest.raises(VerifyError, match=r"model.tflite: sha256 does not match"):
        require_signed(target)

    # A build's artifact folder signed in place with `edgec sign`.
    art = tmp_path / "art"
    shutil.copytree(build / "cortex-m4", art)
    with pytest.raises(VerifyError, match=r"unsigned"):
        require_signed(art)
    sign_dir(art, keys["release"])
    assert require_signed(art, keys["allowed"]) == "release@example.com"
    (art / "model.extra.tflite").write_bytes((art / "model.tflite").read_bytes())
    with pytest.raises(VerifyError, match=r"model.extra.tflite: not listed"):
        require_signed(art)
    (art / "model.extra.tflite").unlink()
    sign_dir(art, keys["mallory"])
    with pytest.raises(VerifyError, match=r"not in"):
        require_signed(art)


def test_deploy_refuses_tampered_or_unsigned_artifacts(
    build: Path, keys: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from click.testing import CliRunner

    from edgec.cli import main
    from edgec.signing import ENV_ALLOWED_SIGNERS, sign_dir

    monkeypatch.delenv(ENV_ALLOWED_SIGNERS, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # the local device's work dir lives under HOME
    target = tmp_path / "rpi4"
    shutil.copytree(build / "rpi4", target)
    signers = ["--allowed-signers", str(keys["allowed"])]

    def deploy(*extra: str):
        return CliRunner().invoke(main, ["deploy", str(target), "--device", "local", *extra])

    unsigned = deploy(*signers)
    assert unsigned.exit_code == int(ExitCode.VERIFY) and "unsigned" in unsigned.stderr
    sign_dir(target, keys["release"])
    ok = deploy(*signers)
    assert ok.exit_code == 0, ok.stderr
    model = target / "model.tflite"
    model.write_bytes(_flip(model.read_bytes()))
    tampered = deploy(*signers)
    assert tampered.exit_code == int(ExitCode.VERIFY) and "model.tflite" in tampered.stderr
