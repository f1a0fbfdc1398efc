"""`pluralign report`: one self-contained HTML page from a run directory, and its handling of bad input."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from pluralign.cli import app
from pluralign.datasets.synthetic import make_synthetic
from pluralign.errors import PluralignError
from pluralign.estimator import BTL, PALA, PALB
from pluralign.report.html import build_report, write_report

torch.set_num_threads(1)
runner = CliRunner()
IMG = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
EVIL = "<script>alert(1)</script>"

RESULTS = {
    "table": [
        {"model": "PAL-B", "K": 3, "seen_accuracy": 0.9312, "note": EVIL},
        {"model": "BTL", "K": 1, "seen_accuracy": 0.8571, "extra": [1, 2]},
    ],
    "accuracy_vs_k": {
        "series": {
            "PAL-A": {"k": [1, 2, 3, 4], "mean": [0.85, 0.9, 0.93, 0.93], "std": [0.01, 0.02, 0.01, 0.01]},
            "PAL-B": {"k": [1, 2, 3, 4], "mean": [0.84, 0.88, 0.92, 0.92], "std": None},
        },
        "true_k": 3,
        "title": "cost $5 <budget>",
    },
    "few_shot": {
        "series": {"K = 3": {"shots": [0, 5, 10, 40], "mean": [0.8, 0.85, 0.9, None], "std": [0.02] * 4}},
        "reference": 0.93,
        "reference_label": "seen users",
    },
}


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def images(page: str) -> list[bytes]:
    return [base64.b64decode(data) for data in IMG.findall(page)]


@pytest.fixture(scope="module")
def data():
    return make_synthetic(model="pal_a", n_users=12, n_train=20, n_test=5, seed=0)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data) -> Path:
    """RUN/model (PAL-B, K = 3) and RUN/k4/model (PAL-A, K = 4), each with metrics.jsonl; results; groups."""
    run = tmp_path_factory.mktemp("run")
    PALB(n_prototypes=3, epochs=2, metrics_path=run / "metrics.jsonl").fit(data.train).save(run / "model")
    sub = run / "k4"
    PALA(n_prototypes=4, epochs=2, metrics_path=sub / "metrics.jsonl").fit(data.train).save(sub / "model")
    (run / "results.json").write_text(json.dumps(RESULTS))
    users = [str(u) for u in data.train.user_ids]
    groups = {u: ["persona <a>", "persona b", "_hidden"][i % 3] for i, u in enumerate(users[:-1])}
    (run / "user_groups.json").write_text(json.dumps(groups))
    return run


def test_report_cli_writes_a_self_contained_page(run_dir, tmp_path):
    out = tmp_path / "sub" / "report.html"
    result = invoke("report", run_dir, "--out", out)
    assert result.exit_code == 0, result.output
    page = out.read_text()
    # table values, escaped
    assert "0.9312" in page and "0.8571" in page and "PAL-B" in page and "seen_accuracy" in page
    assert EVIL not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    # accuracy vs K, few-shot, K=3 simplex + groups, K=4 PCA + histograms + groups, training curves
    pngs = images(page)
    assert len(pngs) == 8
    assert all(png.startswith(b"\x89PNG\r\n\x1a\n") for png in pngs)
    # header: run name, version, one checkpoint row each
    assert run_dir.name in page and "pluralign" in page and "UTC" in page
    assert "pal_b" in page and "pal_a" in page and "k4" in page
    assert "Not found" not in page
    assert "1 of 12 users have no entry" in page
    assert not [p.name for p in out.parent.iterdir() if p.name != "report.html"]  # no temp file left


def test_report_default_output_in_run_dir(run_dir):
    result = invoke("report", run_dir)
    assert result.exit_code == 0, result.output
    assert (run_dir / "report.html").is_file()
    assert not list(run_dir.glob(".report.html*"))
    # a second report of the same directory does not pick up the first one
    assert len(images((run_dir / "report.html").read_text())) == 8


def test_report_sections_follow_their_inputs(tmp_path, data):
    """Only a K = 2 checkpoint, no groups, no results: one w0 histogram, training curves, notes."""
    run = tmp_path / "run"
    PALA(n_prototypes=2, epochs=2, metrics_path=run / "metrics.jsonl").fit(data.train).save(run / "model")
    page = build_report(run)
    assert len(images(page)) == 2
    assert "Not found" in page and "results.json" in page and "user_groups.json" in page


def test_report_k1_checkpoint_and_model_dir_itself(tmp_path, data):
    model = tmp_path / "btl" / "model"
    BTL(epochs=1).fit(data.train).save(model)
    page = build_report(model)
    assert "K = 1" in page and len(images(page)) == 0


def test_report_results_only(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"few_shot": RESULTS["few_shot"]}))
    page = build_report(tmp_path)
    assert len(images(page)) == 1
    assert "<code>table</code>" in page and "metrics.jsonl" in page


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"table": [1, 2]', "results.json:1"),
        ('{\n"table": [\n{"a": 1},\n]}', "results.json:4"),
        ('{"table": [1, 2]}', "field 'table'"),
        ('{"accuracy_vs_k": {"series": {"x": {"k": [1, 2], "mean": [0.5]}}}}', "accuracy_vs_k.series.x"),
        ('{"few_shot": {"series": {"x": {"shots": [0], "mean": ["a"]}}}}', "few_shot.series.x.mean"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_malformed_results_json(tmp_path, text, expected):
    (tmp_path / "results.json").write_text(text)
    result = invoke("report", tmp_path)
    assert result.exit_code == 2
    assert "results.json" in result.output and expected in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "report.html").exists()


def test_malformed_metrics_line(tmp_path):
    run = tmp_path / "a"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"epoch": 1, "train_loss": 0.6}\n\n{"epoch": 2, "train_loss": \n')
    result = invoke("report", tmp_path)
    assert result.exit_code == 2
    assert "metrics.jsonl:3" in result.output


def test_results_without_known_keys_is_nothing(tmp_path):
    (tmp_path / "results.json").write_text('{"runs": []}')
    result = invoke("report", tmp_path)
    assert result.exit_code == 2 and "nothing to report" in result.output


def test_missing_and_empty_run_dir(tmp_path):
    result = invoke("report", tmp_path / "nope")
    assert result.exit_code == 2 and "does not exist" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = invoke("report", empty)
    assert result.exit_code == 2
    assert "nothing to report" in result.output and "results.json" in result.output
    assert not (empty / "report.html").exists()


def test_out_is_a_directory(run_dir, tmp_path):
    with pytest.raises(PluralignError, match="is a directory"):
        write_report(run_dir, tmp_path)


def test_bad_user_groups_and_broken_checkpoint(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps({"table": [{"a": 1}]}))
    (run / "user_groups.json").write_text('["user-0"]')
    result = invoke("report", run)
    assert result.exit_code == 2 and "user_groups.json" in result.output
    (run / "user_groups.json").unlink()
    (run / "model").mkdir()
    (run / "model" / "config.json").write_text("{}")
    result = invoke("report", run)
    assert result.exit_code == 2 and "model.safetensors" in result.output
