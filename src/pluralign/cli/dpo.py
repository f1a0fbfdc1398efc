"""`pluralign dpo ...`: train DPO / MixDPO / EM-DPO on a causal LM, and generate from what was trained;
`pluralign generate`: best-of-n for one user (sample from a causal LM, rank by the user's reward)."""

from __future__ import annotations

import json
from contextlib import nullcontext
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from pluralign.cli.common import (
    JsonOut,
    Threads,
    Verbose,
    app,
    command,
    console,
    emit,
    err_console,
    print_table,
    set_threads,
    setup,
    show_progress,
)

__all__ = ["dpo_app"]

dpo_app = typer.Typer(
    help="The DPO family on causal LMs (TRL): DPO, MixDPO, EM-DPO with MinMax-Regret Aggregation.",
    no_args_is_help=True,
)
app.add_typer(dpo_app, name="dpo")


class DPOMethod(StrEnum):
    dpo = "dpo"
    mixdpo_lognormal = "mixdpo-lognormal"
    mixdpo_gamma = "mixdpo-gamma"
    em_dpo = "em-dpo"


class ChatTemplate(StrEnum):
    auto = "auto"
    on = "on"
    off = "off"


class EMInit(StrEnum):
    disagreement = "disagreement"
    random = "random"


class MMRAValues(StrEnum):
    normalized = "normalized"
    raw = "raw"


def _status(message: str):
    """A spinner on stderr while a step runs, only on a terminal."""
    return err_console.status(message) if show_progress() else nullcontext()


@dpo_app.command("train")
@command
def dpo_train(
    data: Annotated[Path, typer.Argument(help="Rankings (`responses` best first) or pairs; JSONL/Parquet.")],
    out: Annotated[Path, typer.Option(help="Output folder (new or empty): model(s), summary.json.")],
    method: Annotated[DPOMethod, typer.Option(help="Which member of the family.")] = DPOMethod.dpo,
    model: Annotated[str, typer.Option(help="'smollm2' (bundled) or a local HF model folder.")] = "smollm2",
    epochs: Annotated[float, typer.Option(help="Epochs (per M-step for em-dpo).")] = 1.0,
    max_steps: Annotated[
        int, typer.Option(help="Optimizer steps (per M-step for em-dpo); overrides --epochs. -1: off.")
    ] = -1,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 1e-4,
    beta: Annotated[float, typer.Option(help="DPO beta (MixDPO: initial mean of beta).")] = 0.1,
    batch_size: Annotated[int, typer.Option(help="Pairs per step.")] = 8,
    beta_spread: Annotated[float, typer.Option(help="MixDPO: initial cv (std / mean) of beta.")] = 0.5,
    beta_lr: Annotated[float, typer.Option(help="MixDPO: learning rate of the beta distribution.")] = 5e-2,
    beta_samples: Annotated[int, typer.Option(help="MixDPO-LogNormal: Monte Carlo samples per pair.")] = 16,
    types: Annotated[int, typer.Option(help="EM-DPO: number of latent user types.")] = 2,
    em_iterations: Annotated[int, typer.Option(help="EM-DPO: EM iterations.")] = 2,
    em_init: Annotated[EMInit, typer.Option(help="EM-DPO: initial posteriors.")] = EMInit.disagreement,
    mmra: Annotated[
        MMRAValues, typer.Option(help="EM-DPO: MMRA on per-type normalized values (default) or raw ones.")
    ] = MMRAValues.normalized,
    blocks: Annotated[int, typer.Option(help="Train only the last N decoder blocks (0: all).")] = 2,
    lora_r: Annotated[int, typer.Option(help="LoRA rank (> 0: LoRA adapters instead of --blocks).")] = 0,
    chat_template: Annotated[
        ChatTemplate,
        typer.Option(help="Format prompts with the tokenizer's chat template (auto: if it has one)."),
    ] = ChatTemplate.auto,
    holdout: Annotated[
        float, typer.Option(help="Share of rankings held out to check the policy moved.")
    ] = 0.1,
    logging_steps: Annotated[int, typer.Option(help="Log training metrics every N steps.")] = 10,
    threads: Threads = 0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    as_json: JsonOut = False,
    verbose: Verbose = False,
) -> None:
    """Align a causal LM on heterogeneous preference data with DPO, MixDPO or EM-DPO."""
    setup(verbose)
    set_threads(threads)
    from pluralign.dpo.run import DPORunConfig, train_dpo_family

    config = DPORunConfig(
        method=method.value,
        model=model,
        epochs=epochs,
        max_steps=max_steps,
        learning_rate=lr,
        beta=beta,
        batch_size=batch_size,
        beta_spread=beta_spread,
        beta_learning_rate=beta_lr,
        beta_samples=beta_samples,
        n_types=types,
        em_iterations=em_iterations,
        em_init=em_init.value,
        mmra_normalize=mmra is MMRAValues.normalized,
        blocks=blocks,
        lora_r=lora_r,
        chat_template=chat_template.value,
        holdout=holdout,
        logging_steps=logging_steps,
        seed=seed,
    )
    summary = train_dpo_family(data, out, config)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    skip = {"history", "config", "versions", "heldout"}
    rows = [{"quantity": k, "value": v} for k, v in summary.items() if k not in skip]
    heldout = summary.get("heldout") or {}
    for name, shift in heldout.items() if method is DPOMethod.em_dpo else [("policy", heldout)]:
        if shift:
            rows.append({"quantity": f"held-out ({name})", "value": shift})
    print_table(rows, title=f"{method.value} on {data}")
    console.print(f"wrote {out}", highlight=False, soft_wrap=True)


@dpo_app.command("generate")
@command
def dpo_generate(
    run: Annotated[Path, typer.Argument(help="A `pluralign dpo train` output folder (or a saved policy).")],
    prompt: Annotated[str, typer.Option(help="The prompt (formatted as in training).")],
    type_: Annotated[int | None, typer.Option("--type", help="EM-DPO: this type's policy.")] = None,
    user: Annotated[
        str | None, typer.Option(help="EM-DPO: the policy of this user's most probable type.")
    ] = None,
    unknown_user: Annotated[
        bool, typer.Option("--unknown-user", help="EM-DPO: a type drawn from the MMRA mixture.")
    ] = False,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate at most.")] = 64,
    sample: Annotated[bool, typer.Option("--sample", help="Sample instead of greedy decoding.")] = False,
    seed: Annotated[int, typer.Option(help="Seed for sampling and for the MMRA draw.")] = 0,
    threads: Threads = 0,
    as_json: JsonOut = False,
    verbose: Verbose = False,
) -> None:
    """Generate from a DPO/MixDPO policy, an EM-DPO type, a known user's type, or MMRA for an unknown user."""
    setup(verbose)
    set_threads(threads)
    from pluralign.dpo.generate import generate

    result = generate(
        run,
        prompt,
        type=type_,
        user=user,
        unknown_user=unknown_user,
        max_new_tokens=max_new_tokens,
        do_sample=sample,
        seed=seed,
    )
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        emit([{"quantity": k, "value": v} for k, v in result.items()], False, title=f"generated from {run}")


@app.command("generate")
@command
def best_of_n_generate(
    run: Annotated[Path, typer.Argument(help="The reward model: a `pluralign train` run directory.")],
    policy: Annotated[
        str, typer.Option(help="'smollm2' (bundled), a `pluralign dpo train` run or a local HF model folder.")
    ],
    user: Annotated[str, typer.Option(help="Whose reward ranks the answers (unknown: zero-shot weights).")],
    prompt: Annotated[
        str, typer.Option(help="The prompt (chat-formatted for the policy if it has a template).")
    ],
    n: Annotated[int, typer.Option("--n", help="Answers to sample.")] = 8,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens per answer at most.")] = 64,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 1.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling: keep this much probability mass.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Sampling seed: the same seed gives the same candidates.")] = 0,
    threads: Threads = 0,
    as_json: JsonOut = False,
    verbose: Verbose = False,
) -> None:
    """Best-of-n for one user: sample N answers from a causal LM and keep the one their reward ranks first."""
    setup(verbose)
    set_threads(threads)
    if n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    from pluralign.dpo.best_of_n import best_of_n, load_reward_model, open_policy

    est = load_reward_model(run)
    with _status(f"sampling {n} answers from {policy}"):
        result = best_of_n(
            est,
            open_policy(policy),
            prompt,
            user,
            n,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
        )
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    order = sorted(range(len(result.candidates)), key=lambda i: -result.candidates[i][1])
    rows = [
        {"rank": r + 1, "candidate": i, "reward": result.candidates[i][1], "answer": result.candidates[i][0]}
        for r, i in enumerate(order)
    ]
    weights = "known" if result.known_user else "unknown: zero-shot weights"
    print_table(rows, title=f"best of {n} for user {user!r} ({weights}) from {policy}")
    console.print(f"best: {result.best}", highlight=False, soft_wrap=True)
