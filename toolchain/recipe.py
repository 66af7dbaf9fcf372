"""Recipes: which compression passes run, in which order, with which parameters.

A recipe is data. It comes from a TOML file::

    name = "prune-int8"
    description = "80% magnitude pruning, then the profile's int8"

    [[pass]]
    id = "prune"
    final_sparsity = 0.8
    epochs = 4

from a profile's default ``passes``, and from ``--pass ID:KEY=VALUE,...``
overrides (values are TOML literals; a bare word is a string). Every step is
checked against its pass's ``Params`` dataclass when the recipe is made, so an
unknown pass id, an unknown key or a value of the wrong type is a
``RecipeError`` listing what is valid, never a silently ignored typo. Pass
order is free. ``Recipe.to_list()`` is what the manifest records: every step
with all its parameters, defaults included, so it reproduces the artifact.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgec.errors import RecipeError
from edgec.passes import get_pass, pass_ids
from edgec.passes.common import plain_params

if TYPE_CHECKING:
    from edgec.pipeline import Pass
    from edgec.profiles import Profile

TOP_KEYS = ("name", "description", "pass")


@dataclass(frozen=True, kw_only=True)
class Step:
    """One pass of a recipe: its id and the parameters given (defaults fill the rest)."""

    id: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def make_params(self) -> Any:
        """The pass's Params instance; raises RecipeError naming bad keys and valid ones."""
        cls = get_pass(self.id)
        valid = [f.name for f in dataclasses.fields(cls.Params)]
        unknown = [k for k in self.params if k not in valid]
        if unknown:
            raise RecipeError(
                f"pass {self.id!r} has no parameter {', '.join(map(repr, unknown))}; "
                f"valid: {', '.join(valid)}"
            )
        return cls.Params(**dict(self.params))

    def instantiate(self) -> Pass:
        return get_pass(self.id)(self.make_params())

    def resolved(self) -> dict[str, Any]:
        """``{"id", "params"}`` with every parameter, defaults included, as JSON values."""
        return {"id": self.id, "params": plain_params(self.make_params())}


@dataclass(frozen=True, kw_only=True)
class Recipe:
    steps: tuple[Step, ...] = ()
    name: str = ""
    description: str = ""
    source: str = ""  # a file path, "profile NAME", or "--pass"

    def __post_init__(self) -> None:
        for step in self.steps:  # fail at load time, not halfway through a build
            step.make_params()

    @property
    def empty(self) -> bool:
        return not self.steps

    def instantiate(self) -> list[Pass]:
        return [step.instantiate() for step in self.steps]

    def to_list(self) -> list[dict[str, Any]]:
        return [step.resolved() for step in self.steps]

    def with_overrides(self, overrides: Sequence[Step]) -> Recipe:
        """Merge each override into the step(s) with its id, or append it as a new step."""
        steps = list(self.steps)
        for override in overrides:
            hits = [i for i, s in enumerate(steps) if s.id == override.id]
            if not hits:
                steps.append(override)
            for i in hits:
                steps[i] = Step(id=override.id, params={**steps[i].params, **override.params})
        source = f"{self.source} + --pass" if self.source else "--pass"
        return dataclasses.replace(self, steps=tuple(steps), source=source)


def steps_from_tables(tables: Any, where: str) -> tuple[Step, ...]:
    """Steps from a list of ``{"id": ..., key: value}`` tables (a recipe's or a profile's)."""
    if not isinstance(tables, list):
        raise RecipeError(f"{where}: 'pass' must be a list of tables ([[pass]] in TOML)")
    steps = []
    for n, table in enumerate(tables, 1):
        if not isinstance(table, dict) or "id" not in table:
            raise RecipeError(
                f"{where}: pass #{n} needs an 'id'; valid ids: {', '.join(pass_ids())}"
            )
        params = {k: v for k, v in table.items() if k != "id"}
        if isinstance(params.get("params"), dict) and len(params) == 1:
            params = dict(params["params"])  # [pass.params] sub-table, accepted too
        steps.append(Step(id=str(table["id"]), params=params))
    for step in steps:
        try:
            step.make_params()
        except RecipeError as exc:
            raise RecipeError(f"{where}: {exc}") from None
    return tuple(steps)


def load_recipe(path: str | Path) -> Recipe:
    """Read and check a recipe TOML file."""
    file = Path(path)
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecipeError(f"recipe {file} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"recipe {file} cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"recipe {file} is not valid TOML: {exc}") from None
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        raise RecipeError(
            f"recipe {file}: unknown key {', '.join(map(repr, unknown))}; "
            f"valid: {', '.join(TOP_KEYS)}"
        )
    for key in ("name", "description"):
        if not isinstance(raw.get(key, ""), str):
            raise RecipeError(f"recipe {file}: {key!r} must be a string")
    steps = steps_from_tables(raw.get("pass", []), f"recipe {file}")
    return Recipe(
        steps=steps,
        name=raw.get("name", file.stem),
        description=raw.get("description", ""),
        source=str(file),
    )


def recipe_from_profile(profile: Profile) -> Recipe:
    """The profile's default recipe (its ``passes`` list); empty when it names none."""
    where = f"profile {profile.name}"
    steps = steps_from_tables(list(profile.passes), where)
    return Recipe(steps=steps, name=f"{profile.name} default", source=where)


def parse_override(text: str) -> Step:
    """``"prune:final_sparsity=0.8,epochs=2"`` (or just ``"prune"``) as a checked Step."""
    pass_id, _, rest = text.strip().partition(":")
    pass_id = pass_id.strip()
    if not pass_id:
        raise RecipeError(
            f"--pass {text!r}: expected ID or ID:KEY=VALUE,...; valid ids: {', '.join(pass_ids())}"
        )
    get_pass(pass_id)
    params: dict[str, Any] = {}
    for item in _split_top(rest):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise RecipeError(f"--pass {text!r}: {item!r} is not KEY=VALUE")
        params[key] = _literal(value.strip())
    step = Step(id=pass_id, params=params)
    try:
        step.make_params()
    except RecipeError as exc:
        raise RecipeError(f"--pass {text!r}: {exc}") from None
    return step


def _split_top(text: str) -> list[str]:
    """Split on commas that are not inside brackets or quotes (lists are values too)."""
    items, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [item.strip() for item in items if item.strip()]


def _literal(value: str) -> Any:
    try:
        return tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return value  # a bare word such as `schedule=constant`; the Params type check decides


def resolve_recipe(
    profile: Profile | None, path: str | Path | None = None, overrides: Sequence[str] = ()
) -> Recipe:
    """What a build runs: the ``--recipe`` file, else the profile's default, then ``--pass``."""
    if path is not None:
        recipe = load_recipe(path)
    elif profile is not None:
        recipe = recipe_from_profile(profile)
    else:
        recipe = Recipe()
    if overrides:
        recipe = recipe.with_overrides([parse_override(text) for text in overrides])
    return recipe
