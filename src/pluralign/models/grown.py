"""Grown PAL models: prototypes added after training, in blocks, so that existing users stay exact.

Growing (pluralign.training.growth) appends M prototypes to a trained model with K. Existing users get
weight exactly 0 on them, yet a plain softmax and weighted sum over K + M columns would not reproduce the
K-column numbers bit for bit: vectorized reductions change their order with the length. So a grown model
keeps its prototypes in blocks (the original K, then each added block) and computes per block:

    w_u = concat_b  softmax(l_ub) * s_ub,      s_u = softmax_b(logsumexp(l_ub))

which is softmax(l_u) in exact arithmetic; every sum over prototypes (PAL-B's weighted margin and z_u(c),
PAL-A's w_u P) is the sum over blocks of the per-block sums. A block whose logits all sit at or below
``MIN_LOG_WEIGHT`` (what ``weights_to_logits`` writes for a zero weight) has s_ub = 0 exactly. For an existing
user the first block then runs the very operations of the original model and the other blocks add exact
zeros: margins, rewards and weights are unchanged to the bit.

A grown model has the parameters (and state_dict) of the plain model with K + M prototypes; only its
forward differs. ``make_blockwise`` turns a plain model into the grown class in place (checkpoints store the
blocks in config.json).
"""

from __future__ import annotations

import torch
from torch import nn

from pluralign.models.base import MIN_LOG_WEIGHT, Batch, PreferenceModel, Tables, joint_pairs, unique_inverse
from pluralign.models.pal_a import PALAModel
from pluralign.models.pal_b import PALBModel


def block_weights(logits: torch.Tensor, blocks: tuple[int, ...]) -> list[torch.Tensor]:
    """Mixture weights per block of prototypes, [..., K_b] each, from logits [..., sum(blocks)]."""
    parts = [p.contiguous() for p in logits.split(list(blocks), dim=-1)]
    if len(parts) == 1:
        return [torch.softmax(parts[0], dim=-1)]
    top = torch.stack([p.amax(dim=-1) for p in parts], dim=-1)
    active = top > MIN_LOG_WEIGHT
    active = active | ~active.any(dim=-1, keepdim=True)  # never all blocks off (not simplex weights)
    # an inactive block's logits are replaced by zeros before any exp so no inf - inf reaches a gradient
    safe = [torch.where(active[..., b : b + 1], p, torch.zeros_like(p)) for b, p in enumerate(parts)]
    lse = torch.stack([torch.logsumexp(p, dim=-1) for p in safe], dim=-1)
    mass = torch.softmax(lse.masked_fill(~active, float("-inf")), dim=-1)
    return [torch.softmax(p, dim=-1) * mass[..., b : b + 1] for b, p in enumerate(safe)]


class _Blockwise:
    """Forward passes by block of prototypes; mixed into PALBModel / PALAModel."""

    prototype_blocks: tuple[int, ...]
    user_logits: nn.Parameter

    def weights(self, logits: torch.Tensor | None = None) -> torch.Tensor:
        """Users' mixture weights, [n_users, K]; exactly 0 on a block whose logits are all at the floor."""
        logits = self.user_logits if logits is None else logits
        return torch.cat(block_weights(logits, self.prototype_blocks), dim=-1)

    def margins(self, batch: Batch, tables: Tables, logits: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.user_logits if logits is None else logits
        users, (user_pos,) = unique_inverse(batch.user)
        return self._block_margins(
            block_weights(logits[users], self.prototype_blocks), user_pos, batch, tables
        )

    def _margins(
        self, weights: torch.Tensor, user_pos: torch.Tensor, batch: Batch, tables: Tables
    ) -> torch.Tensor:
        return self._block_margins(self._split_weights(weights), user_pos, batch, tables)

    def _block_margins(
        self, weights: list[torch.Tensor], user_pos: torch.Tensor, batch: Batch, tables: Tables
    ) -> torch.Tensor:
        raise NotImplementedError

    def _split_weights(self, weights: torch.Tensor) -> list[torch.Tensor]:
        return [w.contiguous() for w in weights.split(list(self.prototype_blocks), dim=-1)]


class GrownPALBModel(_Blockwise, PALBModel):
    """PAL-B whose preference maps g_k come in blocks (the trained K, then the added ones)."""

    def _g_blocks(self) -> list[nn.ModuleList]:
        bounds, start = [], 0
        for size in self.prototype_blocks:
            bounds.append(self.g[start : start + size])
            start += size
        return bounds

    def _directions(self, g: nn.ModuleList, contexts: torch.Tensor) -> torch.Tensor:
        # the same operations as PALBModel.prototype_directions, on one block's maps
        return torch.nn.functional.normalize(torch.stack([m(contexts) for m in g], dim=-2), dim=-1)

    def _per_block(self, batch: Batch, tables: Tables) -> list[torch.Tensor]:
        items, (chosen_pos, rejected_pos) = unique_inverse(batch.chosen, batch.rejected)
        f = self.item_directions(tables.items[items])
        contexts, (context_pos,) = unique_inverse(batch.context)
        diff = f[chosen_pos] - f[rejected_pos]
        out = []
        for g in self._g_blocks():
            directions = self._directions(g, tables.contexts[contexts])
            out.append(self.scale * torch.einsum("bkd,bd->bk", directions[context_pos], diff))
        return out

    def prototype_directions(self, contexts: torch.Tensor) -> torch.Tensor:
        return torch.cat([self._directions(g, contexts) for g in self._g_blocks()], dim=-2)

    def prototype_margins(self, batch: Batch, tables: Tables) -> torch.Tensor:
        return torch.cat(self._per_block(batch, tables), dim=-1)

    def _block_margins(
        self, weights: list[torch.Tensor], user_pos: torch.Tensor, batch: Batch, tables: Tables
    ) -> torch.Tensor:
        total = None
        for margin, w in zip(self._per_block(batch, tables), weights, strict=True):
            part = (margin * w[user_pos]).sum(-1)
            total = part if total is None else total + part
        return total

    def rewards(self, weights: torch.Tensor, items: torch.Tensor, contexts: torch.Tensor) -> torch.Tensor:
        z = None
        for g, w in zip(self._g_blocks(), self._split_weights(weights), strict=True):
            directions = self._directions(g, contexts)
            part = torch.einsum("bk,bkd->bd", w.expand(len(directions), -1), directions)
            z = part if z is None else z + part
        return self.scale * (self.item_directions(items) * z).sum(-1)


class GrownPALAModel(_Blockwise, PALAModel):
    """PAL-A whose prototype points come in blocks (the trained K rows of P, then the added ones)."""

    def _ideal_inputs(self, weights: list[torch.Tensor]) -> torch.Tensor:
        total, start = None, 0
        for size, w in zip(self.prototype_blocks, weights, strict=True):
            part = w @ self.prototypes[start : start + size]
            total = part if total is None else total + part
            start += size
        return total

    def _block_margins(
        self, weights: list[torch.Tensor], user_pos: torch.Tensor, batch: Batch, tables: Tables
    ) -> torch.Tensor:
        joint, chosen_pos, rejected_pos = joint_pairs(batch, tables)
        mapped = self.f(joint)
        ideal = self.f(self._ideal_inputs(weights))[user_pos]
        d_chosen = (mapped[chosen_pos] - ideal).square().sum(-1)
        d_rejected = (mapped[rejected_pos] - ideal).square().sum(-1)
        return d_rejected - d_chosen

    def rewards(self, weights: torch.Tensor, items: torch.Tensor, contexts: torch.Tensor) -> torch.Tensor:
        ideal = self.f(self._ideal_inputs(self._split_weights(weights)))
        return -(self.f(torch.cat([items, contexts], dim=-1)) - ideal).square().sum(-1)


GROWN: dict[type[PreferenceModel], type[PreferenceModel]] = {
    PALBModel: GrownPALBModel,
    PALAModel: GrownPALAModel,
    GrownPALBModel: GrownPALBModel,
    GrownPALAModel: GrownPALAModel,
}


def make_blockwise(model: PreferenceModel, blocks: list[int] | tuple[int, ...]) -> PreferenceModel:
    """Turn a PAL-A/PAL-B model into its grown class with these prototype blocks, in place.

    The classes share every parameter and buffer, so only ``__class__`` changes (no copy, same state_dict).
    """
    blocks = tuple(int(b) for b in blocks)
    target = GROWN.get(type(model))
    if target is None:
        raise ValueError(f"only PAL-A and PAL-B models can grow prototypes, not {type(model).__name__}")
    if not blocks or min(blocks) < 1 or sum(blocks) != model.n_prototypes:
        raise ValueError(
            f"prototype blocks {list(blocks)} must be positive and sum to the model's "
            f"{model.n_prototypes} prototypes"
        )
    model.__class__ = target
    model.prototype_blocks = blocks
    return model
