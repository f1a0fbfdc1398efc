"""The command line end to end on a tiny synthetic dataset, and its handling of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pluralign.cli import app
from pluralign.encoders.precomputed import save_vectors

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    result = invoke(
        "synth",
        out,
        "--users",
        20,
        "--train",
        40,
        "--test",
        20,
        "--prototypes",
        2,
        "--unseen-users",
        8,
        "--unseen-per-user",
        60,
        "--seed",
        3,
    )
    assert result.exit_code == 0, result.output
    return out


def test_synth_writes_files(synth_dir):
    names = {p.name for p in synth_dir.iterdir()}
    assert {"train.jsonl", "test.jsonl", "unseen_adapt.jsonl", "unseen_test.jsonl", "vectors.npz"} <= names
    first = json.loads((synth_dir / "train.jsonl").read_text().splitlines()[0])
    assert set(first) >= {"user_id", "prompt", "chosen", "rejected"}


def test_train_eval_adapt_score(synth_dir, tmp_path):
    run = tmp_path / "run"
    result = invoke(
        "train",
        synth_dir / "train.jsonl",
        "--out",
        run,
        "--model",
        "pal-a",
        "--k",
        2,
        "--epochs",
        60,
        "--f-layers",
        1,
        "--lr-maps",
        5e-3,
        "--lr-prototypes",
        5e-2,
        "--lr-users",
        5e-2,
        "--encoder",
        synth_dir / "vectors.npz",
        "--json",
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)[0]
    assert summary["users"] == 20 and summary["epochs"] == 60
    assert (run / "model" / "config.json").is_file()
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 60

    result = invoke("eval", run, synth_dir / "test.jsonl", "--json")
    assert result.exit_code == 0, result.output
    evaluation = json.loads(result.stdout)[0]
    assert evaluation["known_users"] == 1.0 and 0.5 < evaluation["accuracy"] <= 1.0

    result = invoke(
        "adapt",
        run,
        synth_dir / "unseen_adapt.jsonl",
        "--test",
        synth_dir / "unseen_test.jsonl",
        "--out",
        tmp_path / "adapted",
        "--json",
    )
    assert result.exit_code == 0, result.output
    adapted = json.loads(result.stdout)[0]
    assert adapted["users_fitted"] == 8
    # adaptation quality is tested in test_estimator.py; here the command reports both accuracies
    assert 0.5 < adapted["zero_shot_acc"] <= 1 and 0.5 < adapted["few_shot_acc"] <= 1

    train_row = json.loads((synth_dir / "train.jsonl").read_text().splitlines()[0])
    result = invoke(
        "score",
        run,
        "--user",
        train_row["user_id"],
        "--response",
        train_row["chosen"],
        "--response",
        train_row["rejected"],
        "--json",
    )
    assert result.exit_code == 0, result.output
    ranked = json.loads(result.stdout)
    assert [r["rank"] for r in ranked] == [1, 2]
    assert ranked[0]["reward"] >= ranked[1]["reward"]


def test_score_ranks_the_response_the_user_clearly_prefers_first(tmp_path):
    """Two users with opposite tastes along one axis: ``alpha`` always picks the item nearer (+2, 0, 0, 0),
    ``beta`` the item nearer (-2, 0, 0, 0). Asked about the two extreme items, each user's favourite must
    rank first whatever the order the responses are given in, so the two users get opposite rankings."""
    rng = np.random.default_rng(0)
    names = [f"item-{i}" for i in range(60)]
    vectors = rng.normal(size=(60, 4)).astype(np.float32)
    save_vectors(tmp_path / "vectors.npz", names, vectors)
    ideal = {"alpha": np.array([2.0, 0, 0, 0]), "beta": np.array([-2.0, 0, 0, 0])}
    rows = []
    for user, point in ideal.items():
        for _ in range(300):
            i, j = rng.choice(60, size=2, replace=False)
            near_i = np.linalg.norm(vectors[i] - point) < np.linalg.norm(vectors[j] - point)
            chosen, rejected = (i, j) if near_i else (j, i)
            rows.append({"user_id": user, "prompt": "", "chosen": names[chosen], "rejected": names[rejected]})
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run"
    result = invoke("train", tmp_path / "train.jsonl", "--out", run, "--model", "pal-a", "--k", 2,
                    "--epochs", 80, "--f-layers", 1, "--lr-maps", 5e-3, "--lr-prototypes", 5e-2,
                    "--lr-users", 5e-2, "--encoder", tmp_path / "vectors.npz")  # fmt: skip
    assert result.exit_code == 0, result.output
    east, west = names[int(vectors[:, 0].argmax())], names[int(vectors[:, 0].argmin())]
    for user, favourite in (("alpha", east), ("beta", west)):
        other = west if favourite == east else east
        distance = {n: np.linalg.norm(vectors[names.index(n)] - ideal[user]) for n in (east, west)}
        assert distance[favourite] < distance[other] - 1.0  # the planted truth: clearly preferred
        for order in ((east, west), (west, east)):
            result = invoke("score", run, "--user", user, "-r", order[0], "-r", order[1], "--json")
            assert result.exit_code == 0, result.output
            ranked = json.loads(result.stdout)
            assert [r["response"] for r in ranked] == [favourite, other]
            assert ranked[0]["reward"] > ranked[1]["reward"]


def test_bad_input_exits_2_with_location_and_writes_nothing(tmp_path, synth_dir):
    bad = tmp_path / "bad.jsonl"
    good = (synth_dir / "train.jsonl").read_text().splitlines()[:3]
    bad.write_text(
        "\n".join([*good, json.dumps({"user_id": "u", "prompt": "", "chosen": "a", "rejected": "a"})])
    )
    run = tmp_path / "run"
    result = runner.invoke(
        app, ["train", str(bad), "--out", str(run), "--encoder", str(synth_dir / "vectors.npz")]
    )
    assert result.exit_code == 2
    assert "bad.jsonl:4" in result.output and "rejected" in result.output
    assert "Traceback" not in result.output
    assert not run.exists()


def test_missing_file_and_missing_checkpoint(tmp_path):
    result = runner.invoke(app, ["train", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "nope.jsonl" in result.output
    result = runner.invoke(app, ["eval", str(tmp_path / "norun"), str(tmp_path / "x.jsonl")])
    assert result.exit_code == 2 and "not a checkpoint directory" in result.output


def test_help_lists_commands():
    result = invoke("--help")
    for name in ("synth", "embed", "train", "eval", "adapt", "score", "demo", "bench"):
        assert name in result.output


def test_persona_build(tmp_path):
    out = tmp_path / "persona"
    result = invoke(
        "persona",
        "build",
        out,
        "--k-star",
        2,
        "--users-per-persona",
        5,
        "--queries-per-user",
        20,
        "--unseen-users-per-persona",
        2,
        "--unseen-queries-per-user",
        10,
        "--jsonl",
        "--json",
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)[0]
    assert summary == {
        "statements": 2000,
        "seen_users": 10,
        "seen_rows": 200,
        "unseen_users": 4,
        "unseen_rows": 40,
    }
    rows = [json.loads(line) for line in (out / "seen.jsonl").read_text().splitlines()]
    assert len(rows) == 200 and {r["chosen"] for r in rows} <= {"Yes", "No"}
    assert (out / "manifest.json").is_file()
    # the paper's scale as JSONL is refused before anything is written
    result = runner.invoke(app, ["persona", "build", str(tmp_path / "big"), "--jsonl"])
    assert result.exit_code == 2 and "compact dataset" in result.output
    assert not (tmp_path / "big").exists()


def test_embed_reports_the_model_load_apart_from_the_encoding_rate(tmp_path, monkeypatch):
    """texts/s used to include the model load; the load is now its own column."""
    import time

    import pluralign.encoders.spec as spec

    class SlowLoad:
        id, dim = "slow-load-4", 4

        def load_model(self):
            if not getattr(self, "loaded", False):
                time.sleep(0.4)
                self.loaded = True

        def encode(self, texts, *, batch_size=64, show_progress=False):
            self.load_model()
            return np.ones((len(texts), self.dim), dtype=np.float32)

    monkeypatch.setattr(spec, "encoder_from_spec", lambda name: SlowLoad())
    data = Path(__file__).resolve().parents[1] / "examples" / "train.jsonl"
    result = runner.invoke(app, ["embed", str(data), "--cache", str(tmp_path / "cache"), "--json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["load_seconds"] >= 0.4 > row["seconds"] and row["encoded"] == row["texts"] > 0
