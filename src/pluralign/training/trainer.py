"""The fit loop of every model: a step budget derived from the data (training/budget.py), index-based
shuffled batches, AdamW with a learning rate per parameter group (training/optim.py) on a warm-up + cosine
schedule, validation every N steps with early stopping, tqdm progress and the evaluations' metrics as JSON
lines, data parallel under torch.distributed (training/distributed.py).

What varies between models is how a step turns its rows into a loss, a ``Feed``:

    TableFeed            PAL-Tiny: margins over fixed tables of item and context vectors (plus the
                         model's ``penalty``, e.g. the L2 on free user vectors of the peer methods)
    large.SourceFeed     PAL-Large: the rows' texts re-embedded by the trainable tower on every step
                         (its ``module`` trains too, with its own learning rate); also the per-prefix
                         (cumulative) loss over prefix tables, for Tiny and Large

A step is ``grad_accum_steps`` micro-batches (optionally under autocast). Checkpointing hangs off the loop
as a ``Callback`` (``training.resume.Checkpointer``); this module does not import it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from pluralign.models.base import Batch, PreferenceModel, Tables
from pluralign.training.budget import describe, lr_factor, resolve
from pluralign.training.config import Callback, History, Run, TrainConfig, TrainState
from pluralign.training.distributed import DistContext
from pluralign.training.losses import LossFn, get_loss
from pluralign.training.optim import make_optimizer

__all__ = [
    "Feed",
    "History",
    "TableFeed",
    "TrainConfig",
    "autocast_dtype",
    "epoch_order",
    "fit",
    "make_optimizer",
    "predict_margins",
    "train_loop",
]

logger = logging.getLogger(__name__)

#: validation data: a batch and its tables, or a function giving them (PAL-Large embeds with the tower)
ValData = tuple[Batch, Tables | Callable[[], Tables]]


class Feed(Protocol):
    """How a step gets its vectors and loss."""

    #: a trainable encoder trained with the model (its own parameter group), or None
    module: nn.Module | None

    def rows_loss(
        self, model: PreferenceModel, rows: Batch, loss_fn: LossFn
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed loss of ``rows`` and their full-response margins (detached, for the accuracy)."""
        ...

    def fingerprint_tensors(self) -> Iterable[torch.Tensor]:
        """Tensors that identify the training data beyond the index arrays (for resume checks)."""
        ...


class TableFeed:
    """PAL-Tiny: fixed tables of item and context vectors."""

    module = None

    def __init__(self, tables: Tables) -> None:
        self.tables = tables

    def rows_loss(
        self, model: PreferenceModel, rows: Batch, loss_fn: LossFn
    ) -> tuple[torch.Tensor, torch.Tensor]:
        margin = model.margins(rows, self.tables)
        return loss_fn(margin).sum() + model.penalty(rows), margin.detach()

    def fingerprint_tensors(self) -> Iterable[torch.Tensor]:
        return table_sample(self.tables)


def table_sample(tables: Tables) -> list[torch.Tensor]:
    """Each table's shape and up to 256 evenly spaced rows (enough to notice other vectors)."""
    out = []
    for table in tables:
        out.append(torch.tensor(table.shape))
        if len(table):
            out.append(table[torch.linspace(0, len(table) - 1, min(len(table), 256)).long()].cpu())
    return out


def data_fingerprint(parts: Iterable[torch.Tensor | None]) -> str:
    """sha256 of tensors (shape, dtype and values), None marking an absent part."""
    digest = hashlib.sha256()
    for tensor in parts:
        if tensor is None:
            digest.update(b"none")
            continue
        digest.update(str((tuple(tensor.shape), str(tensor.dtype))).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


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

    Plain shuffle for ``rows_per_context`` None or 1. With ``rows_per_context = r``, a batch is made of
    runs of r random rows that share a context, from about B / r random contexts, so maps of the context
    (PAL-B's g_k) run on B / r contexts per step instead of nearly all of them; the batches themselves
    come in random order. Worth it when rows far outnumber contexts (Persona: 40M rows, 4,000 questions).
    """
    n = len(context)
    shuffled = torch.randperm(n, generator=generator)
    if rows_per_context is None or rows_per_context == 1:
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


def fit(
    model: PreferenceModel,
    train: tuple[Batch, Tables],
    val: tuple[Batch, Tables] | None = None,
    config: TrainConfig | None = None,
    callbacks: Sequence[Callback] = (),
) -> History:
    """Train ``model`` in place on fixed tables; with ``val``, keep the weights of the best validation
    epoch. ``callbacks``: e.g. ``training.resume.checkpoint_callbacks(config)`` for resumable checkpoints."""
    device = (config or TrainConfig()).device
    tables = Tables(*(t.to(device) for t in train[1]))
    return train_loop(model, train[0], TableFeed(tables), val, config, callbacks)


def _correct(margin: torch.Tensor) -> torch.Tensor:
    """Number of rows ranked right, a tie counting half (``accuracy`` times the row count)."""
    return (margin > 0).sum() + 0.5 * (margin == 0).sum()


def train_loop(
    model: PreferenceModel,
    batch: Batch,
    feed: Feed,
    val: ValData | None = None,
    config: TrainConfig | None = None,
    callbacks: Sequence[Callback] = (),
) -> History:
    """Train ``model`` (and ``feed.module``) in place on the rows of ``batch``; see the module docstring.

    The settings ``config`` leaves None are derived from the number of rows (``training.budget``). With
    ``val`` the weights of the best validation step are kept. Under torch.distributed every rank runs its
    shard of each step's rows and the gradients are summed over ranks before the optimizer step.
    ``config.checkpoint_dir`` needs a callback that checkpoints (``training.resume.Checkpointer``).
    """
    config = config or TrainConfig()
    if config.checkpoint_dir and not any(cb.checkpoints for cb in callbacks):
        raise ValueError(
            "config.checkpoint_dir is set but no callback checkpoints: pass "
            "callbacks=pluralign.training.resume.checkpoint_callbacks(config)"
        )
    loss_fn = get_loss(config.loss)
    n = len(batch)
    if n == 0:
        raise ValueError("no training comparisons")
    config = resolve(config, n, n_contexts=int(torch.unique(batch.context).numel()))
    settings = settings_of(config)
    plan = describe(settings, n)
    logger.info("training on %s", plan)
    device = torch.device(config.device)
    amp_dtype = autocast_dtype(config.precision, config.device)
    modules = {"model": model, **({"encoder": feed.module} if feed.module is not None else {})}
    ddp = DistContext.current()
    for module in modules.values():
        module.to(device)
        ddp.broadcast_parameters(module)
    batch = Batch(*(t.to(device) for t in batch))
    optimizer = make_optimizer(model, config, feed.module)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    lazy = any(group["lazy_rows"] for group in optimizer.param_groups)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)
    step_rows = config.batch_size * config.grad_accum_steps
    steps_per_epoch = math.ceil(n / step_rows)
    total = config.max_steps
    n_epochs = math.ceil(total / steps_per_epoch)
    generator = torch.Generator().manual_seed(config.seed)
    fingerprint = data_fingerprint([*batch, *feed.fingerprint_tensors(), *_val_fingerprint(val)])
    zero = torch.zeros((), dtype=torch.float64, device=device)
    history = History(steps_per_epoch=steps_per_epoch, settings=settings, notes=[plan])
    state = TrainState(
        epoch=1,
        step=0,
        global_step=0,
        generator_state=generator.get_state(),
        loss_sum=zero.clone(),
        correct=zero.clone(),
        history=history,
        best_state=None,
        stale=0,
        elapsed=0.0,
    )
    run = Run(config, modules, optimizer, scaler, ddp, fingerprint, state)
    for cb in callbacks:
        cb.on_train_begin(run)
    state = run.state
    state.loss_sum, state.correct = state.loss_sum.to(device), state.correct.to(device)
    history = state.history
    resumed_epoch, resumed_step = state.epoch, state.step
    generator.set_state(state.generator_state)
    # the learning rate of step s is the base rate times lr_factor(s); a resumed run picks up at its step
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_factor(s, total, config.warmup_steps, config.lr_schedule),
        last_epoch=state.global_step - 1,
    )
    metrics_file = None
    if config.metrics_path and ddp.is_main:
        Path(config.metrics_path).parent.mkdir(parents=True, exist_ok=True)
        metrics_file = open(config.metrics_path, "w")  # noqa: SIM115 - closed in finally
        metrics_file.writelines(json.dumps(record) + "\n" for record in history.records)  # resumed ones
    bar = tqdm(
        total=total,
        initial=min(state.global_step, total),
        disable=not config.progress or not ddp.is_main,
        unit="step",
        leave=False,
    )
    autocast = (
        (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype is not None else nullcontext
    )
    window_start = run.seconds()
    stop = False
    try:
        for epoch in range(resumed_epoch, n_epochs + 1):
            for module in modules.values():
                module.train()
            # a checkpoint stores this state and regenerates the epoch's order from it
            state.epoch, state.generator_state = epoch, generator.get_state()
            order = epoch_order(batch.context.cpu(), step_rows, config.rows_per_context, generator)
            if epoch != resumed_epoch or resumed_step == 0:
                state.step = 0
            while state.step < steps_per_epoch and state.global_step < total:
                global_rows = order[state.step * step_rows : (state.step + 1) * step_rows].to(device)
                local_rows = ddp.shard(global_rows)  # all of them in one process
                optimizer.zero_grad(set_to_none=True)
                step_loss, step_correct = zero.clone(), zero.clone()
                for m in range(0, len(local_rows), config.batch_size):
                    rows = batch.take(local_rows[m : m + config.batch_size])
                    with autocast():
                        loss, margin = feed.rows_loss(model, rows, loss_fn)
                    # each micro-batch's share of the step's mean loss (over all ranks' rows)
                    scaler.scale(loss / len(global_rows)).backward()
                    step_loss += loss.detach().double()
                    step_correct += _correct(margin.float()).double()
                if ddp.active:
                    extras = torch.stack([step_loss, step_correct]).float()
                    step_loss, step_correct = ddp.all_reduce_gradients(params, extras=extras).double()
                state.loss_sum += step_loss
                state.correct += step_correct
                state.window_rows += len(global_rows)
                if config.max_grad_norm is not None:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                # lazy user table: only the users of this step's rows (on every rank) move
                touched = torch.unique(batch.user[global_rows]) if lazy else None
                scaler.step(optimizer, rows=touched)
                scaler.update()
                scheduler.step()
                state.step += 1
                state.global_step += 1
                bar.update(1)
                if state.global_step % config.eval_every == 0 or state.global_step == total:
                    record = _record(run, val, loss_fn, window_start)
                    if metrics_file:
                        metrics_file.write(json.dumps(record) + "\n")
                        metrics_file.flush()
                    bar.set_postfix(
                        loss=f"{record['train_loss']:.4f}",
                        **({"val_acc": f"{record['val_accuracy']:.4f}"} if "val_accuracy" in record else {}),
                    )
                    stop = _early_stopping(state, record, modules, config)
                    for cb in callbacks:
                        cb.on_evaluate(run)
                    window_start = run.seconds()  # (validation restores the modules' train mode)
                for cb in callbacks:
                    cb.on_step_end(run)
                if stop:
                    break
            if stop or state.global_step >= total:
                break
    finally:
        bar.close()
        if metrics_file:
            metrics_file.close()
    if state.best_state is not None:
        for name, module in modules.items():
            module.load_state_dict(state.best_state[name])
    for module in modules.values():
        module.eval()
    history.seconds = run.seconds()
    history.steps = state.global_step
    history.comparisons_per_second = sum(r["rows"] for r in history.records) / max(history.seconds, 1e-9)
    logger.info(
        "trained %d steps (%.3g epochs) in %.1fs (%.0f comparisons/s), best val accuracy %s",
        state.global_step,
        state.global_step / steps_per_epoch,
        history.seconds,
        history.comparisons_per_second,
        history.best_val_accuracy,
    )
    return history


def settings_of(config: TrainConfig) -> dict:
    """The resolved settings a history records (what the step budget chose, and what was given)."""
    names = (
        "batch_size",
        "max_steps",
        "epochs",
        "lr_maps",
        "lr_prototypes",
        "lr_users",
        "lr_schedule",
        "warmup_steps",
        "eval_every",
        "patience",
        "min_steps",
        "rows_per_context",
    )
    return {**{name: getattr(config, name) for name in names}, "derived": list(config.derived)}


def _record(run: Run, val: ValData | None, loss_fn: LossFn, window_start: float) -> dict:
    """The evaluation record of the rows trained on since the last one; resets the running sums."""
    state, config = run.state, run.config
    rows = max(state.window_rows, 1)
    record = {
        "step": state.global_step,
        "epoch": state.global_step / state.history.steps_per_epoch,
        "train_loss": float(state.loss_sum) / rows,
        "train_accuracy": float(state.correct) / rows,
        "rows": state.window_rows,
        "lr_factor": run.optimizer.param_groups[0]["lr"] / run.optimizer.param_groups[0]["initial_lr"],
        "seconds": run.seconds() - window_start,
    }
    if val is not None and len(val[0]):
        record["val_loss"], record["val_accuracy"] = _validate(
            run.modules["model"], val, loss_fn, config, run.ddp
        )
    state.loss_sum.zero_()
    state.correct.zero_()
    state.window_rows = 0
    state.history.records.append(record)
    logger.debug("step %d: %s", state.global_step, record)
    return record


def _early_stopping(
    state: TrainState, record: dict, modules: dict[str, nn.Module], config: TrainConfig
) -> bool:
    """Keep the best validation step's weights; True when patience ran out (never before min_steps).

    Better: a higher validation accuracy (by more than ``min_delta``), or the same accuracy at a lower
    validation loss (small validation sets tie often; the loss still tells the fits apart)."""
    history = state.history
    if "val_accuracy" not in record:
        return False
    acc, loss = record["val_accuracy"], record["val_loss"]
    best = history.best_val_accuracy
    if (
        best is None
        or acc > best + config.min_delta
        or (acc >= best and loss < (history.best_val_loss or math.inf))
    ):
        history.best_val_accuracy, history.best_val_loss = acc, loss
        history.best_step = record["step"]
        state.best_state = {name: copy.deepcopy(m.state_dict()) for name, m in modules.items()}
        state.stale = 0
        return False
    state.stale += 1
    if (
        config.patience is not None
        and state.stale >= config.patience
        and state.global_step >= config.min_steps
    ):
        history.stopped_early = True
        logger.info("early stop at step %d (best %d)", record["step"], history.best_step)
        return True
    return False


def _val_fingerprint(val: ValData | None) -> list[torch.Tensor | None]:
    if val is None:
        return [None]
    batch, tables = val
    return [*batch, *(table_sample(tables) if isinstance(tables, Tables) else [])]


def _validate(
    model: PreferenceModel, val: ValData, loss_fn: LossFn, config: TrainConfig, ddp: DistContext
) -> tuple[float, float]:
    """Validation loss and accuracy; under torch.distributed each rank scores a shard and the sums add."""
    batch, tables = val
    if not isinstance(tables, Tables):
        tables = tables()
    device = next(model.parameters()).device
    tables = Tables(*(t.to(device) for t in tables))
    rows = ddp.shard(torch.arange(len(batch)))
    part = Batch(*(t[rows].to(device) for t in batch))
    margin = predict_margins(model, part, tables, chunk=config.eval_batch_size).float()
    sums = torch.stack([loss_fn(margin).double().sum(), _correct(margin).double()])
    ddp.all_reduce_sum(sums)
    return float(sums[0]) / len(batch), float(sums[1]) / len(batch)
