"""The `pluralign` command line (typer). It parses and prints; the work is in the library.

common    the apps, consoles, errors as one line, output, shared options, derived hyperparameter options
train     train, select-k                      data      synth, persona build, embed
use       eval, adapt, grow, score, ask        service   serve, score-remote
explain   explain
runs      demo, report, bench NAME             datasets  datasets polis
dpo       dpo train, dpo generate, generate (best-of-n for a user)
rl        rl train, rl generate (one policy per prototype)
"""

from __future__ import annotations

# importing a command module registers its commands (in --help, in this order)
from pluralign.cli import train as train_commands  # noqa: F401  # isort: skip
from pluralign.cli import use as use_commands  # noqa: F401  # isort: skip
from pluralign.cli import explain as explain_commands  # noqa: F401  # isort: skip
from pluralign.cli import data as data_commands  # noqa: F401  # isort: skip
from pluralign.cli import service as service_commands  # noqa: F401  # isort: skip
from pluralign.cli import runs as run_commands  # noqa: F401  # isort: skip
from pluralign.cli import datasets as dataset_commands  # noqa: F401  # isort: skip
from pluralign.cli import dpo as dpo_commands  # noqa: F401  # isort: skip
from pluralign.cli import rl as rl_commands  # noqa: F401  # isort: skip
from pluralign.cli.common import app

__all__ = ["app", "main"]


def main() -> None:  # pragma: no cover - console entry
    app()
