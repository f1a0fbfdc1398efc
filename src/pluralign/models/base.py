"""What every preference model shares: user weights on the simplex and batch indexing.

``FreeUserModel`` is the variant whose users are free vectors (no simplex), with an L2 penalty on them
(matrix factorisation, per-user rewards: ``pluralign.models.mf``, ``pluralign.models.per_user``).

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
    #: margins are ``prototype_margins(batch, tables) @ w_u`` (PAL-B, LoRe): few-shot fits are solved exactly
    linear_in_weights: bool = False

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

    def logits_of(self, weights: torch.Tensor) -> torch.Tensor:
        """User-table rows whose ``weights`` are ``weights`` (the inverse of ``weights``)."""
        return weights_to_logits(weights)

    def margins(self, batch: Batch, tables: Tables, logits: torch.Tensor | None = None) -> torch.Tensor:
        """r_u(chosen, c) - r_u(rejected, c) per row. ``logits`` replaces the user table (few-shot fits)."""
        logits = self.user_logits if logits is None else logits
        users, (user_pos,) = unique_inverse(batch.user)
        weights = self.weights(logits[users])
        return self._margins(weights, user_pos, batch, tables)

    def set_training_rows(self, users: torch.Tensor) -> None:
        """Hook called before training with the user row of every training comparison (models with a
        per-user penalty count each user's rows here); nothing by default."""

    def penalty(self, batch: Batch) -> torch.Tensor:
        """A regulariser added to the summed loss of ``batch``'s rows during training; 0 by default."""
        return torch.zeros((), device=self.user_logits.device)

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


class FreeUserModel(PreferenceModel):
    """Users as free vectors u_u in R^K (no simplex): ``weights`` is the user table itself.

    Training adds the penalty ``user_l2 / 2 * ||u_u||^2`` per user, spread over the user's training rows
    (``user_l2 / (2 n_u) * ||u_u||^2`` per row), so one pass over the data adds each user's penalty once and
    a full-batch step minimises  sum_j loss_j + sum_u user_l2 / 2 * ||u_u||^2  (over the row count).
    Subclasses give ``linear_features``: margins are affine in u, which makes few-shot fits ridge
    logistic regressions (``pluralign.training.ridge``).
    """

    def __init__(
        self, n_users: int, width: int, user_l2: float = 1.0, generator: torch.Generator | None = None
    ) -> None:
        if user_l2 < 0:
            raise ValueError(f"user_l2 must be >= 0, got {user_l2}")
        super().__init__(n_users, width, generator)
        self.user_l2 = float(user_l2)
        # rows per training user (set by set_training_rows; not saved: only training reads it)
        self.register_buffer("row_counts", torch.ones(n_users), persistent=False)

    def weights(self, logits: torch.Tensor | None = None) -> torch.Tensor:
        """The users' vectors as they are, [n_users, K] (not on the simplex)."""
        return self.user_logits if logits is None else logits

    def logits_of(self, weights: torch.Tensor) -> torch.Tensor:
        return weights.to(self.user_logits.dtype)

    def set_training_rows(self, users: torch.Tensor) -> None:
        counts = torch.bincount(users.cpu(), minlength=self.n_users).clamp(min=1)
        self.row_counts = counts.to(self.user_logits)

    def penalty(self, batch: Batch) -> torch.Tensor:
        if not self.user_l2:
            return super().penalty(batch)
        vectors = self.user_logits[batch.user]
        return 0.5 * self.user_l2 * (vectors.square().sum(-1) / self.row_counts[batch.user]).sum()

    def linear_features(self, batch: Batch, tables: Tables) -> tuple[torch.Tensor, torch.Tensor]:
        """``(offset [B], features [B, K])`` with margin_j = offset_j + features_j . u_{user_j}."""
        raise NotImplementedError

    def grow_users(self, n_new: int, init: torch.Tensor | None = None) -> None:
        """Append ``n_new`` users (zero vectors unless ``init`` is given)."""
        super().grow_users(n_new, init)
        self.row_counts = torch.cat([self.row_counts, torch.ones(n_new).to(self.row_counts)])


#: prompt x response widths up to this get the full outer product in the linear features
OUTER_MAX = 4096


def linear_feature_dim(item_dim: int, context_dim: int) -> int:
    """Width of :func:`linear_features` for responses of width Dx and prompts of width Dc."""
    if context_dim == 0:
        return item_dim
    if item_dim * context_dim <= OUTER_MAX:
        return item_dim + item_dim * context_dim
    if context_dim == item_dim:
        return 2 * item_dim
    raise ValueError(
        f"a linear reward needs prompt vectors of the responses' width ({item_dim}) or a small product "
        f"of the widths (<= {OUTER_MAX}), got prompts of width {context_dim}: embed prompts and responses "
        "with one encoder"
    )


def linear_features(items: torch.Tensor, contexts: torch.Tensor) -> torch.Tensor:
    """phi(x, c): the feature map of the linear rewards (LoRe, PerUser), [B, linear_feature_dim].

    x alone without prompts; [x; vec(x c^T)] when Dx * Dc <= OUTER_MAX (every bilinear term x_i c_j);
    else [x; sqrt(Dx) x * c] (prompts of the responses' width: the diagonal bilinear terms x_i c_i, scaled
    so that for unit vectors the block has about x's norm, as vec(x c^T) has: unscaled, its entries are
    about 1/D and a rate-limited optimizer barely moves it). The prompt's own
    part of a linear reward, v^T c, is the same for both responses of a comparison and cancels in every
    margin; the bilinear terms are how a linear reward depends on the prompt. On Polis-shaped rows (the
    statement in the prompt, responses Yes / No) they carry the statement: the margin is a linear function
    of the statement's embedding."""
    dc = contexts.shape[-1]
    if dc == 0:
        return items
    if items.shape[-1] * dc <= OUTER_MAX:
        return torch.cat([items, (items[:, :, None] * contexts[:, None, :]).flatten(1)], dim=-1)
    return torch.cat([items, items * contexts * items.shape[-1] ** 0.5], dim=-1)


def linear_pair_features(batch: Batch, tables: Tables) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`linear_features` of the unique (response, prompt) pairs a batch touches, and each row's
    chosen and rejected positions in them."""
    joint, chosen_pos, rejected_pos = joint_pairs(batch, tables)
    dx = tables.items.shape[1]
    return linear_features(joint[:, :dx], joint[:, dx:]), chosen_pos, rejected_pos
