"""The `pluralign` command line (typer). It parses and prints; the work is in the library.

common   the apps, consoles, errors as one line, output, shared options, derived hyperparameter options
train    train, select-k                      data     synth, persona build, embed
use      eval, adapt, grow, score, ask        service  serve, score-remote
runs     demo, report, bench NAME             (dpo     dpo train)
datasets datasets polis
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

# importing a command module registers its commands (in --help, in this order)
from pluralign.cli import train as train_commands  # noqa: F401  # isort: skip
from pluralign.cli import use as use_commands  # noqa: F401  # isort: skip
from pluralign.cli import data as data_commands  # noqa: F401  # isort: skip
from pluralign.cli import service as service_commands  # noqa: F401  # isort: skip
from pluralign.cli import runs as run_commands  # noqa: F401  # isort: skip
from pluralign.cli import datasets as dataset_commands  # noqa: F401  # isort: skip
from pluralign.cli.common import app, command, console, dpo_app, print_table, setup

__all__ = ["app", "main"]


class DPOMethod(StrEnum):
    dpo = "dpo"
    mixdpo_lognormal = "mixdpo-lognormal"
    mixdpo_gamma = "mixdpo-gamma"
    em_dpo = "em-dpo"


@dpo_app.command("train")
@command
def dpo_train(
    data: Annotated[Path, typer.Argument(help="Rankings (`responses` best first) or pairs; JSONL/Parquet.")],
    out: Annotated[Path, typer.Option(help="Output folder: model(s), summary.json.")],
    method: Annotated[DPOMethod, typer.Option(help="Which member of the family.")] = DPOMethod.dpo,
    model: Annotated[str, typer.Option(help="'smollm2' (bundled) or a local HF model folder.")] = "smollm2",
    epochs: Annotated[float, typer.Option(help="Epochs (per M-step for em-dpo).")] = 1.0,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 1e-4,
    beta: Annotated[float, typer.Option(help="DPO beta (MixDPO: initial mean of beta).")] = 0.1,
    batch_size: Annotated[int, typer.Option(help="Pairs per step.")] = 8,
    types: Annotated[int, typer.Option(help="EM-DPO: number of latent user types.")] = 2,
    em_iterations: Annotated[int, typer.Option(help="EM-DPO: EM iterations.")] = 2,
    blocks: Annotated[int, typer.Option(help="Train only the last N decoder blocks (0: all).")] = 2,
    lora_r: Annotated[int, typer.Option(help="LoRA rank (> 0: LoRA adapters instead of --blocks).")] = 0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Align a causal LM on heterogeneous preference data with DPO, MixDPO or EM-DPO."""
    setup(verbose)
    from pluralign.dpo.run import DPORunConfig, train_dpo_family

    config = DPORunConfig(
        method=method.value,
        model=model,
        epochs=epochs,
        learning_rate=lr,
        beta=beta,
        batch_size=batch_size,
        n_types=types,
        em_iterations=em_iterations,
        blocks=blocks,
        lora_r=lora_r,
        seed=seed,
    )
    summary = train_dpo_family(data, out, config)
    rows = [{"quantity": k, "value": v} for k, v in summary.items() if k != "history"]
    print_table(rows, title=f"{method.value} on {data}")
    console.print(f"wrote {out}", highlight=False, soft_wrap=True)


def main() -> None:  # pragma: no cover - console entry
    app()
