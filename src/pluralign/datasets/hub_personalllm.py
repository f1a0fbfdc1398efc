"""PersonalLLM (namkoong-lab/PersonalLLM): prompts with eight responses each, every response scored by ten
reward models; simulated users are Dirichlet mixtures of the reward models (Zollo et al., ICLR 2025).

The card's schema: ``prompt``, ``subset``, ``prompt_id``, ``response_1`` ... ``response_8``,
``response_<i>_model`` (the LLM that wrote it) and ``response_<i>_<rm>`` (the score of reward model
``<rm>``: gemma_2b, gemma_7b, mistral_raft, llama3_sfairx, oasst_deberta_v3, beaver_7b, oasst_pythia_7b,
oasst_pythia_1b, mistral_ray, mistral_weqweasdas); splits ``train`` and ``test``. The reward models are the
score columns present for every response.

**Users** (as the card's and the paper's personas): ``n_users`` weight vectors ``w_u ~ Dirichlet(alpha)``
over the reward models, drawn with ``numpy.random.default_rng(seed)``; user ``u``'s reward of a response is
``sum_k w_uk z_k``, with ``z_k`` reward model ``k``'s score standardized over all responses of the data read
(the PersonalLLM code standardizes each reward model by its mean and standard deviation). Each user gets
``pairs_per_user`` comparisons per split (``{split: n}`` to differ by split): a prompt drawn without
replacement and two distinct responses drawn uniformly; ``chosen`` is the one the user's reward ranks higher.
Pairs with equal rewards, or with a missing response text or score, are skipped and counted.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from pluralign.datasets.hub_data import Card, HubData, with_row_counts
from pluralign.datasets.hub_files import (
    Source,
    fail,
    load_hub,
    read_local,
    require_columns,
    split_of,
    text_column,
)
from pluralign.errors import DataError

__all__ = ["CARD", "load_personalllm", "personalllm_pairs", "reward_models"]

CARD = Card(
    repo="namkoong-lab/PersonalLLM",
    url="https://huggingface.co/datasets/namkoong-lab/PersonalLLM",
    license="CC-BY-4.0 (dataset card)",
    attribution="PersonalLLM, Zollo, Siah, Ye, Li & Namkoong (2025), Columbia University",
    citation="Zollo, T. P., Siah, A. W. T., Ye, N., Li, A., & Namkoong, H. (2025). PersonalLLM: Tailoring "
    "LLMs to Individual Preferences. ICLR. arXiv:2409.20296",
)
SCORE = re.compile(r"^response_(\d+)_(.+)$")


def load_personalllm(source_dir: str | Path | None = None, *, dataset: str = "personalllm") -> Source:
    if source_dir is None:
        return load_hub(CARD.repo, None, dataset=dataset)
    return read_local(source_dir, dataset=dataset, split_of_file=lambda p: split_of(p, default="train"))


def reward_models(columns: list[str]) -> tuple[int, list[str]]:
    """(number of responses, reward model names) from the columns: ``response_<i>`` texts and the
    ``response_<i>_<rm>`` scores present for every ``i`` (``_model`` is the generating LLM, not a score)."""
    n = 0
    while f"response_{n + 1}" in columns:
        n += 1
    by_index: dict[int, set[str]] = {}
    for column in columns:
        match = SCORE.match(column)
        if match and match.group(2) != "model":
            by_index.setdefault(int(match.group(1)), set()).add(match.group(2))
    names = set.intersection(*(by_index.get(i, set()) for i in range(1, n + 1))) if n else set()
    return n, sorted(names)


def personalllm_pairs(
    source: Source,
    *,
    n_users: int = 100,
    alpha: float = 0.05,
    pairs_per_user: int | dict[str, int] = 50,
    seed: int = 0,
) -> HubData:
    """Simulated users and their comparisons (module docstring), one part per split."""
    if isinstance(n_users, bool) or not isinstance(n_users, int) or n_users < 1:
        raise ValueError(f"n_users must be an integer >= 1, got {n_users!r}")
    if not np.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha!r}")
    splits = sorted(source.tables, key=lambda s: (s != "train", s))
    wanted = pairs_per_user if isinstance(pairs_per_user, dict) else dict.fromkeys(splits, pairs_per_user)
    tables = {}
    for split in splits:
        frame = source.tables[split].reset_index(drop=True)
        require_columns(frame, ("prompt",), dataset="personalllm")
        text_column(frame, "prompt")
        tables[split] = frame
    n_resp, models = reward_models(list(tables[splits[0]].columns))
    for split, frame in tables.items():
        split_n, split_models = reward_models(list(frame.columns))
        if split_n < 2 or not split_models:
            raise DataError(
                "no response_<i> texts with response_<i>_<reward model> scores "
                "(the PersonalLLM card's columns)",
                path=str(frame["_file"].iloc[0]) if len(frame) else None,
            )
        if (split_n, split_models) != (n_resp, models):
            raise DataError(f"split {split} has other responses or reward models than the others")
    texts, scores, prompts = {}, {}, {}
    for split, frame in tables.items():
        texts[split] = np.stack(
            [frame[f"response_{i}"].to_numpy(dtype=object) for i in range(1, n_resp + 1)], 1
        )
        block = np.empty((len(frame), n_resp, len(models)))
        for i in range(1, n_resp + 1):
            for k, name in enumerate(models):
                column = f"response_{i}_{name}"
                values = pd.to_numeric(frame[column], errors="coerce")
                fail(
                    frame, values.isna() & frame[column].notna(), column, "must be a number (a reward score)"
                )
                block[:, i - 1, k] = values.to_numpy(dtype=float)
        scores[split], prompts[split] = block, frame["prompt"].to_numpy(dtype=object)
    # standardize each reward model over all responses read
    stacked = np.concatenate([s.reshape(-1, len(models)) for s in scores.values()])
    mean, std = np.nanmean(stacked, axis=0), np.nanstd(stacked, axis=0)
    std = np.where(std > 0, std, 1.0)

    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.full(len(models), float(alpha)), size=n_users)
    user_ids = np.asarray([f"user{u}" for u in range(n_users)], dtype=object)
    parts, skipped, counts = {}, {}, {}
    for split in splits:
        k = int(wanted.get(split, 0))
        n_prompts = len(prompts[split])
        if k > n_prompts:
            raise ValueError(f"pairs_per_user={k} for split {split} exceeds its {n_prompts} prompts")
        p = np.stack([rng.choice(n_prompts, size=k, replace=False) for _ in range(n_users)]).reshape(-1)
        a = rng.integers(0, n_resp, size=p.size)
        b = (a + rng.integers(1, n_resp, size=p.size)) % n_resp
        u = np.repeat(np.arange(n_users), k)
        z = (scores[split] - mean) / std
        reward_a = np.einsum("nk,nk->n", z[p, a], weights[u])
        reward_b = np.einsum("nk,nk->n", z[p, b], weights[u])
        text_a, text_b = texts[split][p, a], texts[split][p, b]
        missing = ~np.isfinite(reward_a) | ~np.isfinite(reward_b) | ~_is_text(text_a) | ~_is_text(text_b)
        tie = ~missing & (reward_a == reward_b)
        same = ~missing & ~tie & (text_a == text_b)
        keep = ~(missing | tie | same)
        first = reward_a > reward_b
        parts[split] = pd.DataFrame(
            {
                "user_id": user_ids[u][keep],
                "prompt": prompts[split][p][keep],
                "chosen": np.where(first, text_a, text_b)[keep],
                "rejected": np.where(first, text_b, text_a)[keep],
                "prompt_index": p[keep],
                "chosen_response": (np.where(first, a, b) + 1)[keep],
                "rejected_response": (np.where(first, b, a) + 1)[keep],
                "margin": np.abs(reward_a - reward_b)[keep],
            }
        )
        skipped.update(
            {
                f"{split}_missing_response": int(missing.sum()),
                f"{split}_tied_reward": int(tie.sum()),
                f"{split}_same_text": int(same.sum()),
            }
        )
        counts[f"{split}_prompts"] = n_prompts
        counts[f"{split}_pairs_drawn"] = int(p.size)
    users = pd.DataFrame({"user_id": user_ids})
    for k, name in enumerate(models):
        users[f"w_{name}"] = weights[:, k]
    users = with_row_counts(users, parts)
    return HubData(
        name="personalllm",
        card=CARD,
        parts=parts,
        users=users,
        origin=source.origin,
        options={"n_users": n_users, "alpha": float(alpha), "pairs_per_user": wanted, "seed": seed},
        skipped=skipped,
        counts={
            **counts,
            "responses_per_prompt": n_resp,
            "reward_models": models,
            "score_mean": dict(zip(models, mean.tolist(), strict=True)),
            "score_std": dict(zip(models, std.tolist(), strict=True)),
        },
        files=source.files,
        notes=("reward model scores are standardized with the mean and std of the data read",),
    )


def _is_text(values: np.ndarray) -> np.ndarray:
    return np.fromiter(
        (isinstance(v, str) and bool(v.strip()) for v in values), dtype=bool, count=len(values)
    )
