"""``edgec release``: one build's artifacts, results and evidence as a reproducible bundle.

A release gathers every target folder of one build (``OUT/<model>/<target>/``:
models, manifests, bench results, reports), adds a generated ``MODEL_CARD.md``,
a build-level report, ``release.json`` and ``SHA256SUMS`` (optionally signed,
``SHA256SUMS.sig``), and writes ``dist/<name>-<version>.tar.gz`` plus a
``SHA256SUMS`` line for it next to the bundle.

Reproducible: the same build gives a byte-identical bundle. Entries are sorted,
every mtime is ``SOURCE_DATE_EPOCH`` (0 when unset), owners are 0/0 with empty
names, modes are 0644/0755, and the gzip header has no name and mtime 0.
Nothing in the bundle depends on the clock, the user or the order of the disk.

An artifact whose budget checks failed is refused (``BudgetError``) unless
``allow_failed``; the model card then says which budgets failed.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import stat
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from edgec.artifact import MANIFEST, dump_json
from edgec.bundle_verify import RELEASE_JSON, check_manifests, format_sums, sha256_hex
from edgec.errors import BudgetError, InputError, UsageError
from edgec.report import (
    REPORT_HTML,
    REPORT_MD,
    ArtifactData,
    artifact_report,
    build_report,
    fmt_bytes,
    fmt_ms,
    fmt_num,
    fmt_pct,
    load_artifact,
    target_dirs,
    write_atomic,
)
from edgec.signing import SIG, SUMS, sign_bytes

RELEASE_SCHEMA = "edgec.release/1"
MODEL_CARD = "MODEL_CARD.md"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


@dataclass(frozen=True, kw_only=True)
class ReleaseResult:
    bundle: Path
    sha256: str
    name: str
    version: str
    root: str
    targets: list[str]
    files: int
    bytes: int
    signed: bool
    sums: Path  # the SHA256SUMS next to the bundle
    failed_budgets: list[str]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["bundle"], d["sums"] = str(self.bundle), str(self.sums)
        return d


def source_date_epoch() -> int:
    """The fixed mtime for every entry: ``$SOURCE_DATE_EPOCH`` (reproducible-builds.org), else 0."""
    raw = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not raw:
        return 0
    if not raw.isdigit():
        raise UsageError(f"SOURCE_DATE_EPOCH={raw!r}: must be a whole number of seconds since 1970")
    return int(raw)


def _artifacts(build_dir: Path) -> list[ArtifactData]:
    if not build_dir.is_dir():
        raise InputError(f"{build_dir}: no such build folder; give OUT/<model> from edgec build")
    dirs = [build_dir] if (build_dir / MANIFEST).is_file() else target_dirs(build_dir)
    if not dirs:
        raise InputError(
            f"{build_dir}: no target folders with a {MANIFEST}; give OUT/<model> from edgec build"
        )
    return [load_artifact(d) for d in dirs]


def _check_name(value: str, what: str) -> str:
    if not _NAME.fullmatch(value):
        raise UsageError(
            f"--{what} {value!r}: use letters, digits and . _ + - (starting with a letter or digit)"
        )
    return value


def _default_version(items: list[ArtifactData]) -> str:
    """The model's own version if its manifest has one, else its source hash (stable per model)."""
    for it in items:
        for v in (it.typed.model.extra.get("version"), it.manifest.get("version")):
            if isinstance(v, str) and v:
                return v
    sha = items[0].typed.model.sha256
    if re.fullmatch(r"[0-9a-f]{12,}", sha):
        return f"0.0.0+{sha[:12]}"
    raise UsageError("no version in the manifests (model.version) or model sha256; give --version")


def _read_target(item: ArtifactData) -> dict[str, tuple[bytes, int]]:
    """Every file of one target folder: relative path -> (content, mode)."""
    from edgec.progress import track

    out: dict[str, tuple[bytes, int]] = {}
    paths = sorted(item.path.rglob("*"))
    for path in track(paths, f"reading {item.target}"):
        rel = path.relative_to(item.path).as_posix()
        if any(part.startswith(".") for part in PurePosixPath(rel).parts):
            continue  # temp files and editor droppings are never part of an artifact
        if path.is_symlink():
            raise InputError(f"{path}: a symlink; an artifact folder holds plain files only")
        if path.is_dir():
            continue
        if rel in (SUMS, SIG):
            continue  # a per-folder signature (edgec sign) is replaced by the bundle's
        st = path.stat()
        mode = 0o755 if st.st_mode & stat.S_IXUSR else 0o644
        out[rel] = (path.read_bytes(), mode)
    # A report is always included; one the build did not write is rendered now.
    if REPORT_HTML not in out or REPORT_MD not in out:
        html_text, md_text = artifact_report(item)
        out.setdefault(REPORT_HTML, (html_text.encode(), 0o644))
        out.setdefault(REPORT_MD, (md_text.encode(), 0o644))
    return out


def release(
    build_dir: str | Path,
    *,
    version: str | None = None,
    name: str | None = None,
    out: str | Path = "dist",
    allow_failed: bool = False,
    sign_key: str | Path | None = None,
) -> ReleaseResult:
    """Package a build (``OUT/<model>`` or one target folder) as ``out/<name>-<version>.tar.gz``."""
    build = Path(build_dir)
    items = _artifacts(build)
    failed = [it.target for it in items if not it.typed.budgets.ok]
    if failed and not allow_failed:
        first = next(it for it in items if it.target in failed)
        checks = [c.name for c in first.typed.budgets.checks if not c.ok]
        raise BudgetError(
            f"{first.path / MANIFEST}: budget checks failed ({', '.join(checks) or '?'})"
            f" for target{'s' * (len(failed) > 1)} {', '.join(failed)}; refusing to "
            "release it (rebuild within budget, or pass --allow-failed)"
        )
    name = _check_name(name or items[0].model_name, "name")
    version = _check_name(version or _default_version(items), "version")
    root = f"{name}-{version}"
    mtime = source_date_epoch()

    files: dict[str, tuple[bytes, int]] = {}
    for it in items:
        prefix = "" if it.path == build else f"{it.path.name}/"
        for rel, entry in _read_target(it).items():
            files[prefix + rel] = entry
    # A folder whose manifest does not match its own files is refused before it is signed.
    check_manifests({k: v[0] for k, v in files.items()}, str(build))
    if items[0].path != build:  # a build folder: its summary report goes at the top
        summary_html, summary_md = build_report(items, title=name)
        files[REPORT_HTML] = (summary_html.encode(), 0o644)
        files[REPORT_MD] = (summary_md.encode(), 0o644)
    files[MODEL_CARD] = (
        model_card(items, name=name, version=version, failed=failed).encode(),
        0o644,
    )
    info = {
        "schema": RELEASE_SCHEMA,
        "name": name,
        "version": version,
        "targets": [it.target for it in items],
        "source_date_epoch": mtime,
        "budgets_failed": failed,
        "released_with_failed_budgets": bool(failed),
    }
    files[RELEASE_JSON] = (dump_json(info).encode(), 0o644)

    sums = format_sums({rel: sha256_hex(content) for rel, (content, _) in files.items()})
    files[SUMS] = (sums, 0o644)
    if sign_key is not None:
        files[SIG] = (sign_bytes(sums, sign_key), 0o644)

    blob = pack(root, files, mtime)
    out_dir = Path(out)
    bundle = out_dir / f"{root}.tar.gz"
    write_atomic(bundle, blob)
    digest = sha256_hex(blob)
    side = _update_sidecar(out_dir / SUMS, bundle.name, digest)
    return ReleaseResult(
        bundle=bundle,
        sha256=digest,
        name=name,
        version=version,
        root=root,
        targets=[it.target for it in items],
        files=len(files),
        bytes=len(blob),
        signed=sign_key is not None,
        sums=side,
        failed_budgets=failed,
    )


def pack(root: str, files: dict[str, tuple[bytes, int]], mtime: int) -> bytes:
    """A canonical ``.tar.gz``: ``root/`` plus ``files`` (path -> (content, mode)), sorted."""
    dirs = {root}
    for rel in files:
        parent = PurePosixPath(rel).parent
        while str(parent) != ".":
            dirs.add(f"{root}/{parent}")
            parent = parent.parent
    entries = sorted(
        [(d, None) for d in dirs] + [(f"{root}/{r}", files[r]) for r in files], key=lambda e: e[0]
    )
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, entry in entries:
            info = tarfile.TarInfo(path)
            info.mtime, info.uid, info.gid, info.uname, info.gname = mtime, 0, 0, "", ""
            if entry is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                content, mode = entry
                info.size, info.mode = len(content), mode
                tar.addfile(info, io.BytesIO(content))
    out = io.BytesIO()
    # filename="" and mtime=0: no name and no time in the gzip header.
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, compresslevel=9, mtime=0) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def _update_sidecar(path: Path, bundle_name: str, digest: str) -> Path:
    """Add or replace this bundle's line in ``dist/SHA256SUMS`` (other bundles' lines are kept)."""
    lines: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            hexdigest, sep, fname = line.partition("  ")
            if sep and len(hexdigest) == 64:
                lines[fname] = hexdigest
    lines[bundle_name] = digest
    write_atomic(path, format_sums(lines))
    return path


# ------------------------------------------------------------------ model card
def _latency_rows(it: ArtifactData) -> list[str]:
    rows = []
    for r in it.runs:
        if r.error:
            rows.append(f"| {it.target} | {r.file} | unreadable | | | | |")
            continue
        lat = r.latency
        rows.append(
            f"| {it.target} | {r.device} | {r.runtime} | {fmt_num(r.threads)} | "
            f"{fmt_num(lat.get('count'))} | {fmt_ms(lat.get('p50'))} | "
            f"{fmt_ms(lat.get('p90'))} | {fmt_ms(lat.get('p99'))} | "
            f"{fmt_bytes(r.peak_memory)} |"
        )
    return rows


def _checks_text(budgets: dict[str, Any]) -> str:
    return ", ".join(
        f"{c.get('name')} {fmt_num(c.get('value'))} ≤ {fmt_num(c.get('limit'))}"
        f" {'ok' if c.get('ok') else 'FAILED'}"
        for c in budgets.get("checks") or []
        if isinstance(c, dict)
    )


def _params(record: dict[str, Any]) -> str:
    return ", ".join(f"{k}={fmt_num(v)}" for k, v in sorted((record.get("params") or {}).items()))


def model_card(items: list[ArtifactData], *, name: str, version: str, failed: list[str]) -> str:
    """``MODEL_CARD.md``: intended targets, compression, accuracy and latency, and how measured."""
    first = items[0].manifest
    model = first.get("model") or {}
    data = first.get("data") or {}
    synthetic = ", synthetic inputs" if data.get("synthetic") else ""
    lines = [f"# Model card: {name} {version}", ""]
    lines += [
        f"- Model: `{fmt_num(model.get('name'))}` ({fmt_num(model.get('format'))}), "
        f"source sha256 `{fmt_num(model.get('sha256'))}`",
        f"- Built with edgec {fmt_num(first.get('edgec_version'))}",
        "",
    ]
    if failed:
        lines += [
            f"> **Warning:** released with failed budget checks for {', '.join(failed)} "
            "(`--allow-failed`). See the budgets below.",
            "",
        ]

    lines += [
        "## Intended targets",
        "",
        "| target | description | runtime | arch | quantization | I/O | budgets |",
        "|---|---|---|---|---|---|---|",
    ]
    for it in items:
        t = it.manifest.get("target") or {}
        limits = ", ".join(
            f"{k}={fmt_num(v)}"
            for k, v in sorted((t.get("budgets") or {}).items())
            if v is not None
        )
        lines.append(
            f"| {it.target} | {fmt_num(t.get('description'))} | {fmt_num(t.get('runtime'))}"
            f" | {fmt_num(t.get('arch'))} | {fmt_num(t.get('quantization'))} | "
            f"{fmt_num(t.get('input_dtype'))}/{fmt_num(t.get('output_dtype'))} | "
            f"{limits or '–'} |"
        )

    lines += ["", "## Compression applied", ""]
    for it in items:
        passes = [p for p in it.manifest.get("passes") or [] if isinstance(p, dict)]
        quant = ", ".join(str(a.get("quantization")) for a in it.artifacts) or "–"
        if not passes:
            lines.append(f"- **{it.target}**: no compression passes; quantization: {quant}")
            continue
        steps = "; ".join(
            f"`{p.get('id')}` ({_params(p)})"
            f" params {fmt_num(p.get('params_before'))} → {fmt_num(p.get('params_after'))}"
            for p in passes
        )
        lines.append(f"- **{it.target}**: {steps}; then quantization: {quant}")

    lines += [
        "",
        "## Accuracy and size per target",
        "",
        "| target | file | quantization | bytes | gzip | accuracy | drop vs float32 | "
        "host latency |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for it in items:
        base = it.baseline
        if base:
            lines.append(
                f"| {it.target} | float32 baseline | float32 | {fmt_bytes(base.get('bytes'))}"
                f" | {fmt_bytes(base.get('gzip_bytes'))} | {fmt_pct(base.get('accuracy'))} "
                f"| – | {fmt_ms(base.get('host_latency_ms'))} |"
            )
        for a in it.artifacts:
            m = a.get("metrics") or {}
            lines.append(
                f"| {it.target} | {fmt_num(a.get('file'))} | {fmt_num(a.get('quantization'))}"
                f" | {fmt_bytes(a.get('bytes'))} | {fmt_bytes(a.get('gzip_bytes'))} | "
                f"{fmt_pct(m.get('accuracy'))} | {fmt_pct(m.get('accuracy_drop'))} | "
                f"{fmt_ms(m.get('host_latency_ms'))} |"
            )

    lines += ["", "## Latency and memory on devices", ""]
    rows = [r for it in items for r in _latency_rows(it)]
    if rows:
        lines += [
            "| target | device | runtime | threads | runs | p50 | p90 | p99 | peak memory |",
            "|---|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    else:
        lines.append("Not benchmarked on a device yet (`edgec bench` writes `results/*.json`).")

    lines += ["", "## Budgets", ""]
    for it in items:
        b = it.manifest.get("budgets") or {}
        checks = _checks_text(b)
        verdict = "ok" if b.get("ok") else "FAILED" if b.get("ok") is False else "not checked"
        lines.append(f"- **{it.target}**: {verdict}" + (f" ({checks})" if checks else ""))
        for r in it.runs:  # the bench checks the latency and RAM budgets on the device
            rb = r.data.get("budgets")
            if isinstance(rb, dict) and rb.get("checks"):
                lines.append(f"  - on {r.device}: {_checks_text(rb)}")

    params = next(
        (
            r.data.get("params")
            for it in items
            for r in it.runs
            if isinstance(r.data.get("params"), dict)
        ),
        None,
    )
    lines += [
        "",
        "## How these numbers were measured",
        "",
        f"- **Accuracy** is top-1 on the validation split of `{fmt_num(data.get('source'))}` "
        f"({fmt_num(data.get('val'))} samples{synthetic}"
        "), run through the TFLite runtime for every model, the float32 baseline included, so "
        "differences come from compression and quantization. *Drop* is baseline accuracy "
        "minus artifact accuracy.",
        "- **Host latency** is the median of single-sample `invoke()` calls on the build "
        "machine after warm-up: a guide, not the device's number.",
        "- **Device latency** comes from the on-device harness (`results/*.json`): the model is "
        "loaded, run once, warmed up (discarded), then timed around `invoke()` only; raw "
        "samples are kept and summarised as p50/p90/p99."
        + (
            f" Settings: {', '.join(f'{k}={fmt_num(v)}' for k, v in sorted(params.items()))}."
            if params
            else ""
        ),
        "- **Memory** is the harness process's resident set size before and after loading "
        "the model and its peak (Linux `/proc/self/status`); for microcontrollers, the TFLM "
        "arena measured by the interpreter (see each manifest's `micro`).",
        "- **Size** is the `.tflite` file in bytes, and after `gzip -9` as a download guide.",
        "",
        "## Versions",
        "",
    ]
    lines += [f"- {k}: {fmt_num(v)}" for k, v in sorted((first.get("versions") or {}).items())]
    lines += [
        "",
        "Every file in this bundle is listed in `SHA256SUMS`; check it with "
        "`edgec verify BUNDLE` (or `sha256sum -c SHA256SUMS` after extracting).",
        "",
    ]
    return "\n".join(lines)
