"""Compression passes over Keras models, one module per technique; see ``edgec.recipe``."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from edgec.errors import RecipeError

if TYPE_CHECKING:
    from edgec.pipeline import Pass

# Pass id -> (module, class). Modules are imported on first use so that listing
# the ids (e.g. for an error message or `edgec --help`) imports no Keras.
_REGISTRY: dict[str, tuple[str, str]] = {
    "prune": ("edgec.passes.prune", "PrunePass"),
    "lowrank": ("edgec.passes.lowrank", "LowRankPass"),
    "distill": ("edgec.passes.distill", "DistillPass"),
    "cluster": ("edgec.passes.cluster", "ClusterPass"),
    "prune-channels": ("edgec.passes.prune_channels", "PruneChannelsPass"),
}


def pass_ids() -> list[str]:
    """Every pass id a recipe may name, sorted."""
    return sorted(_REGISTRY)


def get_pass(pass_id: str) -> type[Pass]:
    """The Pass class for ``pass_id``; a ``RecipeError`` listing the valid ids otherwise."""
    try:
        module, name = _REGISTRY[pass_id]
    except (KeyError, TypeError):
        raise RecipeError(f"unknown pass {pass_id!r}; valid: {', '.join(pass_ids())}") from None
    return getattr(import_module(module), name)
