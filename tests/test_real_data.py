"""The real-data leaderboard (benchmarks/real_data.py): its reference rows against hand counts, and the whole
benchmark end to end at toy size on one Polis conversation and the synthetic data."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pluralign.data.comparisons import PreferenceData

ROOT = Path(__file__).resolve().parents[1]
POLIS = ROOT.parent / "shared" / "data" / "polis" / "brexit-consensus"


def _module():
    spec = importlib.util.spec_from_file_location("bench_real_data", ROOT / "benchmarks" / "real_data.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


def _rows(votes: list[tuple[str, str, str]]) -> pd.DataFrame:
    """(user, statement, 'y'/'n') -> rows with Yes/No responses."""
    return pd.DataFrame(
        [
            {
                "user_id": u,
                "prompt": p,
                "chosen": "Yes" if v == "y" else "No",
                "rejected": "No" if v == "y" else "Yes",
            }
            for u, p, v in votes
        ]
    )


def test_majority_and_group_majority_match_hand_counts():
    bench = _module()
    s1 = [("a", "s1", "y"), ("b", "s1", "y"), ("c", "s1", "n"), ("d", "s1", "n"), ("e", "s1", "n")]
    s2 = [("a", "s2", "y"), ("c", "s2", "n")]  # a tie overall
    train = _rows([*s1, *s2])
    test = _rows([("f", "s1", "y"), ("g", "s1", "n"), ("f", "s2", "y"), ("g", "s3", "y")])
    data = PreferenceData.from_frame(pd.concat([train, test], ignore_index=True))
    tr, te = data.subset(np.arange(len(data)) < len(train)), data.subset(np.arange(len(data)) >= len(train))
    # statement majority: s1 "No" (3 of 5): f wrong, g right; s2 tie -> 0.5; s3 unseen -> 0.5
    assert bench.majority_accuracy(tr, te) == pytest.approx((0 + 1 + 0.5 + 0.5) / 4)
    # groups: a, b, f in group 0 (yes-sayers), c, d, e, g in group 1; s2: group 0 says yes (a)
    group_of = {"a": 0, "b": 0, "f": 0, "c": 1, "d": 1, "e": 1, "g": 1}
    groups = np.array([group_of[u] for u in data.user_ids])
    assert bench.majority_accuracy(tr, te, groups) == pytest.approx((1 + 1 + 1 + 0.5) / 4)
    # an unlabelled user (-1) falls back to the statement majority
    groups[list(data.user_ids).index("f")] = -1
    assert bench.majority_accuracy(tr, te, groups) == pytest.approx((0 + 1 + 0.5 + 0.5) / 4)


def test_majority_is_orientation_free():
    """The same vote written with the responses swapped (chosen/rejected order) counts the same."""
    bench = _module()
    frame = pd.DataFrame(
        {
            "user_id": ["a", "b", "c"],
            "prompt": ["s", "s", "s"],
            "chosen": ["Yes", "Yes", "Yes"],
            "rejected": ["No", "No", "No"],
        }
    )
    data = PreferenceData.from_frame(frame)
    first, rest = data.subset(np.array([True, True, False])), data.subset(np.array([False, False, True]))
    assert bench.majority_accuracy(first, rest) == 1.0
    assert bench.majority_accuracy(rest, first) == 1.0


@pytest.mark.slow
@pytest.mark.skipif(not POLIS.is_dir(), reason="../shared/data/polis is not beside the checkout")
def test_leaderboard_end_to_end_at_toy_size(tmp_path):
    bench = _module()
    common = ["--quick", "--polis", str(POLIS), "--cache", str(tmp_path / "cache")]
    a, b, both = tmp_path / "a", tmp_path / "b", tmp_path / "both"
    datasets = ["--datasets", "polis", "polis-each", "synthetic"]
    assert bench.main([*common, *datasets, "--methods", "btl", "pal-b", "--out", str(a)]) == 0
    assert (
        bench.main(
            [*common, *datasets, "--methods", "lore", "--k-from", str(a / "results.json"), "--out", str(b)]
        )
        == 0
    )
    assert (
        bench.main(["--combine", str(a / "results.json"), str(b / "results.json"), "--out", str(both)]) == 0
    )
    payload = json.loads((both / "results.json").read_text())
    results = payload["results"]
    assert set(results) == {"polis", "polis/brexit-consensus", "synthetic"}
    polis = results["polis"]
    methods = polis["summary"]
    assert list(methods) == ["majority", "groups (reference)", "btl", "pal-b", "lore"]
    for stats in methods.values():
        assert 0.0 <= stats["seen"][0] <= 1.0
        assert set(stats["unseen"]) == {"0", "5", "10", "20"}
    # Polis's groups (computed from all votes) beat the plain statement majority on brexit-consensus
    assert methods["groups (reference)"]["seen"][0] > methods["majority"]["seen"][0]
    assert polis["k"]["k"] == 2 and polis["seeds"][0]["unseen_users_scored"] > 0
    assert payload["polis_conversations_mean"]["conversations"] == ["polis/brexit-consensus"]
    text = (both / "leaderboard.md").read_text()
    assert "| pal-b (K=2) |" in text and "### polis" in text
    assert (both / "real_data.png").stat().st_size > 0


DOC = ROOT / "docs" / "real_data.md"


def test_docs_tables_are_the_published_results():
    """docs/real_data.md's tables are leaderboard_markdown() of docs/results/real_data.json, to the digit."""
    payload = json.loads((ROOT / "docs" / "results" / "real_data.json").read_text())
    text = DOC.read_text()
    block = text.split("<!-- leaderboard -->\n", 1)[1].split("<!-- /leaderboard -->", 1)[0]
    assert block.strip() == _module().leaderboard_markdown(payload).strip()
    assert set(payload["results"]) >= {"polis", "persona", "synthetic"}
    assert len([n for n in payload["results"] if n.startswith("polis/")]) == 7


def test_docs_carry_the_polis_attribution():
    from pluralign.datasets.polis_report import ATTRIBUTION, CASE_STUDIES

    text = " ".join(DOC.read_text().replace(">", " ").split())
    assert " ".join(ATTRIBUTION.split()) in text
    for name in [
        "15-per-hour-seattle",
        "brexit-consensus",
        "canadian-electoral-reform",
        "football-concussions",
        "scoop-hivemind.affordable-housing",
        "scoop-hivemind.biodiversity",
        "ssis.land-bank-farmland.2rumnecbeh.2021-08-01",
    ]:
        assert CASE_STUDIES[name] in text
