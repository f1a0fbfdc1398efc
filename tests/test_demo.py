"""The demos end to end at reduced size (slow: the Persona one embeds 4,000 statements with MiniLM)."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from pluralign.demo import run_persona_demo

pytestmark = pytest.mark.slow


def test_persona_demo_learns_the_personas(tmp_path):
    result = run_persona_demo(
        tmp_path, users_per_persona=125, queries_per_user=200, console=Console(quiet=True)
    )
    by_model = {row["model"]: row for row in result["table"]}
    # one shared reward can at best say "no" to each statement (7/8 of the answers); K = K* personas fit all
    assert by_model["BTL (homogeneous)"]["seen_test_acc"] < 0.9
    assert by_model["PAL-B K=4"]["seen_test_acc"] > 0.97
    curve = result["few_shot"]["series"]["PAL-B K=4"]
    assert curve["mean"][-1] > curve["mean"][0] + 0.05  # 50 answers beat zero-shot
    assert (tmp_path / "model" / "config.json").is_file()
    groups = json.loads((tmp_path / "user_groups.json").read_text())
    assert len(groups) == 500 and set(groups.values()) == {
        "interest-in-art",
        "interest-in-literature",
        "interest-in-math",
        "interest-in-music",
    }
    assert any((tmp_path / "cache").rglob("*.npy"))  # statement vectors were cached
