"""`pluralign explain`: on planted data (user group g agrees exactly with the statements of cluster g) each
prototype's top statements are one cluster's, its users are that group (ARI 1), and the CLI, the docs'
commands and the report section show it."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import adjusted_rand_score
from typer.testing import CliRunner

from pluralign.cli import app
from pluralign.encoders.precomputed import save_vectors
from pluralign.errors import DataError, PluralignError
from pluralign.estimator import PALB, PALEstimator
from pluralign.report.explain import display_texts, explain, read_groups, relative_scores, shorten
from pluralign.report.html import build_report

torch.set_num_threads(1)
runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
N_CLUSTERS, PER_CLUSTER, PER_GROUP = 3, 6, 10
PREFIX = 'On "Planted": do you agree with the following statement?\n"'


def statement(c: int, i: int) -> str:
    return f"Statement {i} of cluster {c}."


def prompt(c: int, i: int) -> str:
    return f'{PREFIX}{statement(c, i)}"'


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> dict:
    """rows.jsonl + rows.users.csv (group_id = the planted group, two users unlabelled) + vectors.npz, and
    a PALB (K = 3) trained on them through `pluralign train` (RUN/model, RUN/train.json)."""
    root = tmp_path_factory.mktemp("planted")
    rng = np.random.default_rng(0)
    centers = 3.0 * np.eye(N_CLUSTERS, 8)
    names, vectors = ["Yes", "No"], [rng.normal(size=8), rng.normal(size=8)]
    for c in range(N_CLUSTERS):
        for i in range(PER_CLUSTER):
            names.append(prompt(c, i))
            vectors.append(centers[c] + 0.3 * rng.normal(size=8))
    save_vectors(root / "vectors.npz", names, np.asarray(vectors, dtype=np.float32))
    rows, users = [], []
    for g in range(N_CLUSTERS):
        for u in range(PER_GROUP):
            user = f"g{g}-u{u}"
            users.append({"user_id": user, "group_id": "" if u == 0 and g < 2 else str(g), "n_votes": 18})
            for c in range(N_CLUSTERS):
                for i in range(PER_CLUSTER):
                    yes = c == g
                    rows.append(
                        {
                            "user_id": user,
                            "prompt": prompt(c, i),
                            "chosen": "Yes" if yes else "No",
                            "rejected": "No" if yes else "Yes",
                        }
                    )
    (root / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pd.DataFrame(users).to_csv(root / "rows.users.csv", index=False)
    run = root / "run"
    result = invoke(
        "train", root / "rows.jsonl", "--out", run, "--k", 3, "--encoder", root / "vectors.npz", "--seed", 0
    )
    assert result.exit_code == 0, result.output
    return {"root": root, "run": run, "est": PALEstimator.load(run / "model")}


def cluster_of(text: str) -> int:
    return int(re.search(r"cluster (\d)", text).group(1))


def prototype_clusters(result) -> list[int]:
    """The cluster of each prototype's top statements (all of them must share it)."""
    clusters = []
    for proto in result.prototypes:
        found = {cluster_of(u["prompt"]) for u in proto.favours}
        assert len(found) == 1, (proto.prototype, [u["text"] for u in proto.favours])
        clusters.append(found.pop())
    return clusters


def test_top_statements_are_the_planted_ones_and_users_match_groups(planted):
    est = planted["est"]
    assert est.score(planted["root"] / "rows.jsonl") == 1.0  # the planted truth is learned
    result = explain(est, planted["root"] / "rows.jsonl", planted["root"] / "rows.users.csv", top=5)
    assert result.unit == "prompt" and result.positive == "Yes" and result.n_units == 18
    assert sorted(prototype_clusters(result)) == [0, 1, 2]  # each prototype is one cluster
    for proto, cluster in zip(result.prototypes, prototype_clusters(result), strict=True):
        assert len(proto.favours) == len(proto.disfavours) == 5
        assert all(u["score"] > 0 and u["margin"] > 0 for u in proto.favours)  # it says Yes, the others No
        assert all(cluster_of(u["prompt"]) != cluster for u in proto.disfavours)
        assert proto.positive_units >= 6 / 18  # its lean: Yes at least to its own six
        assert all(u["score"] < 0 for u in proto.disfavours)
        for u in proto.favours:  # the voters: everyone with this dominant prototype said Yes
            assert u["text"] == statement(cluster, int(u["text"].split()[1]))  # prefix and quote cut off
            assert u["n_rows"] == 30 and u["share"] == pytest.approx(1 / 3)
            assert u["n_rows_dominant"] == 10 and u["share_dominant"] == 1.0
            assert u["others"] == pytest.approx(u["margin"] - u["score"])
    groups = result.groups
    assert groups["ari"] == 1.0 and groups["n_labelled"] == 28 and groups["n_unlabelled"] == 2
    assert groups["source"] == str(planted["root"] / "rows.users.csv") and groups["column"] == "group_id"
    for g, counts in groups["contingency"].items():  # every group on one prototype, a different one each
        assert sorted(counts) == [0, 0, 10 - (int(g) < 2)]
    users = result.users
    assert users["n_users"] == 30 and users["dominant"] == [10, 10, 10]
    assert users["effective_k"] == pytest.approx(3.0, abs=0.05)  # the population uses all three
    w = est.user_weights().to_numpy()
    assert users["user_effective_k"] == pytest.approx(np.exp(-(w * np.log(w)).sum(axis=1)).mean())
    assert users["entropy"] == pytest.approx(-(w * np.log(w)).sum(axis=1).mean() / np.log(3))
    json.dumps(result.to_dict())  # JSON-ready


def test_ari_equals_sklearn_on_a_hand_made_labelling(planted):
    est = planted["est"]
    dominant = est.user_weights().to_numpy().argmax(axis=1)
    ids = list(est.users_)
    labels = {u: ["a", "b"][i % 2] for i, u in enumerate(ids)} | {ids[0]: ""}  # one unlabelled
    result = explain(est, planted["root"] / "rows.jsonl", labels)
    expected = adjusted_rand_score([labels[u] for u in ids[1:]], dominant[1:])
    assert result.groups["ari"] == pytest.approx(expected) and result.groups["n_labelled"] == len(ids) - 1
    assert result.groups["source"] is None
    counts = result.groups["contingency"]
    assert sum(map(sum, counts.values())) == len(ids) - 1 and set(counts) == {"a", "b"}


def test_response_units_rank_the_planted_answers(planted):
    result = explain(planted["est"], planted["root"] / "rows.jsonl", unit="response", top=6)
    assert result.unit == "response" and result.n_units == 36
    for proto, cluster in zip(result.prototypes, prototype_clusters(result), strict=True):
        assert {u["response"] for u in proto.favours} == {"Yes"}  # its own statements' Yes, all six
        assert {cluster_of(u["prompt"]) for u in proto.favours} == {cluster}
        assert {u["response"] for u in proto.disfavours} == {"No"}
        assert all(u["text"].endswith(" -> Yes") for u in proto.favours)
        # a prompt with two responses: the centred rewards are +-half the margin
        assert all(u["share"] == pytest.approx(1 / 3) and u["n_rows"] == 30 for u in proto.favours)


def test_definitions_on_small_cases():
    margins = np.array([[3.0, 1.0, -1.0], [0.0, 0.0, 0.0]])
    assert relative_scores(margins).tolist() == [[3.0, 0.0, -3.0], [0.0, 0.0, 0.0]]
    assert relative_scores(np.array([[2.0]])).tolist() == [[2.0]]  # K = 1: its own margin
    shown = display_texts(np.array([prompt(0, 1), prompt(2, 3)], dtype=object))
    assert shown.tolist() == [statement(0, 1), statement(2, 3)]
    assert display_texts(np.array(["only one"], dtype=object)).tolist() == ["only one"]
    assert shorten("a\n b   c", 0) == "a b c" and shorten("abcdef", 4) == "abc…"


def test_users_file_without_the_group_column(planted, tmp_path):
    bad = tmp_path / "users.csv"
    pd.DataFrame({"user_id": ["g0-u1"], "cluster": ["0"]}).to_csv(bad, index=False)
    with pytest.raises(DataError) as info:
        read_groups(bad, "group_id")
    assert info.value.path == str(bad) and info.value.field == "group_id"
    assert "no group column 'group_id'" in str(info.value) and "user_id, cluster" in str(info.value)
    assert read_groups(planted["root"] / "rows.users.csv", "group-id").name == "group_id"  # Polis's name
    result = invoke("explain", planted["run"], planted["root"] / "rows.jsonl", "--users", bad)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"{bad}: field 'group_id': no group column 'group_id'" in " ".join(result.output.split())
    with pytest.raises(DataError, match="no such users file"):
        read_groups(tmp_path / "absent.csv")


def test_cli_json_and_tables(planted, tmp_path):
    rows = planted["root"] / "rows.jsonl"
    result = invoke("explain", planted["run"], rows, "--top", 2, "--json")  # users file found beside rows
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["estimator"] == "PALB" and out["n_prototypes"] == 3 and out["unit"] == "prompt"
    assert out["top"] == 2 and [len(p["favours"]) for p in out["prototypes"]] == [2, 2, 2]
    assert out["prototypes"][0]["favours"][0]["prompt"].startswith(PREFIX)  # the whole text in JSON
    assert out["groups"]["ari"] == 1.0 and out["groups"]["column"] == "group_id"
    assert out["users"]["dominant"] == [10, 10, 10] and out["positive"] == "Yes"
    table = invoke("explain", planted["run"], rows, "--width", 12)
    assert table.exit_code == 0, table.output
    text = table.stdout
    for k in range(3):
        assert f"prototype {k} favours most" in text and f"prototype {k} favours least" in text
    assert "Statement …" in text or "Statement 0…" in text  # cut to the width asked
    assert "adjusted Rand index of dominant prototype vs group: 1.000" in text
    assert "28 users with a label, 2 without" in text
    # a users file beside the data without the column is not used, and we say why (not an error)
    moved = tmp_path / "rows.jsonl"
    shutil.copy(rows, moved)
    pd.DataFrame({"user_id": ["x"], "other": ["1"]}).to_csv(tmp_path / "rows.users.csv", index=False)
    result = invoke("explain", planted["run"], moved, "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["groups"] is None
    assert "not using" in result.stderr and "no group column 'group_id'" in result.stderr


def test_report_has_the_explain_section(planted, tmp_path):
    page = build_report(planted["run"])  # the data from RUN/train.json, the groups from rows.users.csv
    assert "<h2>What the prototypes stand for</h2>" in page
    assert "<h4>prototype 2 favours least</h4>" in page and statement(1, 0) in page
    assert "Adjusted Rand index of dominant prototype vs group" in page and "<b>1.000</b>" in page
    labels = {u: "x" for u in planted["est"].users_}
    (tmp_path / "user_groups.json").write_text(json.dumps(labels))
    run = tmp_path / "copy"
    shutil.copytree(planted["run"] / "model", run / "model")
    page = build_report(run)  # no train.json: no section, nothing broken
    assert "What the prototypes stand for" not in page
    result = invoke("report", run, "--data", planted["root"] / "rows.jsonl", "--out", tmp_path / "r.html")
    assert result.exit_code == 0, result.output
    assert "What the prototypes stand for" in (tmp_path / "r.html").read_text()


def test_bad_arguments(planted, tmp_path):
    with pytest.raises(PluralignError, match="not fitted"):
        explain(PALB(), tmp_path / "rows.jsonl")
    rows = planted["root"] / "rows.jsonl"
    with pytest.raises(ValueError, match="unknown unit 'statement'"):
        explain(planted["est"], rows, unit="statement")
    with pytest.raises(ValueError, match="top must be >= 1"):
        explain(planted["est"], rows, top=0)


def docs_commands() -> list[list[str]]:
    text = (ROOT / "docs" / "explain.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- explain-commands -->\n```bash\n(.*?)```", text, re.S)
    assert block, "docs/explain.md has no explain-commands block"
    return [shlex.split(line) for line in block.group(1).replace("\\\n", " ").splitlines() if line.strip()]


def polis_export(folder: Path) -> Path:
    """A tiny Polis export: 2 opinion groups of 6 participants, each agreeing with its own 3 statements."""
    folder.mkdir(parents=True)
    comments = [f"Group {g} statement {i}." for g in range(2) for i in range(3)]
    pd.DataFrame(
        {
            "timestamp": range(6),
            "datetime": "d",
            "comment-id": range(6),
            "author-id": 0,
            "agrees": 1,
            "disagrees": 1,
            "moderated": 1,
            "comment-body": comments,
        }
    ).to_csv(folder / "comments.csv", index=False)
    (folder / "summary.csv").write_text("topic,Tiny\nurl,https://pol.is/tiny\n")
    header = ["participant", "group-id", "n-comments", "n-votes", "n-agree", "n-disagree"]
    lines = [[*header, *map(str, range(6))]]
    for p in range(12):
        g = p % 2
        votes = [1 if c // 3 == g else -1 for c in range(6)]
        lines.append([str(p), str(g), "0", "6", "3", "3", *map(str, votes)])
    (folder / "participants-votes.csv").write_text("".join(",".join(line) + "\n" for line in lines))
    return folder


def test_the_docs_commands_run(tmp_path, monkeypatch):
    """docs/explain.md's commands, on a tiny Polis export in place of the conversation they name."""
    commands = docs_commands()
    assert [c[:2] for c in commands] == [["pluralign", n] for n in ("datasets", "train", "explain")]
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")  # the docs name ../shared/data/polis/..., as from the repository
    polis_export(tmp_path / "work" / commands[0][3])
    for argv in commands:
        result = runner.invoke(app, argv[1:], catch_exceptions=False)
        assert result.exit_code == 0, (argv, result.output)
    assert "prototype 0 favours most" in result.stdout and "adjusted Rand index" in result.stdout


def test_pooled_conversations_show_statements_and_qualify_groups(tmp_path):
    """Prompts of several Polis conversations are trimmed per conversation (their first line), and group ids,
    numbered per conversation by Polis, become <conversation>/<group>."""
    prompts = [
        f'On "{topic}": do you agree with the following statement?\n"{s}"'
        for topic, s in [
            ("Housing", "Build more"),
            ("Housing", "Rent caps"),
            ("Brexit", "Leave"),
            ("Brexit", "Stay"),
        ]
    ]
    assert display_texts(np.asarray(prompts, dtype=object)).tolist() == [
        "Build more",
        "Rent caps",
        "Leave",
        "Stay",
    ]
    users = tmp_path / "users.csv"
    users.write_text("user_id,conversation,group_id\nh/1,housing,0\nh/2,housing,\nb/1,brexit,0\n")
    assert read_groups(users).to_dict() == {"h/1": "housing/0", "b/1": "brexit/0"}
