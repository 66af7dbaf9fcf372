"""``edgec verify BUNDLE``: proving a release bundle is exactly what was released.

(Model verification, accuracy against the float model, lives elsewhere; this
module checks files.) A bundle is ``<name>-<version>.tar.gz`` written by
``edgec release``: one top folder holding ``SHA256SUMS`` (the sha256 of every
other file, ``sha256sum -c`` compatible), optionally ``SHA256SUMS.sig``, the
model card, ``release.json`` and one folder per target. Verification checks,
and names the first file that fails:

1. the gzip stream (CRC, canonical header) and the tar structure: plain files
   and folders under one top folder, no duplicates, links or escaping paths,
   nothing hidden after the end of the archive;
2. every checksum in ``SHA256SUMS``, and that no file is missing or unlisted;
3. the signature over ``SHA256SUMS``, against an allowed-signers file when one
   is given (then a signature is required), else its integrity only;
4. every ``manifest.json`` against its files (sha256 and bytes);
5. that every model loads in the TFLite runtime (in a child process).

Any failure raises ``VerifyError`` (exit code 7). The bundle is read into
memory and never extracted.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from edgec.errors import InputError, VerifyError
from edgec.files import sha256_bytes
from edgec.manifest import ManifestError, parse_manifest
from edgec.signing import SIG, SUMS, verify_signature

RELEASE_JSON = "release.json"
MANIFEST = "manifest.json"
# What edgec release writes: gzip magic, deflate, no flags, mtime 0, max compression, OS unknown.
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
_SUM_LINE = re.compile(r"([0-9a-f]{64})  (\S(?:.*\S)?)")


sha256_hex = sha256_bytes  # the package's one sha256 helper (edgec.files)


def format_sums(digests: Mapping[str, str]) -> bytes:
    """``SHA256SUMS`` text: ``<hex>  <path>`` lines sorted by path, as ``sha256sum`` writes them."""
    return "".join(f"{digests[p]}  {p}\n" for p in sorted(digests)).encode()


def _check_path(rel: str, where: str) -> None:
    parts = PurePosixPath(rel).parts
    if (
        not rel
        or rel.startswith("/")
        or "\\" in rel
        or any(p in ("", ".", "..") for p in parts)
        or PurePosixPath(rel).as_posix() != rel
    ):
        raise VerifyError(f"{where}: unsafe or non-canonical path {rel!r}")


def parse_sums(data: bytes, where: str) -> dict[str, str]:
    """Strictly parse ``SHA256SUMS``: a malformed, duplicate or unsafe line is a VerifyError."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise VerifyError(f"{where}: {SUMS} is not UTF-8 text (damaged)") from exc
    if not text.endswith("\n"):
        raise VerifyError(f"{where}: {SUMS} does not end with a newline (damaged)")
    out: dict[str, str] = {}
    for n, line in enumerate(text[:-1].split("\n"), start=1):
        m = _SUM_LINE.fullmatch(line)
        if m is None:
            raise VerifyError(f"{where}: {SUMS} line {n} is not '<sha256>  <path>' (damaged)")
        digest, rel = m.groups()
        _check_path(rel, f"{where}: {SUMS} line {n}")
        if rel in out:
            raise VerifyError(f"{where}: {SUMS} lists {rel} twice")
        out[rel] = digest
    if list(out) != sorted(out):
        raise VerifyError(f"{where}: {SUMS} is not sorted by path (edited by hand?)")
    return out


@dataclass(frozen=True, kw_only=True)
class Bundle:
    path: Path
    sha256: str
    root: str  # the top folder, "<name>-<version>"
    files: dict[str, bytes]  # path relative to root -> content


def read_bundle(bundle: str | Path) -> Bundle:
    """Read and structurally check a bundle: gzip CRC and header, tar layout. Never extracts."""
    path = Path(bundle)
    try:
        blob = path.read_bytes()
    except FileNotFoundError as exc:
        raise InputError(
            f"{path}: no such bundle; give a .tar.gz written by edgec release"
        ) from exc
    except OSError as exc:
        raise InputError(f"{path}: cannot read the bundle ({exc})") from exc
    where = str(path)
    if blob[:10] != GZIP_HEADER:
        raise VerifyError(f"{where}: gzip header altered (not as edgec release writes it)")
    # One gzip member, CRC32 and length checked, and nothing after it (gzip.decompress
    # would quietly skip trailing zeros).
    stream = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        raw = stream.decompress(blob) + stream.flush()
    except zlib.error as exc:
        raise VerifyError(f"{where}: corrupt gzip stream ({exc})") from exc
    if not stream.eof:
        raise VerifyError(f"{where}: truncated gzip stream")
    if stream.unused_data:
        raise VerifyError(f"{where}: {len(stream.unused_data)} extra bytes after the gzip stream")
    files: dict[str, bytes] = {}
    root: str | None = None
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
            for member in tar:
                name = member.name.rstrip("/") if member.isdir() else member.name
                _check_path(name, where)
                top, _, rel = name.partition("/")
                if root is None:
                    root = top
                if top != root:
                    raise VerifyError(f"{where}: {name} is outside the top folder {root}/")
                if member.isdir():
                    continue
                if not member.isreg():
                    raise VerifyError(
                        f"{where}: {name} is not a plain file (links and devices "
                        "are never in a bundle)"
                    )
                if not rel:
                    raise VerifyError(f"{where}: {name} is a file where the top folder should be")
                if rel in files:
                    raise VerifyError(f"{where}: {name} appears twice in the archive")
                fh = tar.extractfile(member)
                files[rel] = fh.read() if fh is not None else b""
            end = tar.offset
    except tarfile.TarError as exc:
        raise VerifyError(f"{where}: corrupt tar archive ({exc})") from exc
    # tarfile stops quietly at a damaged header; whatever follows the end must be zero padding.
    if raw[end:].strip(b"\0"):
        raise VerifyError(
            f"{where}: damaged tar header or data after the end of the archive (offset {end})"
        )
    if root is None:
        raise VerifyError(f"{where}: empty archive")
    return Bundle(path=path, sha256=sha256_hex(blob), root=root, files=files)


def check_sums(
    files: Mapping[str, bytes],
    where: str,
    *,
    allowed_signers: Path | None,
    require_signature: bool,
    ignore: Callable[[str], bool] = lambda rel: False,
) -> str | None:
    """Check ``SHA256SUMS`` and its signature over ``files``; return the signer (None: unsigned).

    Paths for which ``ignore`` is true may be missing, changed or unlisted.
    """
    if SUMS not in files:
        raise VerifyError(f"{where}: no {SUMS}; not an edgec release bundle or signed folder")
    sums = parse_sums(files[SUMS], where)
    signer = None
    if SIG in files:
        signer = verify_signature(files[SUMS], files[SIG], allowed_signers, f"{where}/{SIG}")
    elif require_signature:
        raise VerifyError(
            f"{where}: unsigned (no {SIG}), and signing is required "
            "(an allowed-signers file is configured)"
        )
    for rel, digest in sums.items():
        if rel in (SUMS, SIG):
            raise VerifyError(f"{where}: {SUMS} lists {rel}, which it cannot cover")
        if ignore(rel):
            continue
        if rel not in files:
            raise VerifyError(f"{where}/{rel}: listed in {SUMS} but missing")
        if sha256_hex(files[rel]) != digest:
            raise VerifyError(f"{where}/{rel}: sha256 does not match {SUMS} (file altered)")
    for rel in sorted(files):
        if rel not in sums and rel not in (SUMS, SIG) and not ignore(rel):
            raise VerifyError(f"{where}/{rel}: not listed in {SUMS} (file added)")
    return signer


def check_manifests(files: Mapping[str, bytes], where: str) -> list[str]:
    """Check every ``manifest.json``'s artifacts against the files; return the manifests checked."""
    checked = []
    for rel in sorted(r for r in files if PurePosixPath(r).name == MANIFEST):
        folder = PurePosixPath(rel).parent
        try:
            manifest = parse_manifest(files[rel], f"{where}/{rel}")
        except ManifestError as exc:  # verification's exit code, the reader's one line
            raise VerifyError(str(exc)) from None
        for a in manifest.artifacts:
            target = (folder / a.file).as_posix()
            if target not in files:
                raise VerifyError(f"{where}/{target}: named in {rel} but missing from the bundle")
            content = files[target]
            if a.bytes != len(content):
                raise VerifyError(
                    f"{where}/{target}: {len(content)} bytes, but {rel} says {a.bytes}"
                )
            if a.sha256 != sha256_hex(content):
                raise VerifyError(f"{where}/{target}: sha256 does not match {rel}")
        checked.append(rel)
    return checked


def probe_models(files: Mapping[str, bytes], where: str) -> list[str]:
    """Load every ``.tflite`` in the runtime (child process); return their paths."""
    from edgec.progress import track
    from edgec.runtime import probe_tflite

    models = sorted(r for r in files if r.endswith(".tflite"))
    for rel in track(models, "loading models"):
        try:
            probe_tflite(files[rel], f"{where}/{rel}")
        except InputError as exc:
            raise VerifyError(str(exc)) from exc
    return models


def _sidecar(bundle: Bundle) -> bool | None:
    """Check the bundle against ``SHA256SUMS`` next to it, if that lists it; None when absent."""
    side = bundle.path.parent / SUMS
    if not side.is_file():
        return None
    for line in side.read_text(encoding="utf-8", errors="replace").splitlines():
        m = _SUM_LINE.fullmatch(line)
        if m and m.group(2) == bundle.path.name:
            if m.group(1) != bundle.sha256:
                raise VerifyError(f"{bundle.path}: sha256 does not match {side}")
            return True
    return None


@dataclass(frozen=True, kw_only=True)
class VerifyResult:
    bundle: str
    sha256: str
    root: str
    name: str
    version: str
    files: int
    targets: list[str]
    manifests: list[str]
    models: list[str]
    signed: bool
    signer: str | None
    trusted: bool  # the signer is in an allowed-signers file
    sidecar_checked: bool
    checks: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {"ok": True, **asdict(self)}


def verify_bundle(
    bundle: str | Path,
    allowed_signers: str | Path | None = None,
    *,
    require_signature: bool | None = None,
    probe: bool = True,
) -> VerifyResult:
    """Verify a release bundle; raise ``VerifyError`` naming the first thing that is wrong.

    A given ``allowed_signers`` file makes a trusted signature required (unless
    ``require_signature=False``).
    """
    trusted = Path(allowed_signers) if allowed_signers is not None else None
    if trusted is not None and not trusted.is_file():
        raise InputError(f"{trusted}: no such allowed-signers file")
    if require_signature is None:
        require_signature = trusted is not None
    b = read_bundle(bundle)
    where = f"{b.path.name}:{b.root}"
    checks = ["gzip and tar structure"]
    signer = check_sums(
        b.files, where, allowed_signers=trusted, require_signature=require_signature
    )
    checks.append(f"{len(b.files) - 1 - (SIG in b.files)} checksums in {SUMS}")
    if signer is not None:
        checks.append(f"signature by {signer}")
    manifests = check_manifests(b.files, where)
    checks.append(f"{len(manifests)} manifests against their files")
    # After the inside: a changed member is named there, not just as "the bundle changed".
    sidecar = _sidecar(b)
    if sidecar:
        checks.append(f"bundle sha256 against {SUMS} next to it")
    models = probe_models(b.files, where) if probe else []
    if probe:
        checks.append(f"{len(models)} models load in the runtime")
    info: dict[str, Any] = {}
    if RELEASE_JSON in b.files:
        try:
            info = json.loads(b.files[RELEASE_JSON])
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise VerifyError(f"{where}/{RELEASE_JSON}: not valid JSON ({exc})") from exc
    return VerifyResult(
        bundle=str(b.path),
        sha256=b.sha256,
        root=b.root,
        name=str(info.get("name", "")),
        version=str(info.get("version", "")),
        files=len(b.files),
        targets=sorted({str(PurePosixPath(m).parent) for m in manifests}),
        manifests=manifests,
        models=models or sorted(r for r in b.files if r.endswith(".tflite")),
        signed=signer is not None,
        signer=signer,
        trusted=signer is not None and trusted is not None,
        sidecar_checked=bool(sidecar),
        checks=checks,
    )


# Files a bench or a re-render may add to a signed artifact folder after signing.
_DERIVED = re.compile(r"(?:.*/)?(?:results/.*|report\.html|report\.md)")


class _FolderFiles(Mapping[str, bytes]):
    """A signed folder's files, read only when checked: the listed ones and those in scope."""

    def __init__(self, root: Path, scope: Path) -> None:
        self.root = root
        names = {SUMS, SIG}
        sums = root / SUMS
        for line in sums.read_text(encoding="utf-8", errors="replace").splitlines():
            m = _SUM_LINE.fullmatch(line)
            if m:
                names.add(m.group(2))
        for f in scope.rglob("*"):
            if f.is_symlink():
                raise VerifyError(f"{f}: a symlink in a signed folder (plain files only)")
            rel = f.relative_to(root).as_posix()
            if not any(part.startswith(".") for part in PurePosixPath(rel).parts):
                names.add(rel)
        # Symlinks are never followed: a listed file replaced by a link counts as missing.
        self._names = sorted(
            n for n in names if (root / n).is_file() and not (root / n).is_symlink()
        )

    def __getitem__(self, rel: str) -> bytes:
        if rel not in self._names:
            raise KeyError(rel)
        return (self.root / rel).read_bytes()

    def __iter__(self) -> Any:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def verify_signed_dir(path: Path, allowed_signers: Path) -> str:
    """Check a signed folder (an extracted bundle, one of its targets, or an ``edgec sign``ed
    artifact folder) or a ``.tflite`` inside one; return the signer.

    The ``SHA256SUMS`` in ``path``'s folder or the one above must be signed by a
    key in ``allowed_signers``, every file it lists must match, and every file
    under ``path`` must be listed. Bench results and reports are not checked (a
    bench writes them after signing, and they are never deployed); any other
    unlisted or changed file is refused.
    """
    scope = path if path.is_dir() else path.parent
    root = next((d for d in (scope, scope.parent) if (d / SUMS).is_file()), None)
    if root is None:
        raise VerifyError(
            f"{path}: unsigned (no {SUMS} here or in the folder above); sign it with "
            "`edgec sign DIR --key KEY` or deploy a signed release bundle"
        )
    signer = check_sums(
        _FolderFiles(root, scope),
        str(root),
        allowed_signers=allowed_signers,
        require_signature=True,
        ignore=lambda rel: _DERIVED.fullmatch(rel) is not None,
    )
    assert signer is not None  # require_signature=True
    return signer
