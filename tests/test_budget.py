"""The step budget (training/budget.py), the data checks (estimator/checks.py) and the defaults on the
12-row hand-written set: small data learns, large data gets large batches, every warning fires on its
case and stays quiet on healthy data, explicit epochs/batch sizes train as before."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pluralign import BTL, PALB
from pluralign.datasets.synthetic import make_synthetic
from pluralign.training import budget
from pluralign.training.config import TrainConfig

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_budget_follows_the_data_size():
    small = budget.resolve(TrainConfig(), 12)
    assert small.batch_size == 12  # full batch
    assert small.max_steps == budget.MIN_STEPS + 100 or small.max_steps >= budget.MIN_STEPS
    assert small.lr_schedule == "cosine" and small.warmup_steps > 0
    assert small.lr_maps == budget.BASE_LR["lr_maps"]  # the maps' rate is not scaled down below 1024
    assert small.lr_users == pytest.approx(0.2 * budget.BASE_LR["lr_users"])  # the users' is
    assert 0 < small.min_steps < small.max_steps
    assert set(small.derived) >= {"batch_size", "epochs", "lr_maps", "eval_every", "min_steps"}

    large = budget.resolve(TrainConfig(), 200_000)
    assert large.batch_size == budget.MAX_BATCH
    assert large.lr_users == pytest.approx(budget.BASE_LR["lr_users"] * budget.LR_SCALE_RANGE["lr_users"][1])
    assert budget.MIN_STEPS <= large.max_steps <= budget.MAX_STEPS
    assert large.eval_every == math.ceil(large.max_steps / budget.EVALUATIONS)
    # more data: never a smaller batch, and fewer passes over it
    sizes = [10, 1000, 5000, 50_000, 500_000, 40_000_000]
    resolved = [budget.resolve(TrainConfig(), n) for n in sizes]
    assert [r.batch_size for r in resolved] == sorted(r.batch_size for r in resolved)
    passes = [r.max_steps * r.batch_size / n for r, n in zip(resolved, sizes, strict=True)]
    assert passes == sorted(passes, reverse=True)
    assert budget.resolve(TrainConfig(), 200_000) == large  # deterministic


def test_explicit_settings_are_kept_and_epochs_train_as_before():
    given = budget.resolve(TrainConfig(batch_size=100, lr_maps=0.1, max_steps=7), 12_345)
    assert (given.batch_size, given.lr_maps, given.max_steps) == (100, 0.1, 7)
    assert "batch_size" not in given.derived and "lr_maps" not in given.derived
    by_epochs = budget.resolve(TrainConfig(epochs=3, batch_size=1000), 12_345)
    assert by_epochs.max_steps == 3 * 13
    assert by_epochs.lr_schedule == "constant" and by_epochs.warmup_steps == 0
    assert by_epochs.eval_every == 13 and by_epochs.min_steps == 0  # once per epoch, patience in epochs
    assert budget.resolve(TrainConfig(epochs=3, batch_size=1000, max_steps=5), 12_345).max_steps == 5
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="linear")


def test_schedule_warms_up_then_decays_to_its_floor():
    factors = [budget.lr_factor(s, 100, 10, "cosine") for s in range(100)]
    assert factors[:10] == sorted(factors[:10]) and factors[0] < 0.2
    assert factors[10:] == sorted(factors[10:], reverse=True)
    assert factors[10] == pytest.approx(1.0)
    assert budget.lr_factor(100, 100, 10, "cosine") == pytest.approx(budget.MIN_LR_SHARE)
    assert {budget.lr_factor(s, 100, 0, "constant") for s in range(100)} == {1.0}


def test_explicit_epochs_and_batch_size_give_one_record_per_epoch(tmp_path):
    data = make_synthetic(model="pal_b", n_users=8, n_train=25, n_test=5, dim=6, seed=0)
    est = PALB(n_prototypes=2, dim=4, epochs=3, batch_size=64, patience=None, val_fraction=0).fit(data.train)
    history = est.history_
    assert history.steps == 3 * math.ceil(len(data.train) / 64)
    assert [r["epoch"] for r in history.records] == [1.0, 2.0, 3.0]
    assert {r["lr_factor"] for r in history.records} == {1.0}
    assert sum(r["rows"] for r in history.records) == 3 * len(data.train)


def test_the_same_seed_gives_the_same_fit():
    data = make_synthetic(model="pal_b", n_users=12, n_train=30, n_test=5, dim=6, seed=1)
    runs = [PALB(n_prototypes=2, dim=4, max_steps=60, seed=4).fit(data.train) for _ in range(2)]
    strip = [[{k: v for k, v in r.items() if k != "seconds"} for r in e.history_.records] for e in runs]
    assert strip[0] == strip[1]
    assert runs[0].history_.validation == "held out"
    np.testing.assert_array_equal(runs[0].user_weights().to_numpy(), runs[1].user_weights().to_numpy())


@pytest.fixture(scope="module")
def tiny_vectors():
    """The 12-row example embedded once (MiniLM, offline) for every fit below."""
    return PALB().prepare(EXAMPLES / "train.jsonl"), PALB().prepare(EXAMPLES / "val.jsonl")


def _majority_rate(frame: pd.DataFrame) -> float:
    """The best accuracy one reward shared by all users can reach: per (prompt, pair), the majority order."""
    pair = frame.apply(lambda r: (r.prompt, *sorted([r.chosen, r.rejected])), axis=1)
    first = frame.chosen == pair.str[1]
    counts = pd.DataFrame({"pair": pair, "first": first}).groupby("pair")["first"].agg(["sum", "count"])
    return float(np.maximum(counts["sum"], counts["count"] - counts["sum"]).sum() / len(frame))


@pytest.mark.parametrize("with_val", [False, True])
def test_twelve_hand_written_rows_learn_with_the_defaults(tiny_vectors, with_val, caplog):
    train, val = tiny_vectors
    frame = pd.read_json(EXAMPLES / "train.jsonl", lines=True)
    majority = _majority_rate(frame)
    assert majority == 0.5  # by design: each question's pair is asked of one person of each kind
    with caplog.at_level(logging.WARNING, logger="pluralign"):
        est = PALB().fit(train, val if with_val else None)
    assert est.score(train) > majority + 0.25
    assert est.history_.records[-1]["train_accuracy"] > majority
    assert est.score(val) >= 0.9  # and it carries over to the other questions (1.0 for seeds 0-5)
    assert est.history_.validation == ("given" if with_val else None)  # 12 rows: too few to hold out
    assert est.fit_warnings_ == [] and not caplog.records
    # the two short-answer people lean on the same prototype, which no long-answer person does
    top = est.user_weights().idxmax(axis=1)
    assert top["ana"] == top["ben"] and top["ana"] not in {top["cleo"], top["dev"]}


def _rows(users: list[str], n_each: int, flip_every: int | None = None) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for u in users:
        for i in range(n_each):
            a, b = f"item {rng.integers(1000)} a", f"item {rng.integers(1000)} b"
            rows.append({"user_id": u, "prompt": "", "chosen": a, "rejected": b})
            if flip_every and i % flip_every == 0:  # the same pair, both ways: no model beats chance
                rows.append({"user_id": u, "prompt": "", "chosen": b, "rejected": a})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def vectors(tmp_path_factory):
    """Random fixed vectors for every text the warning cases use (no encoder needed)."""
    texts = {f"item {i} {s}" for i in range(1000) for s in "ab"}
    rng = np.random.default_rng(1)
    path = tmp_path_factory.mktemp("vectors") / "vectors.npz"
    keys = sorted(texts)
    np.savez(path, keys=np.array(keys), vectors=rng.normal(size=(len(keys), 8)).astype(np.float32))
    return str(path)


@pytest.mark.parametrize(
    ("case", "frame", "k", "expected"),
    [
        ("single user", _rows(["u"], 30), 3, "a single user"),
        ("K >= users", _rows(["a", "b", "c"], 30), 3, "K = 3 prototypes for 3 users"),
        ("too few rows per user", _rows([f"u{i}" for i in range(20)], 1), 2, "per user on average"),
        ("chance accuracy", _rows([f"u{i}" for i in range(6)], 10, flip_every=1), 2, "not clearly above"),
    ],
)
def test_each_warning_fires_on_its_case(case, frame, k, expected, vectors, caplog):
    with caplog.at_level(logging.WARNING, logger="pluralign"):
        est = PALB(n_prototypes=k, dim=4, encoder=vectors, max_steps=50).fit(frame)
    assert [w for w in est.fit_warnings_ if expected in w], (case, est.fit_warnings_)
    assert any(expected in r.getMessage() for r in caplog.records)


def test_warnings_and_settings_survive_save_and_load(vectors, tmp_path):
    est = PALB(n_prototypes=3, dim=4, encoder=vectors, max_steps=20).fit(_rows(["a", "b", "c"], 100))
    loaded = PALB.load(est.save(tmp_path / "model"))
    assert loaded.fit_warnings_ == est.fit_warnings_ and any("K = 3" in w for w in loaded.fit_warnings_)
    assert loaded.history_.settings == {**est.history_.settings}
    assert loaded.history_.best_step == est.history_.best_step and loaded.history_.validation == "held out"


def test_validation_warnings_and_healthy_data_stays_quiet(vectors, caplog):
    frame = _rows([f"u{i}" for i in range(8)], 20)
    val = _rows([f"u{i}" for i in range(4)] + ["stranger"], 5)
    with caplog.at_level(logging.WARNING, logger="pluralign"):
        healthy = PALB(n_prototypes=2, dim=4, encoder=vectors, max_steps=200).fit(frame)
    assert healthy.fit_warnings_ == [] and not caplog.records
    est = PALB(n_prototypes=2, dim=4, encoder=vectors, max_steps=50).fit(frame, val)
    assert any("4 of 8 training users have no validation" in w for w in est.fit_warnings_)
    assert any("from users not in the training data" in w for w in est.fit_warnings_)
    btl = BTL(encoder=vectors, max_steps=20).fit(_rows(["u"], 30))  # one user is fine for one reward
    assert not [w for w in btl.fit_warnings_ if "single user" in w]


def test_held_out_share_is_seeded_and_can_be_turned_off(vectors, caplog):
    frame = _rows([f"u{i}" for i in range(10)], 30)
    with caplog.at_level(logging.INFO, logger="pluralign"):
        est = PALB(n_prototypes=2, dim=4, encoder=vectors, max_steps=40).fit(frame)
    assert est.history_.validation == "held out"
    assert any("held out 30 of 300 comparisons" in r.getMessage() for r in caplog.records)
    off = PALB(n_prototypes=2, dim=4, encoder=vectors, max_steps=40, val_fraction=0).fit(frame)
    assert off.history_.validation is None and off.history_.best_step is None
    assert sum(r["rows"] for r in off.history_.records) == 40 * 300  # all 300 rows, full batch


def test_the_docs_show_what_the_code_prints(vectors):
    """docs/training.md's example lines are the ones a 12-row fit prints, and its warning examples are the
    warnings' own words."""
    docs = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
    resolved = budget.resolve(TrainConfig(), 12)
    assert budget.describe(vars(resolved), 12) in docs
    frame = _rows([f"u{i}" for i in range(4)], 3)
    est = PALB(n_prototypes=2, dim=4, encoder=vectors, max_steps=5).fit(frame)
    assert est.history_.notes[-1] in docs  # too few rows to hold out
    for case, frame, k in [
        ("K = 3 prototypes for 3 users", _rows(["a", "b", "c"], 30), 3),
        ("a single user: PALB with K = 3", _rows(["u"], 30), 3),
    ]:
        warnings = PALB(n_prototypes=k, dim=4, encoder=vectors, max_steps=5).fit(frame).fit_warnings_
        assert next(w for w in warnings if case in w) in docs  # a DataFrame has no file name to prefix


def test_select_k_fits_train_a_share_of_the_budget():
    from pluralign.selection import selection_steps

    full = budget.resolve(TrainConfig(), 90_000).max_steps  # 100k rows less the 10% validation share
    assert selection_steps(PALB(), 100_000, 0.5) == {"max_steps": math.ceil(0.5 * full)}
    assert full > 1
    assert selection_steps(PALB(), 100_000, 1.0) == {}
    assert selection_steps(PALB(max_steps=77), 100_000, 0.5) == {}  # what the user fixed, every fit trains
    assert selection_steps(PALB(epochs=3), 100_000, 0.5) == {}
    half_batch = budget.resolve(TrainConfig(batch_size=512), 90_000).max_steps
    assert selection_steps(PALB(batch_size=512), 100_000, 0.5) == {"max_steps": math.ceil(0.5 * half_batch)}
