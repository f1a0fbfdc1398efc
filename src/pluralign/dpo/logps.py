"""Log-probabilities of completions under a causal LM: log pi(y | x) summed over the completion's tokens."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

__all__ = ["completion_logps", "pad_completions", "sequence_logps", "unique_completion_logps"]


def sequence_logps(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_mask: torch.Tensor,
) -> torch.Tensor:
    """Sum of log pi(token | prefix) over the tokens where ``completion_mask`` is 1, one value per row.

    Rows are right-padded (prompt, then completion, then padding), as TRL's preference collator builds them.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1]
    labels = input_ids[:, 1:]
    # log_softmax at the label only: logit - logsumexp, without materializing the full log-softmax
    token_logps = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    return (token_logps * completion_mask[:, 1:].to(token_logps.dtype)).sum(dim=1)


def pad_completions(
    prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]], pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids, attention_mask, completion_mask) for prompt + completion rows."""
    rows = [list(p) + list(c) for p, c in zip(prompt_ids, completion_ids, strict=True)]
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    completion = torch.zeros((len(rows), width), dtype=torch.long)
    for row, (p, c) in enumerate(zip(prompt_ids, completion_ids, strict=True)):
        input_ids[row, : len(p) + len(c)] = torch.tensor(rows[row], dtype=torch.long)
        attention[row, : len(p) + len(c)] = 1
        completion[row, len(p) : len(p) + len(c)] = 1
    return input_ids, attention, completion


@torch.no_grad()
def completion_logps(
    model: torch.nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    *,
    pad_token_id: int,
    batch_size: int = 16,
    progress: bool = False,
    desc: str = "log-probs",
) -> torch.Tensor:
    """log pi(completion | prompt) for each (prompt, completion) pair of token-id lists, in batches.

    Rows are sorted by length so each batch pads little; the result is in the input order (float32, CPU).
    """
    if len(prompt_ids) != len(completion_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(completion_ids)} completions")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(prompt_ids)
    out = torch.empty(n, dtype=torch.float32)
    if n == 0:
        return out
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    lengths = torch.tensor([len(p) + len(c) for p, c in zip(prompt_ids, completion_ids, strict=True)])
    order = torch.argsort(lengths, stable=True).tolist()
    try:
        for start in tqdm(range(0, n, batch_size), desc=desc, disable=not progress, leave=False):
            rows = order[start : start + batch_size]
            ids, attention, completion = pad_completions(
                [prompt_ids[r] for r in rows], [completion_ids[r] for r in rows], pad_token_id
            )
            logps = sequence_logps(model, ids.to(device), attention.to(device), completion.to(device))
            out[rows] = logps.float().cpu()
    finally:
        model.train(was_training)
    return out


def unique_completion_logps(
    model: torch.nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    **kwargs: Any,
) -> torch.Tensor:
    """:func:`completion_logps` that scores each distinct (prompt, completion) once, in the input order.

    Preference data repeat sequences heavily (many users rank the same responses to the same prompts).
    """
    index_of: dict[tuple[int, ...], int] = {}
    first_row: list[int] = []  # the first row holding each distinct sequence
    inverse = []
    for row, (p, c) in enumerate(zip(prompt_ids, completion_ids, strict=True)):
        key = (*p, -1, *c)
        if key not in index_of:
            index_of[key] = len(first_row)
            first_row.append(row)
        inverse.append(index_of[key])
    prompts = [prompt_ids[i] for i in first_row]
    unique = completion_logps(model, prompts, [completion_ids[i] for i in first_row], **kwargs)
    return unique[torch.tensor(inverse, dtype=torch.long)]
