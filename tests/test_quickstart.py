"""The README's quickstart: every command of its marked block runs (through the CLI, in a copy of
examples/) and gives what the text around it says."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

from typer.testing import CliRunner

from pluralign.cli import app

ROOT = Path(__file__).resolve().parents[1]


def quickstart_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- quickstart.*?-->\n```bash\n(.*?)```\n<!-- /quickstart -->", text, re.S)
    assert block, "README.md has no quickstart block"
    return [shlex.split(line) for line in block.group(1).replace("\\\n", " ").splitlines() if line.strip()]


def test_readme_quickstart_runs_as_shown(tmp_path, monkeypatch):
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    commands = quickstart_commands()
    assert [c[:2] for c in commands] == [["pluralign", name] for name in ("train", "eval", "adapt", "score")]
    runner = CliRunner()
    outputs = []
    for argv in commands:
        result = runner.invoke(app, [*argv[1:], "--json"])
        assert result.exit_code == 0, (argv, result.output)
        outputs.append(json.loads(result.stdout))
    (train,), (evaluation,), (adapt,), ranking = outputs
    assert train["batch"] == 12 and train["steps"] == 500 and train["train_acc"] == 1.0  # as the text says
    assert train["warnings"] == [] and train["val"] == "none"  # 12 rows: too few to hold any out
    assert evaluation["accuracy"] >= 0.9
    assert adapt["zero_shot_acc"] == 0.0 and adapt["few_shot_acc"] == 1.0
    assert ranking[0]["response"].startswith("Sunlight")  # erin likes the long answers
    assert list((tmp_path / "runs" / "mine-erin").rglob("config.json"))  # the adapted model was saved
