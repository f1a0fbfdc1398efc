"""Fit loop: index-based shuffled batches, AdamW with a learning rate per parameter group, early stopping
on validation accuracy, tqdm progress and per-epoch metrics as JSON lines. Optionally checkpointed for
exact resumption (training/resume.py) and data parallel under torch.distributed (training/distributed.py)."""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from pluralign.models.base import Batch, PreferenceModel, Tables
from pluralign.training.distributed import DistContext
from pluralign.training.losses import LossFn, accuracy, get_loss

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Optimization settings. Defaults follow PAL App. D.2: lr 5e-4 / weight decay 1e-3 for the shared
    maps, lr 5e-3 for prototypes and user weights."""

    loss: str = "logistic"
    epochs: int = 100
    batch_size: int = 1024
    lr_maps: float = 5e-4
    wd_maps: float = 1e-3
    lr_prototypes: float = 5e-3
    wd_prototypes: float = 0.0
    lr_users: float = 5e-3
    wd_users: float = 0.0
    #: stop after this many epochs without a better validation accuracy (None: never stop early)
    patience: int | None = 10
    min_delta: float = 0.0
    max_grad_norm: float | None = None
    #: build each batch from runs of this many rows sharing a context (None: plain shuffle); see epoch_order
    rows_per_context: int | None = None
    eval_batch_size: int = 65536
    seed: int = 0
    progress: bool = True
    metrics_path: str | None = None
    #: directory of resumable checkpoints (None: no checkpoints); see pluralign.training.resume
    checkpoint_dir: str | None = None
    #: checkpoint every this many optimizer steps and/or seconds (None: not by that measure)
    checkpoint_every: int | None = None
    checkpoint_seconds: float | None = None
    #: continue from the newest checkpoint in checkpoint_dir (an error if there is none)
    resume: bool = False

    def __post_init__(self) -> None:
        get_loss(self.loss)
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr_maps", "lr_prototypes", "lr_users"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.rows_per_context is not None and self.rows_per_context < 1:
            raise ValueError(f"rows_per_context must be >= 1 or None, got {self.rows_per_context}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1 or None, got {self.patience}")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1 or None, got {self.checkpoint_every}")
        if self.checkpoint_seconds is not None and not self.checkpoint_seconds > 0:
            raise ValueError(f"checkpoint_seconds must be > 0 or None, got {self.checkpoint_seconds}")
        if (self.checkpoint_every or self.checkpoint_seconds or self.resume) and not self.checkpoint_dir:
            raise ValueError("checkpoint_every, checkpoint_seconds and resume need a checkpoint_dir")


@dataclass
class History:
    epochs: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    best_val_accuracy: float | None = None
    stopped_early: bool = False
    seconds: float = 0.0
    comparisons_per_second: float = 0.0
    #: optimizer steps in one epoch over the training data (None: not recorded, e.g. older checkpoints)
    steps_per_epoch: int | None = None


@torch.no_grad()
def predict_margins(
    model: PreferenceModel,
    batch: Batch,
    tables: Tables,
    logits: torch.Tensor | None = None,
    chunk: int = 65536,
) -> torch.Tensor:
    """Margins of all rows in eval mode, in chunks to bound memory."""
    was_training = model.training
    model.eval()
    try:
        parts = [
            model.margins(batch.take(slice(s, s + chunk)), tables, logits)
            for s in range(0, len(batch), chunk)
        ]
    finally:
        model.train(was_training)
    return torch.cat(parts) if parts else torch.zeros(0)


def epoch_order(
    context: torch.Tensor, batch_size: int, rows_per_context: int | None, generator: torch.Generator
) -> torch.Tensor:
    """The order of the rows in one epoch.

    Plain shuffle by default. With ``rows_per_context = r``, a batch is made of runs of r random rows that
    share a context, from about B / r random contexts, so maps of the context (PAL-B's g_k) run on B / r
    contexts per step instead of nearly all of them; the batches themselves come in random order. Worth it
    when rows far outnumber contexts (Persona: 40M rows, 4,000 questions).
    """
    n = len(context)
    shuffled = torch.randperm(n, generator=generator)
    if rows_per_context is None:
        return shuffled
    grouped = shuffled[torch.argsort(context[shuffled], stable=True)]  # by context, random within one
    ctx = context[grouped]
    counts = torch.bincount(ctx)
    rank_in_context = torch.arange(n) - (torch.cumsum(counts, 0) - counts)[ctx]
    context_rank = torch.empty_like(counts)
    context_rank[torch.randperm(len(counts), generator=generator)] = torch.arange(len(counts))
    # run j of every context comes before run j + 1 of any; contexts in random order within a run index
    key = (rank_in_context // rows_per_context) * len(counts) + context_rank[ctx]
    ordered = grouped[torch.argsort(key, stable=True)]
    batches = ordered.split(batch_size)
    return torch.cat([batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()])


def make_optimizer(model: PreferenceModel, config: TrainConfig) -> torch.optim.Optimizer:
    settings = {
        "maps": (config.lr_maps, config.wd_maps),
        "prototypes": (config.lr_prototypes, config.wd_prototypes),
        "users": (config.lr_users, config.wd_users),
    }
    groups = [
        {"params": params, "lr": settings[name][0], "weight_decay": settings[name][1], "name": name}
        for name, params in model.param_groups().items()
        if params
    ]
    # foreach=True: one fused update per group instead of a Python loop over tensors.
    return torch.optim.AdamW(groups, foreach=True)


def fit(
    model: PreferenceModel,
    train: tuple[Batch, Tables],
    val: tuple[Batch, Tables] | None = None,
    config: TrainConfig | None = None,
) -> History:
    """Train ``model`` in place; with ``val``, keep the weights of the best validation epoch.

    Under torch.distributed every rank trains on its shard of each global batch (training/distributed.py);
    with ``config.checkpoint_dir`` the loop checkpoints and can resume exactly (training/resume.py).
    """
    config = config or TrainConfig()
    loss_fn = get_loss(config.loss)
    batch, tables = train
    n = len(batch)
    if n == 0:
        raise ValueError("no training comparisons")
    ddp = DistContext.current()
    ddp.broadcast_parameters(model)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = make_optimizer(model, config)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    steps_per_epoch = math.ceil(n / config.batch_size)
    history = History(steps_per_epoch=steps_per_epoch)
    best_state: dict | None = None
    stale = 0
    first_epoch, first_step, global_step, elapsed = 1, 0, 0, 0.0
    loss_sum, correct = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    checkpoints = None
    if config.checkpoint_dir:
        from pluralign.training.resume import Checkpointer, TrainState

        checkpoints = Checkpointer(config, model, optimizer, train, val, ddp)
        if config.resume:
            state = checkpoints.load()
            history, best_state, stale, elapsed = state.history, state.best_state, state.stale, state.elapsed
            history.steps_per_epoch = steps_per_epoch  # absent from checkpoints written before the field
            first_epoch, first_step, global_step = state.epoch, state.step, state.global_step
            generator.set_state(state.generator_state)
            loss_sum, correct = state.loss_sum, state.correct
    metrics_file = None
    if config.metrics_path and ddp.is_main:
        Path(config.metrics_path).parent.mkdir(parents=True, exist_ok=True)
        metrics_file = open(config.metrics_path, "w")  # noqa: SIM115 - closed in finally
        metrics_file.writelines(json.dumps(record) + "\n" for record in history.epochs)  # resumed epochs
    start = time.perf_counter()
    total = config.epochs * steps_per_epoch
    bar = tqdm(
        total=total,
        initial=min(global_step, total),
        disable=not config.progress or not ddp.is_main,
        unit="step",
        leave=False,
    )
    try:
        model.train()
        for epoch in range(first_epoch, config.epochs + 1):
            epoch_start = time.perf_counter()
            # a checkpoint stores this state and regenerates the epoch's order from it
            epoch_rng = generator.get_state() if checkpoints else None
            order = epoch_order(batch.context, config.batch_size, config.rows_per_context, generator)
            if epoch != first_epoch or first_step == 0:
                loss_sum = torch.zeros((), dtype=torch.float64)
                correct = torch.zeros((), dtype=torch.float64)
            for step in range(first_step if epoch == first_epoch else 0, steps_per_epoch):
                global_rows = order[step * config.batch_size : (step + 1) * config.batch_size]
                rows = batch.take(ddp.shard(global_rows))
                margin = model.margins(rows, tables)
                if ddp.active:
                    # each rank's share of the global batch mean; the gradient all-reduce adds them up
                    per_row = loss_fn(margin)
                    loss = per_row.sum() / len(global_rows)
                else:
                    loss = loss_fn(margin).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if ddp.active:
                    local = torch.stack([per_row.detach().sum(), _correct(margin.detach()).float()])
                    totals = ddp.all_reduce_gradients(params, extras=local).double()
                    loss_sum += totals[0]
                    correct += totals[1]
                if config.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
                if not ddp.active:
                    loss_sum += loss.detach() * len(rows)
                    correct += accuracy(margin.detach()) * len(rows)
                global_step += 1
                bar.update(1)
                if checkpoints is not None and checkpoints.due(global_step):
                    checkpoints.save(
                        TrainState(
                            epoch=epoch,
                            step=step + 1,
                            global_step=global_step,
                            generator_state=epoch_rng,
                            loss_sum=loss_sum,
                            correct=correct,
                            history=history,
                            best_state=best_state,
                            stale=stale,
                            elapsed=elapsed + time.perf_counter() - start,
                        )
                    )
            record = {
                "epoch": epoch,
                "train_loss": float(loss_sum) / n,
                "train_accuracy": float(correct) / n,
                "seconds": time.perf_counter() - epoch_start,
            }
            if val is not None and len(val[0]):
                record["val_loss"], record["val_accuracy"] = _validate(model, val, loss_fn, config, ddp)
            history.epochs.append(record)
            if metrics_file:
                metrics_file.write(json.dumps(record) + "\n")
                metrics_file.flush()
            bar.set_postfix(
                epoch=epoch,
                loss=f"{record['train_loss']:.4f}",
                **({"val_acc": f"{record['val_accuracy']:.4f}"} if "val_accuracy" in record else {}),
            )
            logger.debug("epoch %d: %s", epoch, record)
            if "val_accuracy" not in record:
                continue
            if (
                history.best_val_accuracy is None
                or record["val_accuracy"] > history.best_val_accuracy + config.min_delta
            ):
                history.best_val_accuracy, history.best_epoch = record["val_accuracy"], epoch
                best_state = copy.deepcopy(model.state_dict())
                stale = 0
            else:
                stale += 1
                if config.patience is not None and stale >= config.patience:
                    history.stopped_early = True
                    logger.info("early stop at epoch %d (best %d)", epoch, history.best_epoch)
                    break
    finally:
        bar.close()
        if metrics_file:
            metrics_file.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    history.seconds = elapsed + time.perf_counter() - start
    history.comparisons_per_second = n * len(history.epochs) / max(history.seconds, 1e-9)
    logger.info(
        "trained %d epochs in %.1fs (%.0f comparisons/s), best val accuracy %s",
        len(history.epochs),
        history.seconds,
        history.comparisons_per_second,
        history.best_val_accuracy,
    )
    return history


def _correct(margin: torch.Tensor) -> torch.Tensor:
    """Number of rows ranked right, a tie counting half (``accuracy`` times the row count)."""
    return (margin > 0).sum() + 0.5 * (margin == 0).sum()


def _validate(
    model: PreferenceModel,
    val: tuple[Batch, Tables],
    loss_fn: LossFn,
    config: TrainConfig,
    ddp: DistContext,
) -> tuple[float, float]:
    """Validation loss and accuracy; under torch.distributed each rank scores a shard and the sums add."""
    batch, tables = val
    if not ddp.active:
        margin = predict_margins(model, batch, tables, chunk=config.eval_batch_size)
        return float(loss_fn(margin).mean()), float(accuracy(margin))
    rows = ddp.shard(torch.arange(len(batch)))
    margin = predict_margins(model, batch.take(rows), tables, chunk=config.eval_batch_size)
    sums = torch.stack([loss_fn(margin).double().sum(), _correct(margin).double()])
    ddp.all_reduce_sum(sums)
    return float(sums[0]) / len(batch), float(sums[1]) / len(batch)
