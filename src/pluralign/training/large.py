"""What PAL-Large and the cumulative per-prefix loss feed the one fit loop (``trainer.train_loop``).

PAL-Large: the item and context vectors of a step are computed by the trainable tower, on the unique texts
the step touches only, instead of read from fixed tables; the tower trains with the heads (its own
learning rate: ``TrainConfig.encoder_lr``). Micro-batching, autocast, early stopping, metrics, DDP and
resumable checkpoints are the loop's, as for PAL-Tiny.

With a prefix loss (``losses.PREFIX_LOSSES``) each row contributes the weighted logistic loss of every
(chosen prefix, rejected prefix) pair that ``losses.prefix_pairs`` selects. The pairs of a batch are laid
out as one flat batch over a table of prefix vectors, so the unchanged heads score all of them in one
call: no Python loop over tokens or rows. Tiny models read precomputed prefix vectors
(``FrozenPrefixSource``), Large ones compute them with the tower (``TowerSource``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pluralign.encoders.tokens import PrefixFeatures
from pluralign.models.base import Batch, PreferenceModel, Tables, unique_inverse
from pluralign.models.encoder import TextTower, TokenTable
from pluralign.training.config import Callback, History, TrainConfig
from pluralign.training.losses import PREFIX_LOSSES, LossFn, prefix_loss, prefix_pairs
from pluralign.training.resume import checkpoint_callbacks
from pluralign.training.trainer import autocast_dtype, table_sample, train_loop

__all__ = [
    "FrozenPrefixSource",
    "SourceFeed",
    "TowerSource",
    "autocast_dtype",
    "fit_large",
    "fit_tiny_prefixes",
]


# ========================================================================================================
def common_prefix(tokens: TokenTable, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Number of leading token ids rows ``a`` and ``b`` of ``tokens`` share, per pair."""
    ids_a, mask_a = tokens.padded(a)
    ids_b, mask_b = tokens.padded(b)
    width = max(ids_a.shape[1], ids_b.shape[1])
    ids_a, mask_a, ids_b, mask_b = (
        nn.functional.pad(x, (0, width - x.shape[1])) for x in (ids_a, mask_a, ids_b, mask_b)
    )
    same = (ids_a == ids_b) & mask_a.bool() & mask_b.bool()
    return torch.cumprod(same.long(), dim=1).sum(1)


@dataclass
class PrefixBatch:
    """Every compared (chosen prefix, rejected prefix) pair of a batch as one flat batch of rows.

    ``flat`` indexes ``tables`` (items: prefix vectors); ``row`` and ``position`` say which batch row and
    prefix position each flat row is; ``weights`` [B, T] are the prefix weights.
    """

    flat: Batch
    tables: Tables
    row: torch.Tensor
    position: torch.Tensor
    weights: torch.Tensor


def expand_prefixes(
    batch: Batch,
    tokens: TokenTable,
    item_base: torch.Tensor,
    prefix_items: torch.Tensor,
    contexts: torch.Tensor,
    weighting: str,
) -> PrefixBatch:
    """Lay out the prefix pairs of ``batch``: item i's prefix ending at token j is row
    ``item_base[i] + j`` of ``prefix_items`` (``item_base`` indexed by the batch's item ids)."""
    chosen_len, rejected_len = tokens.lengths[batch.chosen.cpu()], tokens.lengths[batch.rejected.cpu()]
    common = common_prefix(tokens, batch.chosen.cpu(), batch.rejected.cpu())
    chosen_pos, rejected_pos, weights = prefix_pairs(chosen_len, rejected_len, common, weighting)
    row, position = (weights > 0).nonzero(as_tuple=True)
    device = batch.user.device
    row, position = row.to(device), position.to(device)
    chosen_pos, rejected_pos = chosen_pos.to(device), rejected_pos.to(device)
    flat = Batch(
        batch.user[row],
        batch.context[row],
        item_base[batch.chosen[row]] + chosen_pos[row, position],
        item_base[batch.rejected[row]] + rejected_pos[row, position],
    )
    return PrefixBatch(flat, Tables(prefix_items, contexts), row, position, weights.to(device))


# ========================================================================================================
class FrozenPrefixSource:
    """Tiny models: fixed context vectors and precomputed prefix vectors of the items."""

    module: nn.Module | None = None

    def __init__(self, tables: Tables, prefixes: PrefixFeatures) -> None:
        if len(prefixes.tokens) != len(tables.items):
            raise ValueError(f"prefix features of {len(prefixes.tokens)} items for {len(tables.items)} items")
        self.tables = tables
        self.prefixes = prefixes

    def full(self, batch: Batch) -> tuple[Batch, Tables]:
        return batch, self.tables

    def fingerprint_tensors(self) -> list[torch.Tensor]:
        tokens = self.prefixes.tokens
        return [
            *table_sample(self.tables),
            tokens.ids,
            tokens.offsets,
            *table_sample((self.prefixes.vectors,)),
        ]

    def prefix_batch(self, batch: Batch, weighting: str) -> PrefixBatch:
        # Only the prefix rows of the batch's items are gathered (and cast to float32).
        items, (chosen_pos, rejected_pos) = unique_inverse(batch.chosen, batch.rejected)
        tokens = self.prefixes.tokens
        lengths = tokens.lengths[items.cpu()]
        local_offsets = torch.cumsum(lengths, 0) - lengths
        rows = torch.repeat_interleave(tokens.offsets[items.cpu()] - local_offsets, lengths) + torch.arange(
            int(lengths.sum())
        )
        local = self.prefixes.vectors[rows].to(self.tables.items.device, torch.float32)
        local_tokens = TokenTable(tokens.ids[rows], torch.cat([local_offsets, lengths.sum()[None]]))
        local_batch = Batch(batch.user, batch.context, chosen_pos, rejected_pos)
        base = local_offsets.to(batch.user.device)
        return expand_prefixes(local_batch, local_tokens, base, local, self.tables.contexts, weighting)


class TowerSource:
    """Large models: vectors of the unique texts a batch touches, from the trainable tower."""

    def __init__(self, tower: TextTower, items: TokenTable, contexts: TokenTable | None) -> None:
        self.module = tower
        self.items = items
        self.contexts = contexts

    def fingerprint_tensors(self) -> list[torch.Tensor | None]:
        tables = (self.items, self.contexts)
        return [t for table in tables for t in ((table.ids, table.offsets) if table is not None else (None,))]

    def _contexts(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        unique, (position,) = unique_inverse(batch.context)
        if self.contexts is None:  # no prompts: contexts carry no features
            return torch.zeros(len(unique), 0, device=batch.user.device), position
        return self.module.pooled(self.contexts, unique), position

    def full(self, batch: Batch) -> tuple[Batch, Tables]:
        items, (chosen_pos, rejected_pos) = unique_inverse(batch.chosen, batch.rejected)
        contexts, context_pos = self._contexts(batch)
        vectors = self.module.pooled(self.items, items)
        return Batch(batch.user, context_pos, chosen_pos, rejected_pos), Tables(vectors, contexts)

    def prefix_batch(self, batch: Batch, weighting: str) -> PrefixBatch:
        items, (chosen_pos, rejected_pos) = unique_inverse(batch.chosen, batch.rejected)
        contexts, context_pos = self._contexts(batch)
        prefixes = self.module.prefixes(self.items, items)  # [n, L, D]
        n, width = prefixes.shape[:2]
        local_batch = Batch(batch.user, context_pos, chosen_pos, rejected_pos)
        # the local item table: row i holds item items[i]'s token ids, so common prefixes come out right
        ids, mask = self.items.padded(items.cpu())
        lengths = mask.sum(1)
        local_tokens = TokenTable(
            ids[mask.bool()], torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
        )
        base = torch.arange(n, device=batch.user.device) * width
        return expand_prefixes(
            local_batch, local_tokens, base, prefixes.reshape(n * width, -1), contexts, weighting
        )

    @torch.no_grad()
    def encode(
        self, items: TokenTable, contexts: TokenTable | None, n_contexts: int, batch_size: int = 64
    ) -> Tables:
        """Eval-mode vectors of whole tables (validation data); ``contexts`` None: no context features."""
        item_vectors = self.module.encode_table(items, batch_size)
        if self.contexts is None or contexts is None:
            return Tables(item_vectors, torch.zeros(n_contexts, 0))
        return Tables(item_vectors, self.module.encode_table(contexts, batch_size))


# ========================================================================================================
def _rows_loss(
    model: PreferenceModel, source, rows: Batch, weighting: str | None, loss_fn: LossFn | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed loss of the rows and their full-response margins (detached, for accuracy)."""
    if weighting is None:
        local, tables = source.full(rows)
        margin = model.margins(local, tables).float()
        return loss_fn(margin).sum(), margin.detach()
    pairs = source.prefix_batch(rows, weighting)
    flat_margin = model.margins(pairs.flat, pairs.tables).float()
    margins = torch.zeros(pairs.weights.shape, device=flat_margin.device)
    margins = margins.index_put((pairs.row, pairs.position), flat_margin)
    last = (pairs.weights > 0).long().cumsum(1).argmax(1)  # the last valid position: full responses
    full = margins.detach()[torch.arange(len(margins), device=margins.device), last]
    return prefix_loss(margins, pairs.weights).sum(), full


class SourceFeed:
    """A ``trainer.Feed`` over a source (``TowerSource`` or ``FrozenPrefixSource``): full-response
    margins, or with ``weighting`` (``PREFIX_LOSSES``) the per-prefix loss."""

    def __init__(self, source: FrozenPrefixSource | TowerSource, weighting: str | None) -> None:
        self.source = source
        self.weighting = weighting
        self.module = source.module

    def rows_loss(
        self, model: PreferenceModel, rows: Batch, loss_fn: LossFn
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return _rows_loss(model, self.source, rows, self.weighting, loss_fn)

    def fingerprint_tensors(self) -> Iterable[torch.Tensor]:
        return self.source.fingerprint_tensors()


def fit_large(
    model: PreferenceModel,
    source: FrozenPrefixSource | TowerSource,
    batch: Batch,
    val: tuple[Batch, Callable[[], Tables]] | None = None,
    config: TrainConfig | None = None,
    callbacks: Sequence[Callback] | None = None,
) -> History:
    """Train ``model`` (and ``source.module``, the tower, if any) in place on the rows of ``batch``.

    ``val`` is a batch and a function giving its tables (called after each epoch; for Large it embeds
    the validation texts with the current tower). The best validation epoch's weights are kept.
    ``callbacks`` default to ``checkpoint_callbacks(config)`` (resumable checkpoints if configured).
    """
    config = config or TrainConfig()
    callbacks = checkpoint_callbacks(config) if callbacks is None else callbacks
    feed = SourceFeed(source, PREFIX_LOSSES.get(config.loss))
    return train_loop(model, batch, feed, val, config, callbacks)


def fit_tiny_prefixes(
    model: PreferenceModel,
    data,
    train: tuple[Batch, Tables],
    val: tuple[Batch, Tables] | None,
    config: TrainConfig,
    encoder,
    cache_dir: str | Path | None = None,
    callbacks: Sequence[Callback] | None = None,
) -> History:
    """A Tiny model trained with a prefix loss: prefix vectors of ``data.items`` from the frozen
    ``encoder`` (cached under ``cache_dir``), contexts from ``train``'s tables."""
    from pluralign.encoders.tokens import prefix_features

    prefixes = prefix_features(list(data.items), encoder, cache_dir=cache_dir, show_progress=config.progress)
    source = FrozenPrefixSource(train[1], prefixes)
    return fit_large(model, source, train[0], val, config, callbacks)
