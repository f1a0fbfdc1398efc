"""``PersonalReward``: a PAL reward as a reward function of TRL's online trainers (GRPO, RLOO).

TRL calls each of its ``reward_funcs`` once per batch of generations as
``f(prompts=[...], completions=[...], completion_ids=[...], **columns)``, where ``columns`` holds every other
dataset column repeated for each generation (``user_id`` among them) plus ``trainer_state``,
``log_extra``, ``log_metric``; it wants one float (or None) per completion, and logs the rewards under
the function's ``__name__``.

A ``PersonalReward`` scores the batch with one reward call (one embedding call for all the completions,
through the estimator's embedding cache; one HTTP request per chunk for a remote service). Prompts and
completions are strings (TRL's standard format) or message lists (its conversational format), which are
rendered with :func:`pluralign.data.conversation.render_pair` / ``render_messages``, as the data readers
render training rows, so the reward model sees RL completions in the format it was trained on.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pluralign.data.conversation import ChatTemplate, render_messages, render_pair
from pluralign.errors import PluralignError
from pluralign.rl.scorers import LocalScorer, RemoteScorer, Scorer

if TYPE_CHECKING:
    from pluralign.estimator import PALEstimator

#: "user" (the dataset's user column), a prototype index k, or a fixed weight vector over the K prototypes
Mode = str | int | Sequence[float]


def render_completions(
    prompts: Sequence[Any], completions: Sequence[Any], *, chat_template: ChatTemplate = None
) -> tuple[list[str], list[str]]:
    """Texts of (prompt, completion) pairs in TRL's standard (strings) or conversational (message lists)
    format, rendered as :func:`pluralign.data.readers.read_preferences` renders preference rows.

    A conversational pair is rendered as an explicit-prompt row whose chosen response is the completion
    (``render_pair``): with the default role tags, ``"user: Hi"`` and ``"assistant: Hello!"``; with a chat
    template, the prompt with its generation prompt and the completion as the rest of ``prompt + completion``.
    """
    if len(prompts) != len(completions):
        raise PluralignError(f"{len(prompts)} prompts but {len(completions)} completions")
    if all(isinstance(p, str) for p in prompts) and all(isinstance(c, str) for c in completions):
        return list(prompts), list(completions)
    out_prompts, out_completions = [], []
    for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
        if isinstance(prompt, str) and isinstance(completion, str):
            texts = (prompt, completion)
        elif isinstance(prompt, list) and isinstance(completion, list):
            texts = render_pair(prompt, completion, completion, chat_template)[:2]
        elif isinstance(completion, list):  # a string prompt before a conversational completion
            texts = (prompt, render_messages(completion, template=chat_template))
        elif isinstance(prompt, list):
            texts = (render_messages(prompt, template=chat_template), completion)
        else:
            raise PluralignError(
                f"completion {i}: prompts and completions must be strings or lists of messages, got "
                f"{type(prompt).__name__} and {type(completion).__name__}"
            )
        if not all(isinstance(t, str) for t in texts):
            raise PluralignError(f"completion {i}: the prompt and completion must be strings or messages")
        out_prompts.append(texts[0])
        out_completions.append(texts[1])
    return out_prompts, out_completions


def normalize_per_prompt(rewards: np.ndarray, groups: Sequence[Hashable]) -> np.ndarray:
    """Rewards z-scored within each group (``(r - mean) / std``, population std): every group then has mean
    0 and std 1. A group of one, or whose rewards are all equal, gets zeros (std 0: centred only)."""
    rewards = np.asarray(rewards, dtype=np.float64)
    codes, _ = pd.factorize(pd.Series(list(groups), dtype=object), use_na_sentinel=False)
    if len(codes) != len(rewards):
        raise PluralignError(f"{len(rewards)} rewards but {len(codes)} group keys")
    if not len(rewards):
        return rewards
    counts = np.bincount(codes)
    mean = np.bincount(codes, weights=rewards) / counts
    centred = rewards - mean[codes]
    std = np.sqrt(np.bincount(codes, weights=centred**2) / counts)
    scale = std[codes]
    safe = np.where(scale > 1e-12 * np.maximum(1.0, np.abs(mean[codes])), scale, np.inf)
    return centred / safe


class PersonalReward:
    """A reward function for TRL's ``GRPOTrainer`` / ``RLOOTrainer`` (``reward_funcs=PersonalReward(...)``).

    ``mode``:

    * ``"user"`` (default): each completion is scored for the user of its dataset row (the ``user_column``
      column, ``"user_id"`` by default; ``default_user`` when the dataset has no such column). Users the
      model does not know get the zero-shot weights (the population's mean), as ``PALEstimator.reward``.
    * an ``int`` k: prototype k's reward (the one-hot weights e_k) for every completion.
    * a sequence of K floats: that fixed mixture of the prototypes for every completion.

    ``normalize=True`` z-scores the rewards of the completions that share a prompt (and, in user mode, a
    user): TRL's groups of generations then each have mean 0 and std 1 (a lone or constant group: 0). This
    makes the scale of the PAL reward, which differs between users and prototypes, irrelevant when it is
    mixed with other reward functions; GRPO normalises advantages per group anyway.

    ``chat_template`` renders conversational prompts/completions; pass the one the reward model's training
    data was read with (``read_preferences(chat_template=...)``; default: role-tagged lines).
    """

    def __init__(
        self,
        scorer: Scorer,
        *,
        mode: Mode = "user",
        user_column: str = "user_id",
        default_user: str | None = None,
        normalize: bool = False,
        chat_template: ChatTemplate = None,
    ) -> None:
        self.scorer = scorer
        self.user_column = user_column
        self.default_user = default_user
        self.normalize = normalize
        self.chat_template = chat_template
        self.weights = _mode_weights(mode, scorer.n_prototypes)
        self.mode = mode
        if self.weights is None:
            name = "user"
        elif isinstance(mode, int | np.integer):
            name = f"prototype_{int(mode)}"
        else:
            name = "weights"
        self.__name__ = f"pluralign_{name}_reward"  # TRL logs rewards/<__name__>

    # --- constructors -----------------------------------------------------------------------------------
    @classmethod
    def from_estimator(cls, estimator: PALEstimator | str | Path, **options: Any) -> PersonalReward:
        """From a fitted estimator, or the directory of a saved one (a run directory or its ``model/``)."""
        return cls(LocalScorer.load(estimator), **options)

    @classmethod
    def from_service(
        cls,
        url: str,
        *,
        token: str | None = None,
        timeout: float = 60.0,
        transport: Any = None,
        **options: Any,
    ) -> PersonalReward:
        """From a running ``pluralign serve`` at ``url`` (its ``POST /get_reward``; reads need no token unless
        the service is configured so). ``transport`` is an httpx transport (tests)."""
        return cls(RemoteScorer.connect(url, token=token, timeout=timeout, transport=transport), **options)

    # --- scoring ----------------------------------------------------------------------------------------
    def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        completion_ids: Sequence[Any] | None = None,
        **columns: Any,
    ) -> list[float]:
        """TRL's reward-function call: one reward per completion; other columns are ignored."""
        user_ids = self._user_ids(columns, len(completions)) if self.weights is None else None
        prompt_texts, completion_texts = render_completions(
            prompts, completions, chat_template=self.chat_template
        )
        rewards = self.rewards(prompt_texts, completion_texts, user_ids)
        return rewards.tolist()

    def rewards(
        self, prompts: Sequence[str], completions: Sequence[str], user_ids: Sequence[str] | None = None
    ) -> np.ndarray:
        """Rewards (float64 [n]) of rendered texts; ``user_ids`` in user mode (and only there)."""
        if (user_ids is None) != (self.weights is not None):
            raise PluralignError("user_ids are needed in user mode, and only there")
        out = self.scorer.score(list(prompts), list(completions), user_ids, self.weights)
        if self.normalize:
            groups = list(prompts) if user_ids is None else list(zip(user_ids, prompts, strict=True))
            out = normalize_per_prompt(out, groups)
        return out

    def _user_ids(self, columns: Mapping[str, Any], n: int) -> list[str]:
        values = columns.get(self.user_column)
        if values is None:
            if self.default_user is None:
                raise PluralignError(
                    f"user mode needs the dataset's {self.user_column!r} column (one user id per prompt); "
                    "pass user_column=..., default_user=..., or a prototype/weights mode"
                )
            return [self.default_user] * n
        values = list(values)
        if len(values) != n:
            raise PluralignError(f"column {self.user_column!r} has {len(values)} values for {n} completions")
        missing = [i for i, v in enumerate(values) if v is None or v == ""]
        if missing:
            raise PluralignError(f"column {self.user_column!r} has no user id at row(s) {missing[:5]}")
        return [str(v) for v in values]

    def close(self) -> None:
        self.scorer.close()

    def __enter__(self) -> PersonalReward:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PersonalReward({self.scorer!r}, mode={self.mode!r}, normalize={self.normalize})"


def _mode_weights(mode: Mode, k: int) -> np.ndarray | None:
    """None for the user mode, else the fixed weights ([K] float64) of a prototype index or a vector."""
    if isinstance(mode, str):
        if mode != "user":
            raise PluralignError(f"mode must be 'user', a prototype index or {k} weights, got {mode!r}")
        return None
    if isinstance(mode, bool):
        raise PluralignError("mode must be 'user', a prototype index or a weight vector, not a bool")
    if isinstance(mode, int | np.integer):
        if not 0 <= int(mode) < k:
            raise PluralignError(f"prototype {int(mode)} does not exist: the model has K = {k} prototypes")
        return np.eye(k)[int(mode)]
    weights = np.asarray(mode, dtype=np.float64)
    if weights.shape != (k,) or not np.isfinite(weights).all():
        raise PluralignError(f"weights must be {k} finite numbers (one per prototype), got {list(mode)!r}")
    return weights
