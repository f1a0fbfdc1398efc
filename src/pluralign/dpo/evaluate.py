"""Did training move the policy? Log-prob changes and implicit-reward accuracy on held-out pairs.

For each full-breaking pair (chosen y_w, rejected y_l) of held-out rankings:
change_chosen = log pi(y_w|x) - log pi_ref(y_w|x), change_rejected likewise, and the implicit-reward margin
delta = change_chosen - change_rejected; accuracy = share of pairs with delta > 0. A policy that did not move
(too small a learning rate, too few steps, an adapter whose B matrices stayed 0) has all three ~0 and an
accuracy that means nothing (ties): :func:`policy_shift` flags it (``moved: false``) and logs a warning.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
import torch

from pluralign.dpo.data import full_breaking_pairs, tokenize_rankings
from pluralign.dpo.logps import unique_completion_logps

__all__ = ["MOVED_ATOL", "policy_shift", "response_logps"]

log = logging.getLogger(__name__)

# mean |log-prob change| (nats per response) below which a policy counts as unmoved
MOVED_ATOL = 1e-4


def response_logps(
    model: Any, tokenizer: Any, rankings: pd.DataFrame, *, chat: bool, batch_size: int = 16
) -> torch.Tensor:
    """log pi(y|x) of every ranked response (flattened in ranking order), on the tokens TRL trains on."""
    prompt_ids, response_ids = tokenize_rankings(tokenizer, rankings, chat=chat)
    prompts = [prompt_ids[r] for r, ranked in enumerate(response_ids) for _ in ranked]
    flat = [ids for ranked in response_ids for ids in ranked]
    return unique_completion_logps(
        model, prompts, flat, pad_token_id=tokenizer.pad_token_id, batch_size=batch_size, desc="held-out"
    )


def policy_shift(
    policy_logps: torch.Tensor,
    reference_logps: torch.Tensor,
    rankings: pd.DataFrame,
    *,
    beta: float,
    pair_mask: np.ndarray | None = None,
    label: str = "policy",
) -> dict[str, Any]:
    """Mean log-prob change of chosen / rejected responses and implicit-reward accuracy over the pairs.

    ``policy_logps`` / ``reference_logps``: :func:`response_logps` of the same ``rankings``. ``pair_mask``
    keeps a subset of the full-breaking pairs (e.g. the users of one type).
    """
    lengths = np.fromiter((len(r) for r in rankings["responses"]), dtype=np.int64, count=len(rankings))
    ranking, better, worse = full_breaking_pairs(lengths)
    offsets = np.concatenate([[0], np.cumsum(lengths)])[ranking]
    change = (policy_logps.double() - reference_logps.double()).numpy()
    chosen, rejected = change[offsets + better], change[offsets + worse]
    if pair_mask is not None:
        chosen, rejected = chosen[pair_mask], rejected[pair_mask]
    if len(chosen) == 0:
        return {"pairs": 0}
    delta = chosen - rejected
    moved = float(np.abs(np.concatenate([chosen, rejected])).mean()) > MOVED_ATOL
    result = {
        "pairs": len(delta),
        "mean_logp_change_chosen": float(chosen.mean()),
        "mean_logp_change_rejected": float(rejected.mean()),
        "mean_implicit_margin": float(beta * delta.mean()),
        "implicit_reward_accuracy": float((delta > 0).mean()),
        "ties": float((delta == 0).mean()),
        "moved": moved,
    }
    if not moved:
        log.warning(
            "%s: training did not move the policy (mean |log-prob change| <= %g nats on %d held-out pairs): "
            "raise the learning rate, the epochs or --max-steps",
            label,
            MOVED_ATOL,
            len(delta),
        )
    return result
