"""Text from trained DPO-family policies: one module for every source, and for any later strategy.

Sources: the policy of a DPO / MixDPO run (or any saved policy directory), an EM-DPO type (``type``), the
type a known training user most probably belongs to (``user``), or, for a user of unknown type, a type drawn
from the run's MMRA mixture (``unknown_user``). The prompt is formatted with the chat-template choice the run
was trained with (:mod:`pluralign.dpo.formatting`), read from ``em_dpo.json`` / ``summary.json`` (a bare
policy directory: the tokenizer's chat template if it has one). Greedy by default; ``do_sample`` draws with
a local, seeded RNG.

    pluralign dpo generate RUN --prompt P [--type T | --user U | --unknown-user] [--json]
    >>> generate("runs/em", "What do you think of tea?", unknown_user=True)["text"]
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pluralign.errors import PluralignError
from pluralign.models.base import seeded_rng

__all__ = ["PolicyRun", "generate", "generate_text", "generate_texts", "load_run", "select_policy"]


@dataclass
class PolicyRun:
    """A trained run opened for generation: one policy, or an EM-DPO run (types, posteriors, MMRA)."""

    folder: Path
    method: str
    chat_template: bool
    tokenizer: Any
    model: Any = None  # single-policy runs
    em: Any = None  # pluralign.dpo.artifacts.LoadedEMDPO for EM-DPO runs


def load_run(folder: str | Path) -> PolicyRun:
    """Open a run directory written by `pluralign dpo train` (or a saved policy directory)."""
    from pluralign.dpo.artifacts import EM_FILE, load_em_dpo, load_policy
    from pluralign.dpo.formatting import use_chat_template

    folder = Path(folder)
    if not folder.is_dir():
        raise PluralignError(f"{folder}: no such run directory")
    summary_path = folder / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    if (folder / EM_FILE).is_file():
        em = load_em_dpo(folder)
        return PolicyRun(folder, "em-dpo", em.chat_template, em.tokenizer, em=em)
    model, tokenizer = load_policy(folder)
    chat = summary.get("chat_template")
    chat = use_chat_template(tokenizer, "auto") if chat is None else bool(chat)
    return PolicyRun(folder, summary.get("method", "policy"), chat, tokenizer, model=model)


def select_policy(
    run: PolicyRun,
    *,
    type: int | None = None,
    user: str | None = None,
    unknown_user: bool = False,
    seed: int = 0,
) -> tuple[Any, dict[str, Any]]:
    """(model, what was used) for one request; exactly one source for EM-DPO runs, none otherwise."""
    chosen = [
        name
        for name, on in (
            ("type", type is not None),
            ("user", user is not None),
            ("unknown_user", unknown_user),
        )
        if on
    ]
    if len(chosen) > 1:
        raise PluralignError(f"give one of --type, --user, --unknown-user (got {', '.join(chosen)})")
    if run.em is None:
        if chosen:
            option = "--" + chosen[0].replace("_", "-")
            raise PluralignError(f"{run.folder} holds one {run.method} policy: {option} is for EM-DPO runs")
        return run.model, {"source": "policy", "method": run.method}
    em = run.em
    if not chosen:
        raise PluralignError(f"{run.folder} is an EM-DPO run: choose --type T, --user U or --unknown-user")
    if type is not None:
        return em.policy(int(type)), {"source": "type", "type": int(type)}
    if user is not None:
        t = em.type_of(user)
        posterior = em.posteriors.loc[str(user)].to_numpy().tolist()
        return em.policy(t), {"source": "user", "user": str(user), "type": t, "posterior": posterior}
    if em.mmra is None:
        raise PluralignError(f"{run.folder}: no MMRA mixture saved, so an unknown user cannot be served")
    t = int(np.random.default_rng(seed).choice(em.n_types, p=em.mmra.weights))
    info = {"source": "mmra", "type": t, "mixture_weights": em.mmra.weights.tolist(), "seed": seed}
    return em.policy(t), info


def generate_text(
    model: Any,
    tokenizer: Any,
    prompt: str,
    *,
    chat: bool,
    max_new_tokens: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
) -> str:
    """The model's answer to ``prompt`` (new tokens only, special tokens dropped)."""
    return generate_texts(
        model,
        tokenizer,
        prompt,
        chat=chat,
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
    )[0]


@torch.no_grad()
def generate_texts(
    model: Any,
    tokenizer: Any,
    prompt: str,
    *,
    chat: bool,
    n: int = 1,
    max_new_tokens: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
) -> list[str]:
    """``n`` answers to ``prompt`` from one batched ``generate`` call (``num_return_sequences=n``).

    New tokens only, special tokens dropped. Sampling draws from torch's generator seeded by ``seed`` inside
    the call (:func:`~pluralign.models.base.seeded_rng`): the same seed gives the same answers, and the
    caller's random stream is untouched. ``n`` > 1 needs ``do_sample`` (greedy answers would all be equal).
    """
    from pluralign.dpo.formatting import prompt_token_ids

    if not prompt.strip():
        raise PluralignError("the prompt is empty")
    if max_new_tokens < 1:
        raise PluralignError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if n < 1:
        raise PluralignError(f"n must be >= 1, got {n}")
    if n > 1 and not do_sample:
        raise PluralignError(f"n = {n} answers need sampling (do_sample): greedy ones would all be equal")
    if do_sample and not temperature > 0:
        raise PluralignError(f"temperature must be > 0, got {temperature}")
    if do_sample and not 0 < top_p <= 1:
        raise PluralignError(f"top_p must be in (0, 1], got {top_p}")
    ids = torch.tensor([prompt_token_ids(tokenizer, [prompt], chat)[0]], device=model.device)
    settings: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": do_sample}
    if do_sample:
        settings.update(temperature=temperature, top_p=top_p)
    if n > 1:
        settings["num_return_sequences"] = n
    was_training = model.training
    model.eval()
    try:
        with seeded_rng(seed):
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                pad_token_id=tokenizer.pad_token_id,
                **settings,
            )
    finally:
        model.train(was_training)
    return tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)


def generate(
    run: str | Path | PolicyRun,
    prompt: str,
    *,
    type: int | None = None,
    user: str | None = None,
    unknown_user: bool = False,
    max_new_tokens: int = 64,
    do_sample: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Generate from a run; returns the text and what was used (source, type, user, mixture, format)."""
    opened = run if isinstance(run, PolicyRun) else load_run(run)
    model, info = select_policy(opened, type=type, user=user, unknown_user=unknown_user, seed=seed)
    text = generate_text(
        model,
        opened.tokenizer,
        prompt,
        chat=opened.chat_template,
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        seed=seed,
    )
    return {
        "run": str(opened.folder),
        "method": opened.method,
        "prompt": prompt,
        "text": text,
        "chat_template": opened.chat_template,
        "max_new_tokens": max_new_tokens,
        "do_sample": do_sample,
        **info,
    }
