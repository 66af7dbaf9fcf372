"""The typed artifact: ``manifest.json`` as frozen dataclasses, and its one reader.

``edgec build`` writes one ``manifest.json`` per target folder; report, release,
verify, bench and replay read it back through ``read_manifest(dir)`` (a folder)
or ``parse_manifest(bytes, where)`` (a bundle member), never by poking at a dict.

API::

    from edgec.manifest import Manifest, read_manifest
    m = read_manifest(Path("out/tiny_cnn/rpi4"))   # -> Manifest, or ManifestError (exit 3)
    m.target_name, m.primary.sha256, m.budgets.ok, m.replay.seed
    m.to_dict()                                     # the JSON object, keys as written

Layout (top-level keys of the JSON, all kept from the untyped manifests):
``schema`` (the kind of file, ``edgec.manifest/1``), ``schema_version``
(``SCHEMA_VERSION``: counts layout changes; 1 was the untyped layout, which
had no such key), ``edgec_version``, ``model`` (``ModelFacts``), ``data``
(``DataFacts``), ``target`` (the profile, as ``Profile.to_dict()``), ``recipe``
and ``passes`` (lists of tables, owned by ``edgec.recipe`` and
``edgec.pipeline``), ``baseline``, ``artifacts`` (``ArtifactEntry`` each),
``budgets`` (``BudgetSection`` of ``edgec.budgets.BudgetCheck``), ``calibration``,
``replay`` (``Replay``: what ``edgec build --from-manifest`` needs), ``versions``,
and optionally ``micro`` (``MicroSection``, content from
``edgec.micro.MicroReport.to_dict()``) and ``search`` (``SearchSection``).

Sections written by other modules keep keys this module does not know in
``extra`` and write them back unchanged, so a new key there never breaks a
reader. A missing or wrongly typed known field is a one-line ``ManifestError``
naming the field (``manifest.json: field 'artifacts[0].sha256' missing``); an
old manifest (no ``schema_version``) or a foreign JSON file says so.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar, Union

from edgec.budgets import BudgetCheck
from edgec.errors import InputError

MANIFEST = "manifest.json"
SCHEMA = "edgec.manifest/1"
SCHEMA_VERSION = 2


class ManifestError(InputError):
    """A manifest that is missing, unreadable, old, foreign or off-schema."""


T = TypeVar("T", bound="Section")


class Section:
    """A dataclass that reads and writes itself from JSON by its type hints.

    ``to_dict`` writes every field (``extra``'s keys merged in at the top);
    ``from_dict`` checks each known field's presence and type and keeps unknown
    keys in ``extra`` when the class has one (``PASSTHROUGH``).
    """

    PASSTHROUGH: ClassVar[bool] = False

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.name == "extra":
                continue
            if value is None and f.metadata.get("omit_none"):
                continue
            out[f.name] = _dump(value)
        out.update(getattr(self, "extra", {}) or {})
        return out

    @classmethod
    def from_dict(cls: type[T], d: Any, where: str = "") -> T:
        return cls._parse(d, where)

    @classmethod
    def _parse(cls: type[T], d: Any, where: str) -> T:
        if not isinstance(d, dict):
            raise ManifestError(f"{MANIFEST}: field {where or 'top'!r} must be an object")
        hints = typing.get_type_hints(cls)
        kwargs: dict[str, Any] = {}
        known = set()
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name == "extra":
                continue
            known.add(f.name)
            path = f"{where}.{f.name}" if where else f.name
            if f.name not in d:
                has_default = (
                    f.default is not dataclasses.MISSING
                    or f.default_factory is not dataclasses.MISSING
                )
                if not has_default:
                    raise ManifestError(f"{MANIFEST}: field {path!r} missing")
                continue
            kwargs[f.name] = _load(hints[f.name], d[f.name], path)
        if cls.PASSTHROUGH:
            kwargs["extra"] = {k: v for k, v in d.items() if k not in known}
        return cls(**kwargs)


def _dump(value: Any) -> Any:
    if isinstance(value, Section):
        return value.to_dict()
    if isinstance(value, BudgetCheck):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_dump(v) for v in value]
    if isinstance(value, dict):
        return {k: _dump(v) for k, v in value.items()}
    return value


_KIND = {int: "a whole number", float: "a number", str: "a string", bool: "true or false"}


def _load(hint: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _load(inner[0], value, path)
        for a in inner:  # int | float and the like: the first that accepts it
            try:
                return _load(a, value, path)
            except ManifestError:
                continue
        raise ManifestError(f"{MANIFEST}: field {path!r} = {value!r} has the wrong type")
    if hint is Any:
        return value
    if isinstance(hint, type) and issubclass(hint, Section):
        return hint.from_dict(value, path)
    if hint is BudgetCheck:
        if not isinstance(value, dict):
            raise ManifestError(f"{MANIFEST}: field {path!r} must be an object")
        return BudgetCheck.from_dict(value, f"{MANIFEST}: field {path!r}")
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise ManifestError(f"{MANIFEST}: field {path!r} must be a list")
        item = args[0] if args else Any
        items = [_load(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ManifestError(f"{MANIFEST}: field {path!r} must be an object")
        return dict(value)
    if hint in _KIND:
        ok = isinstance(value, hint) and not (hint is not bool and isinstance(value, bool))
        if hint is float and isinstance(value, int) and not isinstance(value, bool):
            return value  # JSON does not tell 1 from 1.0
        if not ok:
            raise ManifestError(f"{MANIFEST}: field {path!r} = {value!r} must be {_KIND[hint]}")
        return value
    return value


# --------------------------------------------------------------------------- sections
@dataclass(frozen=True, kw_only=True)
class ModelFacts(Section):
    """The input model, as ``LoadedModel.describe()`` gives it."""

    PASSTHROUGH: ClassVar[bool] = True
    name: str
    source: str
    sha256: str
    format: str = ""
    loader: str = ""
    notes: list[str] = field(default_factory=list)
    input_shape: list[Any] = field(default_factory=list)
    output_shape: list[Any] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class DataFacts(Section):
    """The data set, as ``Dataset.describe()`` gives it, with the file's sha256."""

    PASSTHROUGH: ClassVar[bool] = True
    source: str
    synthetic: bool
    train: int = 0
    val: int = 0
    input_shape: list[Any] = field(default_factory=list)
    num_classes: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Metrics(Section):
    """Host measurements of one artifact (``edgec.evaluate``) against the float baseline."""

    PASSTHROUGH: ClassVar[bool] = True
    samples: int = 0
    accuracy: float | None = field(default=None, metadata={"omit_none": True})
    accuracy_drop: float | None = field(default=None, metadata={"omit_none": True})
    top1_agreement: float | None = field(default=None, metadata={"omit_none": True})
    max_abs_error: float | None = field(default=None, metadata={"omit_none": True})
    mean_abs_error: float | None = field(default=None, metadata={"omit_none": True})
    host_latency_ms: float | None = field(default=None, metadata={"omit_none": True})
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class ArtifactEntry(Section):
    """One ``.tflite`` of the folder: ``artifacts[]``; the first is ``model.tflite``."""

    PASSTHROUGH: ClassVar[bool] = True
    file: str
    quantization: str
    bytes: int
    gzip_bytes: int
    sha256: str
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    ops: dict[str, int] = field(default_factory=dict)
    param_count: int | None = None
    macs: int | None = None
    metrics: Metrics = field(default_factory=Metrics)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Baseline(Section):
    """The float32 conversion every artifact is measured against (flat in the JSON)."""

    bytes: int
    gzip_bytes: int
    sha256: str
    metrics: Metrics = field(default_factory=Metrics)

    def to_dict(self) -> dict[str, Any]:
        return {
            "bytes": self.bytes,
            "gzip_bytes": self.gzip_bytes,
            "sha256": self.sha256,
            **self.metrics.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Any, where: str = "baseline") -> Baseline:  # type: ignore[override]
        if not isinstance(d, dict):
            raise ManifestError(f"{MANIFEST}: field {where!r} must be an object")
        size = {k: d.get(k) for k in ("bytes", "gzip_bytes", "sha256")}
        for k, v in size.items():
            if v is None:
                raise ManifestError(f"{MANIFEST}: field '{where}.{k}' missing")
        rest = {k: v for k, v in d.items() if k not in size and k != "file"}
        return cls(
            bytes=_load(int, size["bytes"], f"{where}.bytes"),
            gzip_bytes=_load(int, size["gzip_bytes"], f"{where}.gzip_bytes"),
            sha256=_load(str, size["sha256"], f"{where}.sha256"),
            metrics=Metrics.from_dict(rest, where),
        )


@dataclass(frozen=True, kw_only=True)
class BudgetSection(Section):
    checks: tuple[BudgetCheck, ...]
    ok: bool
    kept_despite_failure: bool = False
    notes: list[str] = field(default_factory=list)  # figures not judged (edgec.budgets)


@dataclass(frozen=True, kw_only=True)
class Calibration(Section):
    size: int  # rows actually used
    synthetic: bool
    source: str


@dataclass(frozen=True, kw_only=True)
class Replay(Section):
    """What ``edgec build --from-manifest`` needs to make the same artifact again."""

    seed: int
    calibration_size: int  # as asked (``calibration.size`` is what the data allowed)
    epochs_scale: float
    model_sha256: str
    data_sha256: str | None  # None: demo or synthetic data, identified by ``data.source``
    data: str | None  # the data spec as given ("demo", a path, or None)
    recipe: list[dict[str, Any]] = field(default_factory=list)  # before the search's steps
    search: bool = False
    max_accuracy_drop: float | None = None


@dataclass(frozen=True, kw_only=True)
class MicroSection(Section):
    """The TFLM fit report (``MicroReport.to_dict()`` + ``choice``); other keys pass through."""

    PASSTHROUGH: ClassVar[bool] = True
    profile: str = ""
    model_bytes: int = 0
    flash: dict[str, Any] = field(default_factory=dict)
    ram: dict[str, Any] = field(default_factory=dict)
    arena: dict[str, Any] = field(default_factory=dict)
    choice: dict[str, Any] | None = field(default=None, metadata={"omit_none": True})
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class SearchCandidate(Section):
    """One row of the search's table (``search.Candidate.row()``)."""

    PASSTHROUGH: ClassVar[bool] = True
    label: str
    passes: list[dict[str, Any]] = field(default_factory=list)
    bytes: int | None = None
    gzip_bytes: int | None = None
    params: int | None = None
    accuracy: float | None = None
    accuracy_drop: float | None = None
    host_latency_ms: float | None = None
    fits_budgets: bool = False
    ok: bool = False
    seconds: float = 0.0
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class SearchSection(Section):
    """The accuracy-aware search (``SearchResult.to_dict()``)."""

    PASSTHROUGH: ClassVar[bool] = True
    met: bool
    chosen: str
    chosen_passes: list[dict[str, Any]] = field(default_factory=list)
    reference_accuracy: float = 0.0
    max_accuracy_drop: float = 0.0
    candidates: tuple[SearchCandidate, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Manifest(Section):
    schema: str
    schema_version: int
    edgec_version: str
    model: ModelFacts
    data: DataFacts
    target: dict[str, Any]  # Profile.to_dict(); Profile.from_dict reads it back
    recipe: list[dict[str, Any]]
    passes: list[dict[str, Any]]
    baseline: Baseline
    artifacts: tuple[ArtifactEntry, ...]
    budgets: BudgetSection
    calibration: Calibration
    replay: Replay
    versions: dict[str, str]
    micro: MicroSection | None = field(default=None, metadata={"omit_none": True})
    search: SearchSection | None = field(default=None, metadata={"omit_none": True})
    # The host's outputs on the fixed check inputs (edgec.agreement, reference-outputs.json).
    reference_outputs: dict[str, Any] | None = field(default=None, metadata={"omit_none": True})

    @property
    def target_name(self) -> str:
        return str(self.target.get("name", ""))

    @property
    def primary(self) -> ArtifactEntry:
        """``model.tflite``'s entry (the first)."""
        return self.artifacts[0]

    def profile(self) -> Any:
        """The target profile exactly as it was built with (an ``edgec.profiles.Profile``)."""
        from edgec.profiles import Profile

        return Profile.from_dict(self.target, where=f"{MANIFEST}: field 'target'")

    @classmethod
    def from_dict(cls, d: Any, where: str = "") -> Manifest:  # type: ignore[override]
        if not isinstance(d, dict) or d.get("schema") != SCHEMA:
            raise ManifestError(
                f"{MANIFEST}: field 'schema' is not {SCHEMA!r}: not an edgec manifest"
            )
        if "schema_version" not in d:
            raise ManifestError(
                f"{MANIFEST}: field 'schema_version' missing: written by an older edgec; "
                "rebuild the artifact with `edgec build`"
            )
        v = d["schema_version"]
        if v != SCHEMA_VERSION:
            raise ManifestError(
                f"{MANIFEST}: field 'schema_version' = {v!r}; this edgec reads version "
                f"{SCHEMA_VERSION}; rebuild the artifact with this edgec"
            )
        m = cls._parse(d, where)
        if not m.artifacts:
            raise ManifestError(f"{MANIFEST}: field 'artifacts' is empty")
        return m


# --------------------------------------------------------------------------- reading
def parse_manifest(raw: bytes | str, where: str) -> Manifest:
    """A ``Manifest`` from JSON text; errors name ``where`` and the field."""
    try:
        d = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{where}: unreadable manifest ({exc})") from exc
    try:
        return Manifest.from_dict(d)
    except ManifestError as exc:
        msg = str(exc)
        prefix = f"{MANIFEST}: "
        raise ManifestError(
            f"{where}: {msg[len(prefix) :] if msg.startswith(prefix) else msg}"
        ) from None


def read_manifest(target_dir: str | Path) -> Manifest:
    """The manifest of one artifact folder (``OUT/<model>/<target>/``)."""
    path = Path(target_dir) / MANIFEST
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ManifestError(
            f"{target_dir}: no {MANIFEST}; give an artifact folder written by edgec build"
        ) from None
    except OSError as exc:
        raise ManifestError(f"{path}: unreadable manifest ({exc})") from exc
    return parse_manifest(raw, str(path))


def dump_manifest(manifest: Manifest) -> str:
    """The JSON text written to ``manifest.json`` (sorted keys, stable across runs)."""
    return json.dumps(manifest.to_dict(), indent=2, sort_keys=True, default=str) + "\n"
