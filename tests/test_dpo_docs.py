"""The Python example of docs/dpo.md runs as written (SmolLM2, EM-DPO with LoRA, generation; slow)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

DOC = Path(__file__).resolve().parents[1] / "docs" / "dpo.md"


def python_example() -> str:
    text = DOC.read_text()
    section = text[text.index("## Python: the same steps") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_docs_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PLURALIGN_CACHE", str(tmp_path / "cache"))
    exec(compile(python_example(), str(DOC), "exec"), {"__name__": "docs_example"})
    printed = capsys.readouterr().out
    assert "'source': 'mmra'" in printed and "'chat_template': True" in printed
