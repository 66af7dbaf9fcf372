"""What TFLM itself costs beside the model: the code and RAM tables, as data.

The figures live in ``targets/costs/<name>.toml`` (installed as
``edgec.targets``), next to the profiles they serve, and are checked strictly
when loaded: an unknown key, an op TFLM has no registration for, or a figure
that is not a whole number >= 0 is a ``ProfileError`` naming the file and key.

``runtime_code`` turns a model's op set into the flash estimate for TFLM and its
kernels; ``interpreter_ram`` into the RAM outside the arena. A profile can
replace the code estimate with ``[micro] runtime_code_bytes`` from its linker map.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from edgec.errors import ProfileError
from edgec.profiles import Profile
from edgec.profiles import _read_toml as read_toml  # one TOML reader for target data

DEFAULT_TABLE = "tflm-cortex-m"
_TOP_KEYS = {"description", "source", "arches", "runtime", "ram", "kernels"}
_RUNTIME_KEYS = {"base_code_bytes", "default_kernel_code_bytes", "code_margin", "uncertainty"}
_FRACTIONS = {"code_margin", "uncertainty"}  # 0..1, not bytes
_RAM_KEYS = {"interpreter_bytes", "resolver_bytes_per_op"}


@dataclass(frozen=True, kw_only=True)
class CostTable:
    """One table: TFLM's base code, per-kernel code, and the RAM outside the arena."""

    name: str
    file: str  # where it was loaded from, for messages
    description: str
    source: str  # where the figures come from
    arches: tuple[str, ...]  # the profile ``arch`` values the figures were derived for
    base_code_bytes: int  # MicroInterpreter, allocator, planner, flatbuffer access, libc
    default_kernel_code_bytes: int  # an op the table does not list
    code_margin: float  # added to base + kernels: the table is calibrated on one link only
    uncertainty: float  # of the estimate, as a fraction, stated with it
    interpreter_ram_bytes: int
    resolver_ram_bytes_per_op: int
    kernels: Mapping[str, int] = field(default_factory=dict)

    def kernel_code(self, ops: Mapping[str, int]) -> dict[str, int]:
        """Code bytes per distinct op of ``ops`` (each kernel is linked once)."""
        return {op: self.kernels.get(op, self.default_kernel_code_bytes) for op in sorted(ops)}

    def code_bytes(self, ops: Mapping[str, int]) -> int:
        """The code estimate for ``ops``: (base + kernels) x (1 + margin), rounded up."""
        raw = self.base_code_bytes + sum(self.kernel_code(ops).values())
        return math.ceil(raw * (1.0 + self.code_margin))

    def interpreter_ram(self, ops: Mapping[str, int]) -> int:
        return self.interpreter_ram_bytes + self.resolver_ram_bytes_per_op * len(ops)


def _whole(file: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ProfileError(f"{file}: key {key!r} = {value!r} must be a whole number >= 0")
    return value


def _fraction(file: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ProfileError(f"{file}: key {key!r} = {value!r} must be a fraction from 0 to 1")
    return float(value)


def _table(file: str, raw: dict[str, Any], key: str, keys: set[str]) -> dict[str, Any]:
    sub = raw.get(key)
    if not isinstance(sub, dict):
        raise ProfileError(f"{file}: missing table [{key}] (keys: {', '.join(sorted(keys))})")
    unknown = sorted(set(sub) - keys)
    if unknown:
        raise ProfileError(
            f"{file}: unknown key '{key}.{unknown[0]}'; valid keys: {', '.join(sorted(keys))}"
        )
    missing = sorted(keys - set(sub))
    if missing:
        raise ProfileError(f"{file}: missing key '{key}.{missing[0]}'")
    return {
        k: _fraction(file, f"{key}.{k}", v) if k in _FRACTIONS else _whole(file, f"{key}.{k}", v)
        for k, v in sub.items()
    }


def parse_cost_table(name: str, raw: dict[str, Any], file: str) -> CostTable:
    """Check ``raw`` (a parsed TOML table) strictly and return the cost table."""
    from edgec.firmware import TFLM_ADD_METHODS

    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise ProfileError(
            f"{file}: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(_TOP_KEYS))}"
        )
    for key in ("description", "source"):
        if not isinstance(raw.get(key), str):
            raise ProfileError(f"{file}: key {key!r} must be a string")
    arches = raw.get("arches")
    if not isinstance(arches, list) or not arches or not all(isinstance(a, str) for a in arches):
        raise ProfileError(
            f"{file}: key 'arches' must be a list of the profile arch names the table is for"
        )
    runtime = _table(file, raw, "runtime", _RUNTIME_KEYS)
    ram = _table(file, raw, "ram", _RAM_KEYS)
    kernels = raw.get("kernels", {})
    if not isinstance(kernels, dict):
        raise ProfileError(f"{file}: key 'kernels' must be a table of op name = code bytes")
    for op, value in kernels.items():
        if op not in TFLM_ADD_METHODS:
            raise ProfileError(
                f"{file}: key 'kernels.{op}' is not an op TFLM registers "
                "(BuiltinOperator names as edgec inspect prints them, e.g. CONV_2D)"
            )
        _whole(file, f"kernels.{op}", value)
    return CostTable(
        name=name,
        file=file,
        description=raw["description"],
        source=raw["source"],
        arches=tuple(arches),
        base_code_bytes=runtime["base_code_bytes"],
        default_kernel_code_bytes=runtime["default_kernel_code_bytes"],
        code_margin=runtime["code_margin"],
        uncertainty=runtime["uncertainty"],
        interpreter_ram_bytes=ram["interpreter_bytes"],
        resolver_ram_bytes_per_op=ram["resolver_bytes_per_op"],
        kernels=dict(kernels),
    )


def load_cost_table(path: str | Path) -> CostTable:
    """A cost table from a ``.toml`` file (a user's own, or a built-in one)."""
    p = Path(path)
    return parse_cost_table(p.stem, read_toml(p, str(p)), str(p))


@functools.cache
def cost_table(name: str = DEFAULT_TABLE) -> CostTable:
    """A built-in cost table by name (``targets/costs/<name>.toml``), loaded once."""
    file = f"targets/costs/{name}.toml"
    raw = read_toml(resources.files("edgec.targets").joinpath("costs", f"{name}.toml"), file)
    return parse_cost_table(name, raw, file)


def runtime_code(ops: Mapping[str, int], profile: Profile) -> tuple[int, bool, dict[str, int]]:
    """Flash for TFLM and the kernels of ``ops``: (bytes, is_estimate, per-kernel table)."""
    table = cost_table()
    kernels = table.kernel_code(ops)
    override = profile.micro.runtime_code_bytes if profile.micro else None
    if override is not None:
        return int(override), False, kernels
    return table.code_bytes(ops), True, kernels
