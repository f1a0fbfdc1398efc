"""`pluralign rl ...`: one policy per prototype of a reward model (GRPO + LoRA), and generating from them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from pluralign.cli.common import (
    JsonOut,
    Threads,
    Verbose,
    app,
    command,
    console,
    err_console,
    print_table,
    set_threads,
    setup,
    show_progress,
    with_hyperparameters,
)
from pluralign.errors import PluralignError
from pluralign.estimator.params import dataclass_params
from pluralign.rl.policies import PrototypePolicyConfig

__all__ = ["rl_app"]


def _hf_progress() -> None:
    """Hugging Face's own bars (weights loading, dataset maps) only on a terminal, like ours."""
    import warnings

    # deprecation notices transformers raises inside TRL's calls: nothing a user of this command can act on
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    if not show_progress():
        import datasets
        import transformers

        transformers.utils.logging.disable_progress_bar()
        datasets.disable_progress_bars()


rl_app = typer.Typer(
    help="Personalized policies: one LoRA policy per prototype of a reward model (GRPO), MMRA for new users.",
    no_args_is_help=True,
)
app.add_typer(rl_app, name="rl")

POLICY_PARAMS = dataclass_params(PrototypePolicyConfig, "GRPO")


@rl_app.command("train")
@command
@with_hyperparameters(POLICY_PARAMS)
def rl_train(
    run: Annotated[
        Path, typer.Argument(metavar="RUN", help="The reward model: a `pluralign train` run directory.")
    ],
    prompts: Annotated[
        Path,
        typer.Argument(metavar="PROMPTS", help="Prompts: .txt (one a line), JSONL or JSON (`prompt` field)."),
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output folder: policies.json + prototype_<k>/ adapters.")
    ],
    policy: Annotated[
        str, typer.Option(help="The base policy: 'smollm2' (bundled) or a local HF model folder.")
    ] = "smollm2",
    eval_prompts: Annotated[
        Path | None, typer.Option(help="Prompts the MMRA values are measured on (default: PROMPTS).")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing non-empty --out.")
    ] = False,
    threads: Threads = 0,
    as_json: JsonOut = False,
    verbose: Verbose = False,
    hyper: dict[str, Any] | None = None,
) -> None:
    """Train one LoRA policy per prototype of RUN's reward model with GRPO on PROMPTS."""
    setup(verbose)
    set_threads(threads)
    _hf_progress()
    from pluralign.data.prompts import read_prompts
    from pluralign.rl.policies import PrototypePolicies

    if out.exists() and any(out.iterdir()) and not overwrite:
        raise PluralignError(f"{out} exists and is not empty: choose another --out or pass --overwrite")
    config = PrototypePolicyConfig(**(hyper or {}))
    train = read_prompts(prompts)
    if train.repeated:
        err_console.print(f"{prompts}: {train.repeated} repeated prompt(s) kept once", highlight=False)
    held = None if eval_prompts is None else read_prompts(eval_prompts).prompts
    policies = PrototypePolicies(run, policy, config).fit(train.prompts, held, progress=show_progress())
    policies.save(out, overwrite=overwrite)
    summary = _summary(policies, out)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    rows = [
        {
            "policy": f"prototype {s}",
            **{f"reward {k}": float(policies.values_[k, s]) for k in range(policies.n_prototypes)},
            "mmra weight": float(policies.mmra_.weights[s]),
            "steps": h["steps"],
            "s/step": h["seconds_per_step"],
        }
        for s, h in enumerate(policies.history_)
    ]
    base = {f"reward {k}": float(v) for k, v in enumerate(policies.base_values_)}
    rows.append({"policy": "base model", **base, "mmra weight": None, "steps": 0, "s/step": None})
    print_table(
        rows, title=f"prototype policies on {policies.settings_['values_on']} (mean prototype rewards)"
    )
    console.print(
        f"MMRA worst-prototype regret {policies.mmra_.max_regret:.3f} (normalized); wrote {out}",
        highlight=False,
        soft_wrap=True,
    )


def _summary(policies: Any, out: Path) -> dict[str, Any]:
    return {
        "out": str(out),
        "n_prototypes": policies.n_prototypes,
        "values": policies.values_.tolist(),
        "base_values": policies.base_values_.tolist(),
        "mmra_weights": policies.mmra_.weights.tolist(),
        "mmra_max_regret": policies.mmra_.max_regret,
        "steps": [h["steps"] for h in policies.history_],
        "seconds_per_step": [h["seconds_per_step"] for h in policies.history_],
        "settings": policies.settings_,
    }


@rl_app.command("generate")
@command
def rl_generate(
    folder: Annotated[Path, typer.Argument(metavar="DIR", help="A `pluralign rl train` output folder.")],
    prompt: Annotated[str, typer.Option(help="The prompt (chat-formatted as in training).")],
    user: Annotated[
        str | None, typer.Option(help="Serve this user (known: their prototype; unknown: the MMRA mixture).")
    ] = None,
    weights: Annotated[
        str | None, typer.Option(help="Serve fixed prototype weights instead, e.g. 0.2,0.8.")
    ] = None,
    strategy: Annotated[
        str, typer.Option(help="argmax: the largest weight's policy; sample: drawn by the weights.")
    ] = "argmax",
    max_new_tokens: Annotated[int | None, typer.Option(help="Tokens at most (default: as trained).")] = None,
    sample: Annotated[bool, typer.Option("--sample", help="Sample instead of greedy decoding.")] = False,
    seed: Annotated[int, typer.Option(help="Seed for sampling, the weight draw and the MMRA draw.")] = 0,
    threads: Threads = 0,
    as_json: JsonOut = False,
    verbose: Verbose = False,
) -> None:
    """Generate for a user from their prototype's policy (or the MMRA mixture for an unknown user)."""
    setup(verbose)
    set_threads(threads)
    _hf_progress()
    from pluralign.rl.policies import PrototypePolicies

    parsed = None
    if weights is not None:
        try:
            parsed = [float(w) for w in weights.split(",")]
        except ValueError:
            raise PluralignError(f"--weights takes comma-separated numbers, got {weights!r}") from None
    policies = PrototypePolicies.load(folder)
    result = policies.generate(
        prompt,
        user,
        weights=parsed,
        strategy=strategy,
        max_new_tokens=max_new_tokens,
        do_sample=sample,
        seed=seed,
    )
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    print_table(
        [{"quantity": k, "value": v} for k, v in result.items() if k != "text"], title=f"served from {folder}"
    )
    console.print(result["text"], highlight=False, soft_wrap=True)
