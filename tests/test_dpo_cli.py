"""`pluralign dpo train` end to end on a tiny local model folder, and its handling of bad input."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from pluralign.cli import app
from pluralign.dpo.models import tiny_causal_lm, word_tokenizer
from pluralign.dpo.run import DPORunConfig

runner = CliRunner()
WORDS = ["red apple", "blue sky", "green tree"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_lm")
    tokenizer = word_tokenizer(["question 0 1 2 :", *WORDS])
    tiny_causal_lm(len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def rankings(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "rankings.jsonl"
    rows = []
    for u in range(6):
        order = WORDS if u < 4 else WORDS[::-1]
        for q in range(3):
            rows.append(
                {"user_id": f"u{u}", "prompt": f"question {q} :", "responses": [" " + w for w in order]}
            )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("method", ["dpo", "mixdpo-gamma", "em-dpo"])
def test_train_methods(tmp_path, model_dir, rankings, method):
    out = tmp_path / method
    result = invoke(
        "dpo",
        "train",
        rankings,
        "--out",
        out,
        "--method",
        method,
        "--model",
        model_dir,
        "--lr",
        5e-3,
        "--epochs",
        1,
        "--holdout",
        0,
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == method and summary["rankings"] == 18
    if method == "em-dpo":
        assert sum(summary["type_sizes"].values()) == 6
        assert (out / "type_1" / "model.safetensors").is_file()
        assert sum(summary["mmra_weights"]) == pytest.approx(1.0)
    else:
        assert summary["pairs"] == 54 and (out / "model.safetensors").is_file()
    if method == "mixdpo-gamma":
        assert set(summary["beta"]) == {"mean", "std", "cv"}
        assert (out / "beta_distribution.json").is_file()


def test_bad_input(tmp_path, model_dir, rankings):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"user_id": "u", "prompt": "q", "responses": ["a", "b"]}\n'
        '{"user_id": "u", "prompt": "q", "responses": ["a"]}\n'
    )
    result = invoke("dpo", "train", bad, "--out", tmp_path / "o", "--model", model_dir)
    assert result.exit_code == 2
    assert f"{bad}:2: field 'responses'" in result.output.replace("\n", "")
    result = invoke("dpo", "train", rankings, "--out", tmp_path / "o", "--model", tmp_path)
    assert result.exit_code == 2 and "not a local Hugging Face model folder" in result.output.replace(
        "\n", ""
    )
    result = invoke("dpo", "train", rankings, "--out", tmp_path / "o", "--model", model_dir, "--beta", 0)
    assert result.exit_code == 2 and "beta must be > 0" in result.output
    assert not (tmp_path / "o").exists()
    with pytest.raises(ValueError, match="method"):
        DPORunConfig(method="ppo")
