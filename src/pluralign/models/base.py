"""What every preference model shares: user weights on the simplex and batch indexing.

A batch is four index tensors (user, context, chosen, rejected) into tables of item vectors
[n_items, Dx] and context vectors [n_contexts, Dc]. Models evaluate their maps once per unique row the
batch touches and gather, so the cost scales with distinct texts, not comparisons.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch import nn

#: log-weight of an (exactly) zero weight: softmax maps it to 0 in float32 next to any real logit
MIN_LOG_WEIGHT = -27.0


def weights_to_logits(weights: torch.Tensor) -> torch.Tensor:
    """Logits whose softmax is ``weights`` (zeros map to a very negative finite logit)."""
    return weights.clamp(min=1e-300).log().clamp(min=MIN_LOG_WEIGHT).float()


@contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Run a block with torch's default CPU generator seeded by ``seed`` and give the process back its own
    RNG state afterwards. For what takes no generator argument: ``nn.Dropout`` during training, Hugging
    Face model construction and sampling. The caller's random stream is unchanged (nothing reseeds it);
    resumable checkpoints save and restore this state inside the block. Not for concurrent use with
    other threads that draw from the default generator."""
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.set_state(torch.Generator().manual_seed(seed).get_state())
        yield


class Batch(NamedTuple):
    user: torch.Tensor
    context: torch.Tensor
    chosen: torch.Tensor
    rejected: torch.Tensor

    def __len__(self) -> int:
        return len(self.user)

    def take(self, rows: torch.Tensor | slice) -> Batch:
        return Batch(self.user[rows], self.context[rows], self.chosen[rows], self.rejected[rows])


class Tables(NamedTuple):
    items: torch.Tensor
    contexts: torch.Tensor


def unique_inverse(*indices: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Unique values over several index tensors, and each tensor's positions in that unique set."""
    flat = torch.cat(indices)
    unique, inverse = torch.unique(flat, return_inverse=True)
    return unique, list(inverse.split([len(i) for i in indices]))


class PreferenceModel(nn.Module):
    """Base class: K prototypes, per-user logits whose softmax is the user's weight on the simplex."""

    #: short name used in checkpoints and the CLI
    kind: str = ""

    def __init__(self, n_users: int, n_prototypes: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if n_prototypes < 1:
            raise ValueError(f"n_prototypes must be >= 1, got {n_prototypes}")
        self.n_prototypes = n_prototypes
        # Small random logits, as the paper initializes user weights randomly (App. D.1).
        # Parameters come from ``generator`` (seeded by the estimator), never from the global RNG.
        self.user_logits = nn.Parameter(0.01 * torch.randn(n_users, n_prototypes, generator=generator))

    @property
    def n_users(self) -> int:
        return self.user_logits.shape[0]

    def weights(self, logits: torch.Tensor | None = None) -> torch.Tensor:
        """Users' mixture weights (softmax of their logits), [n_users, K]."""
        return torch.softmax(self.user_logits if logits is None else logits, dim=-1)

    def margins(self, batch: Batch, tables: Tables, logits: torch.Tensor | None = None) -> torch.Tensor:
        """r_u(chosen, c) - r_u(rejected, c) per row. ``logits`` replaces the user table (few-shot fits)."""
        logits = self.user_logits if logits is None else logits
        users, (user_pos,) = unique_inverse(batch.user)
        weights = torch.softmax(logits[users], dim=-1)
        return self._margins(weights, user_pos, batch, tables)

    def _margins(
        self, weights: torch.Tensor, user_pos: torch.Tensor, batch: Batch, tables: Tables
    ) -> torch.Tensor:
        raise NotImplementedError

    def rewards(self, weights: torch.Tensor, items: torch.Tensor, contexts: torch.Tensor) -> torch.Tensor:
        """Reward of each (item, context) row for a user with the given weights ([B, K] or [K])."""
        raise NotImplementedError

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by optimizer group: shared maps, prototypes, user weights."""
        raise NotImplementedError

    def grow_users(self, n_new: int, init: torch.Tensor | None = None) -> None:
        """Append ``n_new`` users (uniform weights unless ``init`` logits are given)."""
        new = torch.zeros(n_new, self.n_prototypes) if init is None else init.to(self.user_logits)
        self.user_logits = nn.Parameter(
            torch.cat([self.user_logits.detach(), new]), requires_grad=self.user_logits.requires_grad
        )


def joint_pairs(batch: Batch, tables: Tables) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The unique (item; context) concatenations a batch touches, [P, Dx + Dc], and the positions of
    each row's chosen and rejected pair in them (for maps of the joint input, as PAL-A's f and BTL)."""
    n_contexts = tables.contexts.shape[0]
    pairs, (chosen_pos, rejected_pos) = unique_inverse(
        batch.chosen * n_contexts + batch.context, batch.rejected * n_contexts + batch.context
    )
    joint = torch.cat([tables.items[pairs // n_contexts], tables.contexts[pairs % n_contexts]], dim=-1)
    return joint, chosen_pos, rejected_pos
