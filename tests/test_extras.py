"""Optional extras: the core commands never import the web stack or matplotlib, and a missing extra is one
line naming the `pip install 'pluralign[...]'` to run. Each case runs in a fresh interpreter (sys.modules
is process-wide); a missing package is simulated with ``sys.modules[name] = None``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pluralign.errors import PluralignError
from pluralign.extras import MissingExtraError, require

#: top-level packages of the serve, report, datasets and dpo extras (pydantic is not here: typer needs it)
OPTIONAL = ("fastapi", "starlette", "uvicorn", "httpx", "matplotlib", "datasets", "trl", "peft", "accelerate")


def run_python(code: str, cwd: Path, block: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter with the packages ``block`` made unimportable."""
    prelude = f"import sys\nfor _name in {block!r}:\n    sys.modules[_name] = None\n"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


# The core commands, step by step; after each step, which optional packages are in sys.modules.
CORE_COMMANDS = """
import json
from typer.testing import CliRunner

OPTIONAL = {optional!r}
steps = {{}}

def loaded():
    return sorted({{m.split(".")[0] for m, mod in sys.modules.items() if mod is not None}} & set(OPTIONAL))

def invoke(*args):
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, (args, result.output)
    steps[args[0]] = loaded()
    return result

import pluralign
steps["import pluralign"] = loaded()
from pluralign.cli import app
steps["import pluralign.cli"] = loaded()
runner = CliRunner()
invoke("--help")
invoke("synth", "data", "--users", "6", "--train", "10", "--test", "4", "--unseen-users", "2",
       "--unseen-per-user", "4")
invoke("train", "data/train.jsonl", "--out", "run", "--k", "2", "--epochs", "2", "--encoder",
       "data/vectors.npz")
invoke("score", "run", "-r", "item-0", "-r", "item-1", "--user", "user-0", "--encoder", "data/vectors.npz")
rows = [json.loads(line) for line in open("data/train.jsonl")][:4]
with open("pool.jsonl", "w") as f:
    for row in rows:
        f.write(json.dumps({{"prompt": row["prompt"], "a": row["chosen"], "b": row["rejected"]}}) + "\\n")
out = invoke("ask", "run", "pool.jsonl", "--user", "user-0", "--encoder", "data/vectors.npz", "--json")
steps["asked"] = [(r["user_id"], r["n_candidates"]) for r in json.loads(out.stdout)]
print(json.dumps(steps))
"""


def test_core_commands_import_no_optional_stack(tmp_path):
    """import pluralign, --help, synth, train, score and ask leave every extra's packages unimported."""
    result = run_python(CORE_COMMANDS.format(optional=OPTIONAL), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    steps = json.loads(result.stdout.splitlines()[-1])
    asked = steps.pop("asked")
    assert asked == [["user-0", 4]]
    commands = ["--help", "synth", "train", "score", "ask"]
    assert list(steps) == ["import pluralign", "import pluralign.cli", *commands]
    assert steps == {step: [] for step in steps}, steps


def test_core_commands_work_without_the_extras(tmp_path):
    """The same commands with every extra's packages missing (a core-only install)."""
    result = run_python(CORE_COMMANDS.format(optional=OPTIONAL), tmp_path, block=OPTIONAL)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.splitlines()[-1])["asked"] == [["user-0", 4]]


CLI = """
from pluralign.cli import app
app({args!r}, prog_name="pluralign")
"""


@pytest.mark.parametrize(
    ("block", "args", "extra", "module"),
    [
        (("fastapi",), ["serve", "no-such-model", "--read-only"], "serve", "fastapi"),
        (("uvicorn",), ["serve", "no-such-model", "--read-only"], "serve", "uvicorn"),
        (("httpx",), ["score-remote", "-r", "a", "--user", "u"], "serve", "httpx"),
        (("matplotlib",), ["report", "no-such-run"], "report", "matplotlib"),
    ],
)
def test_missing_extra_is_one_line_naming_the_install(tmp_path, block, args, extra, module):
    result = run_python(CLI.format(args=args), tmp_path, block=block)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in result.stderr
    assert f"pip install 'pluralign[{extra}]'" in lines[0] and f"error: {module} is not installed" in lines[0]


def test_missing_extra_from_python(tmp_path):
    """Importing pluralign.serve / pluralign.client, or reading a datasets directory, without the extra
    raises MissingExtraError (a PluralignError and an ImportError) naming the pip command."""
    code = """
    from pluralign.extras import MissingExtraError
    from pluralign import read_preferences
    import pathlib
    for what in ("import pluralign.serve", "import pluralign.client", "import pluralign.report.plots",
                 "read_preferences(pathlib.Path('.'))"):
        try:
            exec(what)
        except MissingExtraError as exc:
            assert isinstance(exc, ImportError)
            print(exc.extra, exc.module, str(exc))
    """
    block = ("fastapi", "httpx", "matplotlib", "datasets")
    result = run_python(code, tmp_path, block=block)
    assert result.returncode == 0, result.stderr[-3000:]
    got = [line.split(" ", 2) for line in result.stdout.strip().splitlines()]
    assert [(e, m) for e, m, _ in got] == [
        ("serve", "fastapi"),
        ("serve", "httpx"),
        ("report", "matplotlib"),
        ("datasets", "datasets"),
    ]
    for extra, _, message in got:
        assert message.endswith(f"pip install 'pluralign[{extra}]'")


def test_require_reports_only_missing_modules(monkeypatch):
    assert require("serve", "json") is json
    monkeypatch.setitem(sys.modules, "pluralign_test_absent", None)
    with pytest.raises(MissingExtraError) as info:
        require("report", "pluralign_test_absent")
    assert isinstance(info.value, PluralignError) and info.value.extra == "report"
    assert str(info.value) == (
        "pluralign_test_absent is not installed (needed for plots and HTML reports): "
        "pip install 'pluralign[report]'"
    )


def test_require_passes_other_import_errors_through(monkeypatch, tmp_path):
    """An installed package that fails to import for another reason (here: a name it imports is gone, as
    after a version mismatch) is not reported as a missing extra."""
    module = "pluralign_test_broken_module"
    (tmp_path / f"{module}.py").write_text("from json import no_such_name\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportError, match="no_such_name") as info:
        require("serve", module)
    assert not isinstance(info.value, MissingExtraError)
