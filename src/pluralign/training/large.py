"""Fit loop of PAL-Large (the text encoder trained with the heads) and of the cumulative per-prefix loss.

It differs from ``trainer.fit`` where Large needs it: the item and context vectors of a batch are computed
per step (by the trainable tower, on the unique texts the batch touches only) instead of read from fixed
tables; gradients accumulate over micro-batches; the encoder has its own learning rate; autocast runs
the forward pass in bf16/fp16 where asked. Everything else (epoch order, AdamW groups, early stopping on
validation accuracy, History) is the trainer's.

With a prefix loss (``losses.PREFIX_LOSSES``) each row contributes the weighted logistic loss of every
(chosen prefix, rejected prefix) pair that ``losses.prefix_pairs`` selects. The pairs of a batch are laid
out as one flat batch over a table of prefix vectors, so the unchanged heads score all of them in one
call: no Python loop over tokens or rows.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from pluralign.encoders.tokens import PrefixFeatures
from pluralign.models.base import Batch, PreferenceModel, Tables, unique_inverse
from pluralign.models.encoder import TextTower, TokenTable
from pluralign.training.distributed import DistContext
from pluralign.training.losses import PREFIX_LOSSES, accuracy, get_loss, prefix_loss, prefix_pairs
from pluralign.training.trainer import History, TrainConfig, epoch_order, make_optimizer, predict_margins

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class LargeConfig(TrainConfig):
    """``TrainConfig`` plus what PAL-Large needs. A step is ``grad_accum_steps`` micro-batches of
    ``batch_size`` rows. ``precision``: ``auto`` is bf16 autocast on CUDA devices that support it (else
    fp16 with loss scaling) and fp32 on CPU; ``bf16`` also works on CPU (fast only with AVX512-BF16/AMX).
    ``max_steps`` caps the optimizer steps (the last epoch is then partial)."""

    encoder_lr: float = 1e-5
    encoder_wd: float = 0.0
    grad_accum_steps: int = 1
    precision: str = "auto"
    device: str = "cpu"
    max_steps: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.encoder_lr > 0:
            raise ValueError(f"encoder_lr must be > 0, got {self.encoder_lr}")
        if self.grad_accum_steps < 1:
            raise ValueError(f"grad_accum_steps must be >= 1, got {self.grad_accum_steps}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 or None, got {self.max_steps}")
        if getattr(self, "checkpoint_dir", None) or getattr(self, "resume", False):
            raise ValueError(
                "resumable checkpoints are not supported by the PAL-Large / cumulative-loss loop"
            )

    @classmethod
    def from_train_config(cls, config: TrainConfig, **changes) -> LargeConfig:
        """A LargeConfig with every field of ``config`` (and ``changes``)."""
        names = {f.name for f in fields(cls)}
        return cls(**{**{k: v for k, v in asdict(config).items() if k in names}, **changes})


def autocast_dtype(precision: str, device: str) -> torch.dtype | None:
    """The autocast dtype for a precision setting on a device (None: plain fp32)."""
    cuda = device.startswith("cuda")
    if precision == "fp32" or (precision == "auto" and not cuda):
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "fp16" and not cuda:
        raise ValueError("fp16 autocast needs a CUDA device; use precision='bf16' on CPU")
    return torch.bfloat16 if precision == "bf16" else torch.float16


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
    model: PreferenceModel, source, rows: Batch, weighting: str | None, loss_fn
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


def fit_large(
    model: PreferenceModel,
    source: FrozenPrefixSource | TowerSource,
    batch: Batch,
    val: tuple[Batch, Callable[[], Tables]] | None = None,
    config: LargeConfig | None = None,
) -> History:
    """Train ``model`` (and ``source.module``, the tower, if any) in place on the rows of ``batch``.

    ``val`` is a batch and a function giving its tables (called after each epoch; for Large it embeds
    the validation texts with the current tower). The best validation epoch's weights are kept.
    Under torch.distributed each rank runs its shard of every step's rows and the gradients (heads and
    tower) are summed over ranks before the optimizer step (see training/distributed.py).
    """
    config = config or LargeConfig()
    weighting = PREFIX_LOSSES.get(config.loss)
    loss_fn = get_loss(config.loss)
    n = len(batch)
    if n == 0:
        raise ValueError("no training comparisons")
    device = torch.device(config.device)
    amp_dtype = autocast_dtype(config.precision, config.device)
    tower = source.module
    model.to(device)
    if tower is not None:
        tower.to(device)
    batch = Batch(*(t.to(device) for t in batch))
    ddp = DistContext.current()
    ddp.broadcast_parameters(model)
    if tower is not None:
        ddp.broadcast_parameters(tower)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = make_optimizer(model, config)
    if tower is not None:
        optimizer.add_param_group(
            {
                "params": [p for p in tower.parameters() if p.requires_grad],
                "lr": config.encoder_lr,
                "weight_decay": config.encoder_wd,
                "name": "encoder",
            }
        )
    params = [p for group in optimizer.param_groups for p in group["params"]]
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)
    step_rows = config.batch_size * config.grad_accum_steps
    steps_per_epoch = math.ceil(n / step_rows)
    total = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    history = History(steps_per_epoch=steps_per_epoch)
    best_state: dict | None = None
    stale = 0
    steps = rows_total = 0
    metrics_file = None
    if config.metrics_path and ddp.is_main:
        Path(config.metrics_path).parent.mkdir(parents=True, exist_ok=True)
        metrics_file = open(config.metrics_path, "w")  # noqa: SIM115 - closed in finally
    start = time.perf_counter()
    bar = tqdm(total=total, disable=not config.progress or not ddp.is_main, unit="step", leave=False)
    modules = [m for m in (model, tower) if m is not None]
    try:
        for epoch in range(1, config.epochs + 1):
            for m in modules:
                m.train()
            epoch_start = time.perf_counter()
            order = epoch_order(batch.context.cpu(), step_rows, config.rows_per_context, generator)
            loss_sum = torch.zeros((), dtype=torch.float64)
            correct = torch.zeros((), dtype=torch.float64)
            seen = 0
            epoch_steps = 0
            for s in range(0, n, step_rows):
                global_order = order[s : s + step_rows].to(device)
                step_order = ddp.shard(global_order)  # all of it in one process
                step_loss = torch.zeros((), dtype=torch.float64)
                step_correct = torch.zeros((), dtype=torch.float64)
                optimizer.zero_grad(set_to_none=True)
                for m in range(0, len(step_order), config.batch_size):
                    rows = batch.take(step_order[m : m + config.batch_size])
                    autocast = (
                        torch.autocast(device.type, dtype=amp_dtype)
                        if amp_dtype is not None
                        else nullcontext()
                    )
                    with autocast:
                        loss, margin = _rows_loss(model, source, rows, weighting, loss_fn)
                    # each micro-batch's share of the step's mean loss (over all ranks' rows)
                    scaler.scale(loss / len(global_order)).backward()
                    step_loss += loss.detach().double().cpu()
                    step_correct += accuracy(margin).cpu() * len(rows)
                if ddp.active:
                    extras = torch.stack([step_loss, step_correct]).float().to(device)
                    step_loss, step_correct = ddp.all_reduce_gradients(params, extras=extras).double().cpu()
                loss_sum += step_loss
                correct += step_correct
                if config.max_grad_norm is not None:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                seen += len(global_order)
                rows_total += len(global_order)
                steps += 1
                epoch_steps += 1
                bar.update(1)
                if steps >= total:
                    break
            seconds = time.perf_counter() - epoch_start
            record = {
                "epoch": epoch,
                "train_loss": float(loss_sum) / seen,
                "train_accuracy": float(correct) / seen,
                "seconds": seconds,
                "steps": epoch_steps,
                "seconds_per_step": seconds / epoch_steps,
            }
            if val is not None and len(val[0]):
                val_margin = predict_margins(model, val[0], val[1](), chunk=config.eval_batch_size)
                record["val_loss"] = float(loss_fn(val_margin).mean())
                record["val_accuracy"] = float(accuracy(val_margin))
            history.epochs.append(record)
            if metrics_file:
                metrics_file.write(json.dumps(record) + "\n")
                metrics_file.flush()
            bar.set_postfix(epoch=epoch, loss=f"{record['train_loss']:.4f}")
            logger.debug("epoch %d: %s", epoch, record)
            if "val_accuracy" in record:
                if (
                    history.best_val_accuracy is None
                    or record["val_accuracy"] > history.best_val_accuracy + config.min_delta
                ):
                    history.best_val_accuracy, history.best_epoch = record["val_accuracy"], epoch
                    best_state = {i: copy.deepcopy(m.state_dict()) for i, m in enumerate(modules)}
                    stale = 0
                else:
                    stale += 1
                    if config.patience is not None and stale >= config.patience:
                        history.stopped_early = True
                        logger.info("early stop at epoch %d (best %d)", epoch, history.best_epoch)
                        break
            if steps >= total:
                break
    finally:
        bar.close()
        if metrics_file:
            metrics_file.close()
    if best_state is not None:
        for i, m in enumerate(modules):
            m.load_state_dict(best_state[i])
    for m in modules:
        m.eval()
    history.seconds = time.perf_counter() - start
    history.comparisons_per_second = rows_total / max(history.seconds, 1e-9)
    logger.info(
        "trained %d steps in %.1fs, best val accuracy %s", steps, history.seconds, history.best_val_accuracy
    )
    return history


def fit_tiny_prefixes(
    model: PreferenceModel,
    data,
    train: tuple[Batch, Tables],
    val: tuple[Batch, Tables] | None,
    config: TrainConfig,
    encoder,
    cache_dir: str | Path | None = None,
) -> History:
    """A Tiny model trained with a prefix loss: prefix vectors of ``data.items`` from the frozen
    ``encoder`` (cached under ``cache_dir``), contexts from ``train``'s tables."""
    from pluralign.encoders.tokens import prefix_features

    prefixes = prefix_features(list(data.items), encoder, cache_dir=cache_dir, show_progress=config.progress)
    source = FrozenPrefixSource(train[1], prefixes)
    val_part = None if val is None else (val[0], lambda: val[1])
    return fit_large(model, source, train[0], val_part, LargeConfig.from_train_config(config))
