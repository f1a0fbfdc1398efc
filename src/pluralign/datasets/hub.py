"""Public preference datasets from the Hugging Face hub as pluralign rows: ``prepare(NAME, ...)``.

Recipes (docs/datasets/hub.md has each card, license and output):

- ``prism``: PRISM's per-user ratings of several responses in one turn -> within-turn pairs
  (:mod:`pluralign.datasets.hub_prism`);
- ``summarize``: OpenAI's summarize-from-feedback comparisons, workers as users, and ``summarize-length``,
  the length-preference variant of P-DPO / the PAL paper (App. D.3) (:mod:`pluralign.datasets.hub_summarize`);
- ``personalllm``: PersonalLLM's reward-model scores, simulated Dirichlet-mixture users
  (:mod:`pluralign.datasets.hub_personalllm`);
- ``pickapic``: PAL's precomputed Pick-a-Pic embeddings, converted to a safe format, as embedded data
  (:mod:`pluralign.datasets.hub_pickapic`).

Data comes from a local copy (``source_dir``: the files as the hub ships them) or, when a network is there,
through ``datasets.load_dataset``; offline without a local copy is one DataError naming ``--from``.
``write_hub(data, DIR)`` writes the rows, ``users.csv`` and ``meta.json`` (source, license, attribution,
every skip by reason). The CLI is ``pluralign datasets prepare NAME --out DIR [--from DIR]``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pluralign.datasets.hub_data import FORMATS, Card, HubData, write_hub
from pluralign.datasets.hub_files import Source
from pluralign.datasets.hub_personalllm import load_personalllm, personalllm_pairs
from pluralign.datasets.hub_pickapic import load_pickapic, pickapic_pairs
from pluralign.datasets.hub_prism import load_prism, prism_pairs
from pluralign.datasets.hub_summarize import load_summarize, summarize_comparisons, summarize_length

__all__ = ["FORMATS", "RECIPES", "Card", "HubData", "Recipe", "prepare", "write_hub"]


@dataclass(frozen=True)
class Recipe:
    """How one dataset is loaded (local copy or hub) and turned into rows, and the options it takes."""

    load: Callable[..., Source]  # (source_dir, *, dataset=name)
    build: Callable[..., HubData]
    options: tuple[str, ...]
    summary: str


RECIPES: dict[str, Recipe] = {
    "prism": Recipe(load_prism, prism_pairs, (), "PRISM: within-turn pairs of differently rated responses"),
    "summarize": Recipe(
        load_summarize,
        summarize_comparisons,
        ("prompt_format",),
        "summarize-from-feedback comparisons, workers as users",
    ),
    "summarize-length": Recipe(
        load_summarize,
        summarize_length,
        ("n_seen", "minority_ranks", "unseen_min_pairs", "unseen_longer", "seed", "prompt_format"),
        "the P-DPO/PAL length-preference variant (PAL App. D.3)",
    ),
    "personalllm": Recipe(
        load_personalllm,
        personalllm_pairs,
        ("n_users", "alpha", "pairs_per_user", "seed"),
        "PersonalLLM: simulated Dirichlet-mixture users of ten reward models",
    ),
    "pickapic": Recipe(
        load_pickapic, pickapic_pairs, (), "PAL's Pick-a-Pic embeddings (converted) as arrays"
    ),
}


def prepare(name: str, *, source_dir: str | Path | None = None, **options: Any) -> HubData:
    """Load dataset ``name`` (from ``source_dir`` or the hub) and build its rows with ``options``."""
    if name not in RECIPES:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(RECIPES)}")
    recipe = RECIPES[name]
    unknown = sorted(set(options) - set(recipe.options))
    if unknown:
        takes = ", ".join(recipe.options) or "no options"
        raise ValueError(f"{name} does not take option(s) {', '.join(unknown)} (it takes {takes})")
    return recipe.build(recipe.load(source_dir, dataset=name), **options)
