"""Choosing K: the decision rule on handcrafted score tables, select_k on a planted K* = 2 problem, bad
input, and the `pluralign select-k` command."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from pluralign.cli import app
from pluralign.datasets.synthetic import make_synthetic, write_synthetic
from pluralign.errors import DataError, PluralignError
from pluralign.selection import (
    KSelection,
    apply_rule,
    choose_k,
    log_loss,
    parse_k_values,
    select_k,
    weight_spread,
)

KS = [1, 2, 3, 4, 5]
#: PAL-A with the paper's linear f on small synthetic data: a few seconds for 3 K x 2 folds
FAST_PAL_A = {
    "dim": 8,
    "f_layers": 1,
    "bias": False,
    "epochs": 40,
    "batch_size": 256,
    "lr_maps": 1e-2,
    "lr_prototypes": 5e-2,
    "lr_users": 5e-2,
    "patience": None,
}


def reference_rule(scores, ks, higher=True, n_se=1.0, rel_tol=0.0):
    """The rule written out K by K with plain Python (no vectorization), as an independent check."""
    s = [[v if higher else -v for v in row] for row in scores]
    means = [sum(row) / len(row) for row in s]
    best = max(range(len(ks)), key=lambda i: (means[i], -i))
    margin = rel_tol * (max(means) - min(means))
    for i in range(len(ks)):
        d = [s[best][f] - s[i][f] for f in range(len(s[i]))]
        g = sum(d) / len(d)
        var = sum((x - g) ** 2 for x in d) / (len(d) - 1)
        if g <= n_se * math.sqrt(var / len(d)) + margin:
            return ks[i]
    raise AssertionError("the best K is always within noise")


# --------------------------------------------------------------------------------------------------------
def test_rule_picks_smallest_k_within_one_se_of_best():
    # K = 3 is best on average; K = 4, 5 are a hair worse within noise; K = 2 is clearly worse in every fold.
    scores = np.array(
        [
            [0.80, 0.82, 0.78, 0.81],
            [0.90, 0.91, 0.89, 0.90],
            [0.96, 0.97, 0.95, 0.96],
            [0.965, 0.96, 0.955, 0.955],
            [0.955, 0.975, 0.945, 0.96],
        ]
    )
    result = choose_k(scores, KS)
    assert result.best_k == 3 and result.chosen_k == 3
    assert result.within == [False, False, True, True, True]
    assert result.gap[2] == 0.0 and result.se[2] == 0.0
    # gap and SE of K = 2 by hand: paired differences are all 0.06
    assert result.gap[1] == pytest.approx(0.06) and result.se[1] == pytest.approx(0.0, abs=1e-12)
    assert result.chosen_k == reference_rule(scores.tolist(), KS)


def test_rule_prefers_smaller_k_when_the_best_is_within_noise():
    # K = 4 has the best mean, but K = 2 is within one paired SE of it: the rule takes K = 2.
    scores = np.array(
        [
            [0.70, 0.72, 0.71],
            [0.90, 0.93, 0.89],
            [0.91, 0.92, 0.90],
            [0.93, 0.90, 0.91],
            [0.89, 0.90, 0.88],
        ]
    )
    result = choose_k(scores, KS)
    assert result.best_k == 4
    assert result.chosen_k == 2 == reference_rule(scores.tolist(), KS)
    # with no noise allowance, only the best itself qualifies
    assert choose_k(scores, KS, n_se=0.0).chosen_k == 4


def test_rule_is_paired_across_folds():
    # Fold difficulty varies a lot (unpaired stds overlap), but K = 3 beats K = 2 by 0.01 in every fold:
    # the paired SE is 0, so K = 2 is not within noise.
    base = np.array([0.60, 0.75, 0.90])
    scores = np.stack([base - 0.2, base - 0.01, base, base - 0.001 * np.array([1, -1, 0])])
    result = choose_k(scores, [1, 2, 3, 4])
    assert result.chosen_k == 3
    assert scores[1].std() > 0.05  # an unpaired one-SE rule would have accepted K = 2


def test_rule_lower_is_better_and_relative_margin():
    # Noise-free log losses that keep shrinking by 1e-4 past K = 3 (as on Persona): without a margin the
    # rule chases the tiny gains, with rel_tol = 1% of the range (0.3) it stops at K = 3.
    losses = np.array(
        [
            [0.300, 0.300, 0.300],
            [0.100, 0.100, 0.100],
            [0.0030, 0.0031, 0.0030],
            [0.0020, 0.0020, 0.0021],
            [0.0010, 0.0010, 0.0010],
        ]
    )
    assert choose_k(losses, KS, higher_is_better=False).chosen_k == 5
    assert choose_k(losses, KS, higher_is_better=False, rel_tol=0.01).chosen_k == 3
    for rel in (0.0, 0.01, 0.5):
        assert choose_k(losses, KS, higher_is_better=False, rel_tol=rel).chosen_k == reference_rule(
            losses.tolist(), KS, higher=False, rel_tol=rel
        )


def test_rule_matches_reference_on_random_tables():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n_k, folds = rng.integers(1, 7), rng.integers(2, 6)
        ks = list(range(1, n_k + 1))
        scores = rng.normal(size=(n_k, 1)) + 0.3 * rng.normal(size=(n_k, folds))
        n_se, rel = float(rng.uniform(0, 2)), float(rng.uniform(0, 0.2))
        assert choose_k(scores, ks, n_se=n_se, rel_tol=rel).chosen_k == reference_rule(
            scores.tolist(), ks, n_se=n_se, rel_tol=rel
        )


def test_combined_takes_the_larger_k():
    seen = np.array([[0.5, 0.5], [0.1, 0.1], [0.1, 0.1]])  # log loss: K = 2 enough
    few = np.array([[0.6, 0.6], [0.7, 0.7], [0.9, 0.9]])  # few-shot accuracy: K = 3 needed
    scores = {"seen_log_loss": seen, "new_few_shot_accuracy": few}
    chosen, decisions = apply_rule(scores, [1, 2, 3])
    assert decisions["seen_log_loss"].chosen_k == 2 and decisions["new_few_shot_accuracy"].chosen_k == 3
    assert chosen == 3
    assert apply_rule(scores, [1, 2, 3], "seen_log_loss")[0] == 2


def test_rule_bad_input():
    with pytest.raises(ValueError, match="shape"):
        choose_k(np.zeros((2, 3)), [1, 2, 3])
    with pytest.raises(ValueError, match="NaN"):
        choose_k(np.array([[0.1, np.nan], [0.2, 0.3]]), [1, 2])
    with pytest.raises(PluralignError, match="unknown criterion"):
        apply_rule({}, [1], "accuracy")


def test_weight_spread_and_log_loss():
    one_hot = np.eye(3)[[0, 1, 2, 0]]
    s = weight_spread(one_hot)
    assert s["entropy"] == 0.0
    # mean weight (0.5, 0.25, 0.25); TV distances 0.5, 0.75, 0.75, 0.5
    assert s["distance"] == pytest.approx(0.625)
    assert s["effective_k"] == pytest.approx(math.exp(-(0.5 * math.log(0.5) + 0.5 * math.log(0.25))))
    uniform = weight_spread(np.full((5, 4), 0.25))
    assert uniform["entropy"] == pytest.approx(1.0) and uniform["distance"] == pytest.approx(0.0)
    assert uniform["effective_k"] == pytest.approx(4.0)
    assert weight_spread(np.ones((3, 1))) == {"entropy": 0.0, "distance": 0.0, "effective_k": 1.0}
    m = np.array([0.0, 2.0, -3.0, 800.0, -800.0])
    expected = np.mean([math.log(2), math.log1p(math.exp(-2)), 3 + math.log1p(math.exp(-3)), 0.0, 800.0])
    assert log_loss(m) == pytest.approx(expected, rel=1e-12)


def test_parse_k_values():
    assert parse_k_values("1..6") == [1, 2, 3, 4, 5, 6]
    assert parse_k_values("4,1,2") == [1, 2, 4]
    assert parse_k_values("1..3, 6,3") == [1, 2, 3, 6]
    for bad, message in [
        ("", "empty"),
        ("0..3", ">= 1"),
        ("3..1", "empty"),
        ("two", "cannot read"),
        ("1..x", "cannot read"),
    ]:
        with pytest.raises(PluralignError, match=message):
            parse_k_values(bad)


# --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def planted():
    """Two well separated groups of users (partition setting, K* = 2)."""
    return make_synthetic(
        model="pal_a", setting="partition", dim=8, n_prototypes=2, n_users=30, n_train=60, n_test=0, seed=1
    )


def test_select_k_finds_planted_k(planted):
    sel = select_k(planted.train, [1, 2, 3], model="pal-a", folds=2, seed=1, shots=20, **FAST_PAL_A)
    assert isinstance(sel, KSelection)
    assert sel.chosen_k == 2
    acc = sel.mean("seen_accuracy")
    assert acc[1] > acc[0] + 0.1  # heterogeneity: two prototypes beat one clearly
    gain = sel.heterogeneity["gain_over_k1"]["seen_accuracy"]
    assert gain["gain"] == pytest.approx(acc[1] - acc[0]) and gain["gain"] > 3 * gain["se"]
    assert sel.heterogeneity["heterogeneous"] is True
    # K = 1 has no spread; the folds really held out users and comparisons, disjointly sized
    assert sel.spread[0] == {"entropy": 0.0, "distance": 0.0, "effective_k": 1.0}
    for fold in sel.folds:
        assert fold["held_out_users"] == 6 and fold["adapt_rows"] == 6 * 20
        assert fold["new_test_rows"] == 6 * 40
        assert fold["train_rows"] + fold["test_rows"] == 24 * 60
    # zero-shot is one weight vector for everyone; adapting on 20 answers must help at K = 2
    assert sel.mean("new_few_shot_accuracy")[1] > sel.mean("new_zero_shot_accuracy")[1] + 0.05
    rows = sel.as_rows()
    assert [r["K"] for r in rows] == [1, 2, 3] and [r["chosen"] for r in rows] == [False, True, False]
    payload = json.loads(sel.to_json())
    assert payload["chosen_k"] == 2 and len(payload["scores"]["seen_log_loss"]) == 3
    # the decision stored equals the rule re-applied to the stored table
    assert apply_rule(payload["scores"], [1, 2, 3])[0] == 2


def test_select_k_bad_input(planted):
    data = planted.train
    with pytest.raises(PluralignError, match="empty"):
        select_k(data, [])
    with pytest.raises(PluralignError, match=">= 1"):
        select_k(data, [0, 1])
    with pytest.raises(PluralignError, match="folds"):
        select_k(data, [1, 2], folds=1)
    with pytest.raises(PluralignError, match="unknown model"):
        select_k(data, [1, 2], model="btl")
    with pytest.raises(PluralignError, match="criterion"):
        select_k(data, [1, 2], criterion="accuracy")
    with pytest.raises(PluralignError, match="needs held-out users"):
        select_k(data, [1, 2], held_out_users=0.0)
    with pytest.raises(PluralignError, match="bad estimator parameter"):
        select_k(data, [1, 2], epochs_typo=3)
    few = data.subset(np.isin(data.user, [0, 1]))
    with pytest.raises(DataError, match="2 user"):
        select_k(few, [1, 2], model="pal-a", **FAST_PAL_A)
    with pytest.raises(DataError, match="lower shots"):
        select_k(data, [1], model="pal-a", shots=60, **FAST_PAL_A)


# --------------------------------------------------------------------------------------------------------
runner = CliRunner()


def test_cli_select_k(planted, tmp_path):
    write_synthetic(planted, tmp_path / "syn")
    out = tmp_path / "sel.json"
    args = ["select-k", tmp_path / "syn" / "train.jsonl", "--encoder", tmp_path / "syn" / "vectors.npz"]
    args += ["--model", "pal-a", "--k", "1..2", "--folds", "2", "--seed", "1", "--shots", "20", "--out", out]
    args += ["--dim", "8", "--f-layers", "1", "--no-bias", "--epochs", "40", "--batch-size", "256"]
    args += ["--lr-maps", "1e-2", "--lr-prototypes", "5e-2", "--lr-users", "5e-2"]
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "chosen K = 2" in result.output and "paired standard error" in result.output
    assert "seen_log_loss" in result.output and "beats K = 1" in result.output
    saved = json.loads(out.read_text())
    assert saved["chosen_k"] == 2 and saved["k_values"] == [1, 2] and saved["model"] == "pal-a"

    bad = runner.invoke(app, ["select-k", str(tmp_path / "syn" / "train.jsonl"), "--k", "0..2"])
    assert bad.exit_code == 2 and "K must be an integer >= 1" in bad.output
    missing = runner.invoke(app, ["select-k", str(tmp_path / "nope.jsonl")])
    assert missing.exit_code == 2 and "nope.jsonl" in missing.output
