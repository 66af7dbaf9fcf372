"""Signing releases and artifacts with an SSH key, and refusing unsigned ones.

A signature covers one file, ``SHA256SUMS``, which lists the sha256 of every
other file of a release bundle (or of a signed artifact folder); so one
signature covers all of them. Signing and checking are OpenSSH's own
(``ssh-keygen -Y sign`` / ``-Y verify``, namespace ``edgec-release``), with the
trusted keys in an OpenSSH ``allowed_signers`` file::

    release@example.com ssh-ed25519 AAAAC3Nza...

Signing is configured when an allowed-signers file is given, either as
``--allowed-signers FILE`` or in ``EDGEC_ALLOWED_SIGNERS``. Then
``require_signed`` (called by ``edgec deploy`` before anything is uploaded)
refuses an artifact or bundle that is unsigned, signed by an unknown key, or
whose files do not match what was signed.

Ed25519 and RSA signatures are deterministic, so signing does not break the
byte-for-byte reproducibility of a release.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from edgec.errors import UsageError, VerifyError

NAMESPACE = "edgec-release"
SUMS = "SHA256SUMS"
SIG = "SHA256SUMS.sig"
ENV_ALLOWED_SIGNERS = "EDGEC_ALLOWED_SIGNERS"

# Exactly what ssh-keygen writes. ssh-keygen itself tolerates some damage to the
# armour (a changed final newline); a signature file is checked byte for byte here.
_ARMOUR = re.compile(
    rb"-----BEGIN SSH SIGNATURE-----\n(?:[A-Za-z0-9+/=]{1,76}\n)+-----END SSH SIGNATURE-----\n"
)


def _ssh_keygen() -> str:
    exe = shutil.which("ssh-keygen")
    if exe is None:
        raise UsageError(
            "ssh-keygen not found on PATH; install the OpenSSH client to sign or verify"
        )
    return exe


def _run(args: list[str], stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(
            [_ssh_keygen(), *args],
            input=stdin,
            capture_output=True,
            timeout=120,
            stdin=None if stdin is not None else subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise VerifyError(f"ssh-keygen {' '.join(args[:2])} timed out") from exc


def _last_line(proc: subprocess.CompletedProcess[bytes]) -> str:
    lines = [ln for ln in proc.stderr.decode(errors="replace").splitlines() if ln.strip()]
    return lines[-1] if lines else f"exit status {proc.returncode}"


def sign_bytes(data: bytes, key: str | Path) -> bytes:
    """An armoured SSH signature of ``data`` by private ``key`` (or a public key in the agent)."""
    key_path = Path(key).expanduser()
    if not key_path.is_file():
        raise UsageError(
            f"--sign-key {key}: no such key file; give an OpenSSH private key "
            "(ssh-keygen -t ed25519 -f KEY)"
        )
    with tempfile.TemporaryDirectory(prefix="edgec-sign-") as tmp:
        payload = Path(tmp) / SUMS
        payload.write_bytes(data)
        proc = _run(["-Y", "sign", "-f", str(key_path), "-n", NAMESPACE, str(payload)])
        sig = payload.with_name(SIG)
        if proc.returncode != 0 or not sig.is_file():
            raise UsageError(f"signing with {key} failed: {_last_line(proc)}")
        return sig.read_bytes()


def resolve_allowed_signers(explicit: str | Path | None = None) -> Path | None:
    """The allowed-signers file: the option, else ``$EDGEC_ALLOWED_SIGNERS``; None if neither."""
    value = explicit if explicit not in (None, "") else os.environ.get(ENV_ALLOWED_SIGNERS) or None
    if value is None:
        return None
    path = Path(value).expanduser()
    if not path.is_file():
        where = "--allowed-signers" if explicit not in (None, "") else ENV_ALLOWED_SIGNERS
        raise UsageError(
            f"{where}={value}: no such file; give an OpenSSH allowed_signers file "
            "(lines 'identity key-type base64-key')"
        )
    return path


def verify_signature(
    data: bytes, signature: bytes, allowed_signers: Path | None, where: str
) -> str:
    """Check ``signature`` over ``data``; return who signed it.

    With ``allowed_signers`` the key must be listed there (``ssh-keygen -Y
    verify``) and the identity is returned. Without, only the signature's
    integrity is checked against the key it embeds (``-Y check-novalidate``):
    it proves nothing about who signed, and the result says "untrusted key".
    """
    if _ARMOUR.fullmatch(signature) is None:
        raise VerifyError(f"{where}: not an SSH signature file (damaged armour)")
    with tempfile.TemporaryDirectory(prefix="edgec-verify-") as tmp:
        sig_path = Path(tmp) / SIG
        sig_path.write_bytes(signature)
        if allowed_signers is None:
            proc = _run(["-Y", "check-novalidate", "-n", NAMESPACE, "-s", str(sig_path)], data)
            if proc.returncode != 0:
                raise VerifyError(f"{where}: signature does not match {SUMS}: {_last_line(proc)}")
            return "untrusted key (no allowed-signers file given)"
        found = _run(["-Y", "find-principals", "-s", str(sig_path), "-f", str(allowed_signers)])
        principals = found.stdout.decode(errors="replace").split()
        if found.returncode != 0 or not principals:
            raise VerifyError(f"{where}: signed by a key that is not in {allowed_signers}")
        for principal in principals:
            proc = _run(
                [
                    "-Y",
                    "verify",
                    "-f",
                    str(allowed_signers),
                    "-I",
                    principal,
                    "-n",
                    NAMESPACE,
                    "-s",
                    str(sig_path),
                ],
                data,
            )
            if proc.returncode == 0:
                return principal
        raise VerifyError(
            f"{where}: signature does not match {SUMS} (signer {principals[0]}): {_last_line(proc)}"
        )


def sign_dir(directory: str | Path, key: str | Path) -> tuple[Path, Path]:
    """``edgec sign DIR``: write ``SHA256SUMS`` (every file) and its ``.sig`` into a folder."""
    from edgec.bundle_verify import format_sums, sha256_hex
    from edgec.report import write_atomic

    root = Path(directory)
    if not root.is_dir():
        raise UsageError(f"{root}: not a directory; give an artifact folder OUT/<model>/<target>")
    digests = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            raise UsageError(
                f"{path}: a symlink; an artifact folder to sign holds plain files only"
            )
        if path.is_file() and rel not in (SUMS, SIG) and not path.name.startswith("."):
            digests[rel] = sha256_hex(path.read_bytes())
    sums = format_sums(digests)
    signature = sign_bytes(sums, key)
    write_atomic(root / SUMS, sums)
    write_atomic(root / SIG, signature)
    return root / SUMS, root / SIG


def require_signed(
    artifact_or_bundle: str | Path, allowed_signers: str | Path | None = None
) -> str | None:
    """Refuse (``VerifyError``, exit 7) an unsigned or tampered artifact when signing is configured.

    ``artifact_or_bundle`` is a release bundle (``.tar.gz``), an extracted
    bundle or one of its target folders, an artifact folder signed with ``edgec
    sign``, or a ``.tflite`` file inside one of those. ``allowed_signers`` is
    the ``--allowed-signers`` option (``None`` falls back to
    ``$EDGEC_ALLOWED_SIGNERS``). Returns the signer's identity, or ``None`` when
    signing is not configured (nothing is checked then).
    """
    from edgec.bundle_verify import verify_bundle, verify_signed_dir

    trusted = resolve_allowed_signers(allowed_signers)
    if trusted is None:
        return None
    path = Path(artifact_or_bundle)
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz")):
        return verify_bundle(path, trusted, probe=False).signer
    if not path.exists():
        raise VerifyError(f"{path}: no such artifact or bundle to check the signature of")
    return verify_signed_dir(path, trusted)
