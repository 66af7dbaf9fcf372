"""Target profiles: the schema, and loading built-in or user TOML files.

A profile is data (one TOML file in ``targets/``, installed as ``edgec.targets``)
that says what a device runs and what it can afford. A file may ``extends``
another profile, by built-in name or by a path relative to itself; tables
(``budgets``, ``micro``) merge key by key, everything else is replaced.

The schema is checked strictly when a profile is loaded: an unknown key, a
wrong type or a bad value fails at once with the file, the key and the valid
choices, never later deep inside a build.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Any

from edgec.errors import ProfileError, UsageError
from edgec.objective import Objective, default_objective
from edgec.schemes import FloatFallback, IODtype, Quantization, scheme


class Runtime(StrEnum):
    LITERT = "litert"  # LiteRT (TFLite) interpreter on a CPU with an OS
    TFLM = "tflm"  # TensorFlow Lite for Microcontrollers, bare metal


# Quantization, IODtype and FloatFallback come from the scheme table (edgec.schemes);
# profiles name them, and this module re-exports them for its callers.


@dataclass(frozen=True, kw_only=True)
class Budgets:
    """Hard limits a build is checked against; ``None`` means unchecked."""

    model_bytes: int | None = None  # the .tflite file
    flash_bytes: int | None = None  # model + runtime code (microcontrollers)
    ram_bytes: int | None = None  # arena + persistent buffers, or process RSS
    latency_ms: float | None = None  # steady-state p50 on the device
    max_accuracy_drop: float | None = None  # absolute, 0.01 = one point


@dataclass(frozen=True, kw_only=True)
class Micro:
    """Microcontroller facts that the TFLM fit check needs."""

    arena_margin: float = 0.10  # recommended arena = measured * (1 + margin)
    clock_mhz: int | None = None
    runtime_code_bytes: int | None = None  # override the flash estimate of TFLM itself


@dataclass(frozen=True, kw_only=True)
class Profile:
    name: str
    description: str
    arch: str
    runtime: Runtime
    threads: int
    quantization: Quantization
    variants: tuple[Quantization, ...] = ()
    input_dtype: IODtype = IODtype.FLOAT32
    output_dtype: IODtype = IODtype.FLOAT32
    # Whether an integer-only artifact may keep float ops that have no int8
    # kernel; unset, it follows the runtime (LiteRT allows, TFLM refuses).
    float_fallback: FloatFallback = FloatFallback.ALLOW
    budgets: Budgets = field(default_factory=Budgets)
    micro: Micro | None = None
    # What the search optimizes (edgec.objective); unset in a file, it follows the runtime.
    objective: Objective = Objective.LATENCY
    passes: tuple[dict[str, Any], ...] = ()  # the default recipe, checked by edgec.recipe
    source: str = ""  # the file it came from, for messages

    @property
    def is_micro(self) -> bool:
        return self.runtime is Runtime.TFLM

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, where: str = "profile") -> Profile:
        """A profile back from ``to_dict()`` (a manifest's ``target``), checked by the same schema."""
        if not isinstance(d, dict) or not isinstance(d.get("name"), str):
            raise ProfileError(f"{where}: not a profile (no 'name')")
        raw: dict[str, Any] = {}
        for key, value in d.items():
            if key in ("name", "source") or value is None:
                continue
            if isinstance(value, dict):
                value = {k: v for k, v in value.items() if v is not None}
            raw[key] = value
        return _build(d["name"], raw, str(d.get("source") or where))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, StrEnum):
        return str(value)
    return value


_BUILTIN_PACKAGE = "edgec.targets"
_TOP_KEYS = {f.name for f in dataclasses.fields(Profile)} - {"name", "source"} | {"extends"}
_TABLES = {"budgets": Budgets, "micro": Micro}


def builtin_names() -> list[str]:
    files = resources.files(_BUILTIN_PACKAGE).iterdir()
    return sorted(p.name[: -len(".toml")] for p in files if p.name.endswith(".toml"))


def load_profile(name_or_path: str | Path) -> Profile:
    """Load a built-in profile by name, or a user profile from a ``.toml`` path."""
    raw, source = _resolve(str(name_or_path), seen=())
    name = Path(source).stem if source else str(name_or_path)
    return _build(name, raw, source)


def load_profiles(names: list[str]) -> list[Profile]:
    return [load_profile(n) for n in names]


def _read_toml(path: Path | Any, label: str) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{label}: not valid TOML ({exc})") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{label}: cannot read profile ({exc})") from exc


def _resolve(ref: str, seen: tuple[str, ...], base: Path | None = None) -> tuple[dict, str]:
    """Return the merged raw table for ``ref`` after following ``extends``."""
    path: Path | None = None
    if ref.endswith(".toml") or "/" in ref or "\\" in ref:
        path = (base / ref) if base is not None and not Path(ref).is_absolute() else Path(ref)
        if not path.is_file():
            raise ProfileError(f"profile file {path} does not exist")
        source = str(path)
        raw = _read_toml(path, source)
    else:
        if ref not in builtin_names():
            raise UsageError(
                f"unknown target {ref!r}; valid targets: {', '.join(builtin_names())} "
                "(or a path to a .toml profile)"
            )
        source = f"targets/{ref}.toml"
        raw = _read_toml(resources.files(_BUILTIN_PACKAGE).joinpath(f"{ref}.toml"), source)
    if source in seen:
        raise ProfileError(f"{source}: 'extends' forms a cycle: {' -> '.join((*seen, source))}")
    parent_ref = raw.pop("extends", None)
    if parent_ref is None:
        return raw, source
    if not isinstance(parent_ref, str):
        raise ProfileError(f"{source}: key 'extends' must be a profile name or path")
    parent, _ = _resolve(parent_ref, (*seen, source), path.parent if path else None)
    merged = dict(parent)
    for key, value in raw.items():
        if key in _TABLES and isinstance(value, dict) and isinstance(parent.get(key), dict):
            merged[key] = {**parent[key], **value}
        else:
            merged[key] = value
    return merged, source


def _build(name: str, raw: dict[str, Any], source: str) -> Profile:
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise ProfileError(
            f"{source}: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(_TOP_KEYS))}"
        )
    required = ["description", "arch", "runtime", "threads", "quantization"]
    missing = [k for k in required if k not in raw]
    if missing:
        raise ProfileError(
            f"{source}: missing key {missing[0]!r} (required: {', '.join(required)})"
        )

    def enum(key: str, kind: type[StrEnum], value: Any) -> Any:
        try:
            return kind(value)
        except ValueError:
            valid = ", ".join(m.value for m in kind)  # type: ignore[attr-defined]
            raise ProfileError(
                f"{source}: key {key!r} = {value!r} is not one of: {valid}"
            ) from None

    def typed(key: str, value: Any, kinds: tuple[type, ...], what: str) -> Any:
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise ProfileError(f"{source}: key {key!r} = {value!r} must be {what}")
        return value

    tables: dict[str, Any] = {}
    for key, kind in _TABLES.items():
        table = raw.get(key)
        if table is None:
            continue
        if not isinstance(table, dict):
            raise ProfileError(f"{source}: key {key!r} must be a table ([{key}])")
        names = {f.name: f for f in dataclasses.fields(kind)}
        values: dict[str, Any] = {}
        for sub, value in table.items():
            if sub not in names:
                raise ProfileError(
                    f"{source}: unknown key '{key}.{sub}'; valid keys: {', '.join(sorted(names))}"
                )
            numeric = (int, float) if "int" not in str(names[sub].type) else (int,)
            typed(f"{key}.{sub}", value, numeric, "a number")
            if value < 0:
                raise ProfileError(f"{source}: key '{key}.{sub}' = {value!r} must be >= 0")
            values[sub] = value
        tables[key] = kind(**values)

    threads = typed("threads", raw["threads"], (int,), "a whole number >= 1")
    if threads < 1:
        raise ProfileError(f"{source}: key 'threads' = {threads} must be >= 1")
    variants = raw.get("variants", [])
    if not isinstance(variants, list):
        raise ProfileError(f"{source}: key 'variants' must be a list of quantization schemes")
    passes = raw.get("passes", [])
    if not isinstance(passes, list) or not all(isinstance(p, dict) and "id" in p for p in passes):
        raise ProfileError(f"{source}: key 'passes' must be a list of tables with an 'id'")
    # Pass ids and parameters are checked now, not when a build first runs the recipe.
    from edgec.errors import RecipeError
    from edgec.recipe import steps_from_tables

    try:
        steps_from_tables(passes, f"{source}: key 'passes'")
    except RecipeError as exc:
        raise ProfileError(str(exc)) from None
    runtime = enum("runtime", Runtime, raw["runtime"])
    if runtime is Runtime.TFLM and "micro" not in tables:
        tables["micro"] = Micro()
    quantization = enum("quantization", Quantization, raw["quantization"])
    variant_schemes = tuple(enum("variants", Quantization, v) for v in variants)
    for key, q in (("quantization", quantization), *(("variants", v) for v in variant_schemes)):
        _check_scheme(source, key, q, runtime)
    default_fallback = FloatFallback.REFUSE if runtime is Runtime.TFLM else FloatFallback.ALLOW
    return Profile(
        name=name,
        description=typed("description", raw["description"], (str,), "a string"),
        arch=typed("arch", raw["arch"], (str,), "a string"),
        runtime=runtime,
        threads=threads,
        quantization=quantization,
        variants=variant_schemes,
        input_dtype=enum("input_dtype", IODtype, raw.get("input_dtype", "float32")),
        output_dtype=enum("output_dtype", IODtype, raw.get("output_dtype", "float32")),
        float_fallback=enum(
            "float_fallback", FloatFallback, raw.get("float_fallback", default_fallback)
        ),
        budgets=tables.get("budgets", Budgets()),
        micro=tables.get("micro"),
        objective=enum(
            "objective", Objective, raw.get("objective", default_objective(runtime is Runtime.TFLM))
        ),
        passes=tuple(passes),
        source=source,
    )


def _runnable(runtime: Runtime) -> str:
    from edgec.schemes import SCHEMES

    return ", ".join(str(s.name) for s in SCHEMES.values() if s.runs_on(runtime))


def _check_scheme(source: str, key: str, q: Quantization, runtime: Runtime) -> None:
    """A profile may only name a scheme that its runtime can run (per the scheme table)."""
    if not scheme(q).runs_on(runtime):
        raise ProfileError(
            f"{source}: key {key!r} = {str(q)!r} does not run on {runtime}; "
            f"schemes that do: {_runnable(runtime)}"
        )


def with_objective(profile: Profile, objective: Objective | str) -> Profile:
    """``profile`` with the search's objective replaced for one build (``--objective``)."""
    return dataclasses.replace(profile, objective=Objective(objective))


def with_quantization(profile: Profile, quantization: Quantization | str) -> Profile:
    """``profile`` with its primary scheme replaced for one build (``--quantization``)."""
    q = Quantization(quantization)
    if not scheme(q).runs_on(profile.runtime):
        raise UsageError(
            f"--quantization {q} does not run on {profile.name}'s runtime ({profile.runtime}); "
            f"valid for {profile.name}: {_runnable(profile.runtime)}"
        )
    variants = tuple(v for v in profile.variants if v is not q)
    return dataclasses.replace(profile, quantization=q, variants=variants)
