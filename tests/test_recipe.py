"""Recipes: TOML files, ``--pass`` overrides, profile defaults, and the errors that list what is valid."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from edgec.errors import RecipeError, UsageError
from edgec.passes.cluster import ClusterPass
from edgec.passes.prune import PrunePass, Schedule
from edgec.profiles import load_profile
from edgec.recipe import (
    Recipe,
    Step,
    load_recipe,
    parse_override,
    recipe_from_profile,
    resolve_recipe,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "recipes" / "prune-int8.toml"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_example_recipe_loads_and_instantiates() -> None:
    recipe = load_recipe(EXAMPLE)
    assert recipe.name == "prune-int8"
    passes = recipe.instantiate()
    assert len(passes) == 1 and isinstance(passes[0], PrunePass)
    assert passes[0].params.final_sparsity == 0.8
    assert passes[0].params.schedule is Schedule.POLYNOMIAL
    listed = recipe.to_list()
    assert listed[0]["id"] == "prune" and listed[0]["params"]["schedule"] == "polynomial"
    assert listed[0]["params"]["structured_2_4"] is False  # defaults are recorded too
    json.dumps(listed)  # the manifest can hold it


def test_order_is_free_and_params_are_typed(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
name = "three"
[[pass]]
id = "lowrank"
energy = 0.95
[[pass]]
id = "prune"
final_sparsity = 0.9
exclude = ["dense_2", "Conv2D"]
[[pass]]
id = "cluster"
k = 16
""",
    )
    recipe = load_recipe(path)
    assert [s.id for s in recipe.steps] == ["lowrank", "prune", "cluster"]
    prune = recipe.instantiate()[1]
    assert prune.params.exclude == ("dense_2", "Conv2D")
    assert isinstance(recipe.instantiate()[2], ClusterPass)


def test_unknown_pass_id_lists_the_valid_ones(tmp_path: Path) -> None:
    path = _write(tmp_path, '[[pass]]\nid = "purne"\n')
    with pytest.raises(
        RecipeError, match="unknown pass 'purne'; valid: cluster, distill, lowrank, prune"
    ):
        load_recipe(path)


def test_unknown_param_lists_the_valid_ones(tmp_path: Path) -> None:
    path = _write(tmp_path, '[[pass]]\nid = "prune"\nfinal_sparsty = 0.8\n')
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    message = str(err.value)
    assert "no parameter 'final_sparsty'" in message and "final_sparsity" in message
    assert str(path) in message and "\n" not in message
    assert isinstance(err.value, UsageError) and err.value.exit_code == 2


@pytest.mark.parametrize(
    ("table", "needle"),
    [
        ('id = "prune"\nfinal_sparsity = "high"', "must be a number"),
        ('id = "prune"\nepochs = 1.5', "must be a whole number"),
        ('id = "prune"\nschedule = "linear"', "valid: 'polynomial', 'constant'"),
        ('id = "prune"\nfinal_sparsity = 1.2', "0 <= value < 1"),
        ('id = "cluster"\nk = 1', "2 <= k <= 256"),
        ('id = "cluster"\npreserve_sparsity = "yes"', "true or false"),
        ('id = "lowrank"\nenergy = 0', "0 < energy <= 1"),
        ("final_sparsity = 0.8", "needs an 'id'"),
    ],
)
def test_bad_values_are_refused(tmp_path: Path, table: str, needle: str) -> None:
    with pytest.raises(RecipeError, match=needle.replace("(", r"\(")):
        load_recipe(_write(tmp_path, f"[[pass]]\n{table}\n"))


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "missing.toml")
    with pytest.raises(RecipeError, match="not valid TOML"):
        load_recipe(_write(tmp_path, "[[pass]\nid="))
    with pytest.raises(RecipeError, match="unknown key 'passes'; valid: name, description, pass"):
        load_recipe(_write(tmp_path, '[[passes]]\nid = "prune"\n'))


def test_parse_override_values_are_toml_literals() -> None:
    step = parse_override('prune:final_sparsity=0.9,epochs=2,exclude=["a", "b"],schedule=constant')
    assert step.id == "prune"
    assert dict(step.params) == {
        "final_sparsity": 0.9,
        "epochs": 2,
        "exclude": ["a", "b"],
        "schedule": "constant",
    }
    assert parse_override("cluster").params == {}
    assert parse_override("cluster:preserve_sparsity=false").params == {"preserve_sparsity": False}
    assert parse_override('distill:student="my model.keras"').params == {
        "student": "my model.keras"
    }


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("prun:final_sparsity=0.8", "valid: cluster, distill, lowrank, prune"),
        ("prune:final_sparsity", "is not KEY=VALUE"),
        ("prune:sparsity=0.8", "valid: schedule, initial_sparsity"),
        (":k=3", "expected ID or ID:KEY=VALUE"),
    ],
)
def test_parse_override_errors(text: str, needle: str) -> None:
    with pytest.raises(RecipeError, match=needle):
        parse_override(text)


def test_overrides_merge_into_same_id_or_append() -> None:
    recipe = load_recipe(EXAMPLE)
    merged = recipe.with_overrides(
        [parse_override("prune:final_sparsity=0.9,epochs=1"), parse_override("cluster:k=8")]
    )
    assert [s.id for s in merged.steps] == ["prune", "cluster"]
    prune = merged.instantiate()[0].params
    assert prune.final_sparsity == 0.9 and prune.epochs == 1 and prune.frequency == 10
    assert recipe.steps[0].params["final_sparsity"] == 0.8  # the original is unchanged
    assert Recipe().with_overrides([Step(id="cluster")]).to_list()[0]["params"]["k"] == 16


def test_recipe_from_profile() -> None:
    profile = load_profile("rpi4")
    assert recipe_from_profile(profile).empty or recipe_from_profile(profile).steps
    with_passes = dataclasses.replace(
        profile, passes=({"id": "prune", "final_sparsity": 0.75}, {"id": "cluster", "k": 32})
    )
    recipe = recipe_from_profile(with_passes)
    assert [s["id"] for s in recipe.to_list()] == ["prune", "cluster"]
    assert recipe.to_list()[0]["params"]["final_sparsity"] == 0.75
    bad = dataclasses.replace(profile, passes=({"id": "prune", "k": 3},))
    with pytest.raises(RecipeError, match="profile rpi4: pass 'prune' has no parameter 'k'"):
        recipe_from_profile(bad)


def test_resolve_recipe_file_then_overrides() -> None:
    profile = load_profile("rpi4")
    recipe = resolve_recipe(profile, EXAMPLE, ("prune:final_sparsity=0.85", "cluster:k=32"))
    assert [s["id"] for s in recipe.to_list()] == ["prune", "cluster"]
    assert recipe.to_list()[0]["params"]["final_sparsity"] == 0.85
    assert recipe.source == f"{EXAMPLE} + --pass"
    assert resolve_recipe(None, None, ("lowrank",)).to_list()[0]["id"] == "lowrank"
