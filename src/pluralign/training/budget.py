"""The step budget: batch size, optimizer steps, learning rates, schedule and evaluation cadence, derived
from the number of training comparisons wherever ``TrainConfig`` leaves them None.

A fit is a number of optimizer steps, not of epochs, so the same defaults work on 12 rows and on 40M:

    batch_size     all rows up to FULL_BATCH_ROWS (full batch), else n / ROWS_PER_STEP_DIVISOR rounded up
                   to a power of two, between FULL_BATCH_ROWS and MAX_BATCH
    steps          the number of passes AUTO_EPOCHS(n) the data needs (many for small data, few for large),
                   turned into steps and kept between MIN_STEPS and MAX_STEPS
    learning rates BASE_LR at batch 1024 (PAL App. D.2's x 2 for the maps and prototypes, x 5 for the
                   users) times sqrt(batch / 1024), kept within LR_SCALE_RANGE (the users' rate lower
                   on small full-batch data, every rate at most 2x on large batches)
    schedule       linear warm-up over WARMUP_SHARE of the steps, then cosine decay to MIN_LR_SHARE
    evaluation     every steps / EVALUATIONS steps; early stopping after ``patience`` evaluations without
                   a better validation score, never before ``min_steps`` (MIN_STEPS_SHARE of the steps)
    batches        runs of GROUP_ROWS rows sharing a prompt when prompts have many rows each and batches
                   are large (the prompt maps g_k then run on batch / GROUP_ROWS prompts a step), else a
                   plain shuffle

Given ``epochs`` (the fit of earlier versions and of the paper's recipes), the budget is epochs x
ceil(n / batch) steps at a constant learning rate, evaluated once per epoch, with patience in epochs: the
same training as before the step budget existed. ``max_steps`` caps either.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

#: up to this many rows, every step sees all of them (full-batch gradient descent)
FULL_BATCH_ROWS = 4096
ROWS_PER_STEP_DIVISOR = 16
MAX_BATCH = 16384
#: passes over n comparisons: AUTO_EPOCHS_SCALE / sqrt(n), kept in [MIN_AUTO_EPOCHS, MAX_AUTO_EPOCHS]
AUTO_EPOCHS_SCALE = 20_000.0
MIN_AUTO_EPOCHS, MAX_AUTO_EPOCHS = 4.0, 500.0
MIN_STEPS, MAX_STEPS = 400, 4000
BASE_BATCH = 1024
#: learning rates at BASE_BATCH: PAL App. D.2's (5e-4, 5e-3, 5e-3) x 2 for the maps and prototypes and x 5
#: for the users' weight logits (each user moves only on the steps that hold one of their rows), as the
#: defaults benchmark's grids on Polis and the reference synthetic data found (docs/defaults.md)
BASE_LR = {"lr_maps": 1e-3, "lr_prototypes": 1e-2, "lr_users": 2.5e-2}
#: the range of sqrt(batch / BASE_BATCH) each rate follows. The users' rate goes down to 0.2x on small
#: (full-batch) data, where every step moves every user: at the larger rate, users of a 12-row set commit
#: to a prototype before the prototypes have found what users share (held-out 0.75 vs 1.0 over 6 seeds)
LR_SCALE_RANGE = {"lr_maps": (1.0, 2.0), "lr_prototypes": (1.0, 2.0), "lr_users": (0.2, 2.0)}
WARMUP_SHARE = 0.05
MIN_LR_SHARE = 0.1
EVALUATIONS = 50
MIN_STEPS_SHARE = 0.25
SCHEDULES = ("cosine", "constant")
#: context-grouped batches (epoch_order): runs of this many rows sharing a prompt, when every prompt has
#: at least GROUP_MIN_ROWS_PER_CONTEXT rows on average and steps hold at least GROUP_MIN_BATCH rows
#: (Polis, 72k rows of 859 statements: 2x faster, held-out 0.805 vs 0.806)
GROUP_ROWS = 8
GROUP_MIN_ROWS_PER_CONTEXT = 32
GROUP_MIN_BATCH = 4096


def auto_batch_size(n: int) -> int:
    """Comparisons per step for ``n`` training comparisons (see the module docstring)."""
    if n <= FULL_BATCH_ROWS:
        return max(n, 1)
    return min(MAX_BATCH, max(FULL_BATCH_ROWS, 2 ** math.ceil(math.log2(n / ROWS_PER_STEP_DIVISOR))))


def auto_epochs(n: int) -> float:
    """Passes over ``n`` comparisons that the step budget aims at."""
    return min(MAX_AUTO_EPOCHS, max(MIN_AUTO_EPOCHS, AUTO_EPOCHS_SCALE / math.sqrt(max(n, 1))))


def lr_scale(batch_size: int, name: str = "lr_maps") -> float:
    """Factor on ``BASE_LR[name]`` for ``batch_size``: sqrt(batch / 1024) within ``LR_SCALE_RANGE[name]``."""
    low, high = LR_SCALE_RANGE[name]
    return min(high, max(low, math.sqrt(batch_size / BASE_BATCH)))


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """The learning rate of optimizer step ``step`` (0-based) as a share of the base rate."""
    if schedule == "constant":
        return 1.0
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return MIN_LR_SHARE + (1.0 - MIN_LR_SHARE) * 0.5 * (1.0 + math.cos(math.pi * progress))


def resolve(config: Any, n: int, n_contexts: int = 1) -> Any:
    """``config`` (a ``TrainConfig``) with every field left None derived for ``n`` training comparisons
    over ``n_contexts`` distinct prompts.

    Deterministic: the same ``config`` and ``n`` give the same budget. ``derived`` (a tuple of field
    names) records what came from the data, so a run can say what it chose."""
    derived: list[str] = []
    values: dict[str, Any] = {}

    def choose(name: str, value: Any) -> Any:
        if getattr(config, name) is None:
            values[name] = value
            derived.append(name)
            return value
        return getattr(config, name)

    batch = choose("batch_size", auto_batch_size(n))
    step_rows = batch * config.grad_accum_steps
    steps_per_epoch = math.ceil(n / step_rows)
    explicit_epochs = config.epochs is not None
    if explicit_epochs:
        steps = config.epochs * steps_per_epoch
        if config.max_steps is not None:
            steps = min(steps, config.max_steps)
    else:
        wanted = math.ceil(auto_epochs(n) * n / step_rows)
        steps = config.max_steps or min(MAX_STEPS, max(MIN_STEPS, wanted))
        choose("epochs", math.ceil(steps / steps_per_epoch))
    values["max_steps"] = steps
    if config.max_steps is None and not explicit_epochs:
        derived.append("max_steps")
    schedule = choose("lr_schedule", "constant" if explicit_epochs else "cosine")
    if schedule not in SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    for name, base in BASE_LR.items():
        choose(name, base * lr_scale(batch, name))
    choose("warmup_steps", 0 if schedule == "constant" else math.ceil(WARMUP_SHARE * steps))
    choose("eval_every", steps_per_epoch if explicit_epochs else max(1, math.ceil(steps / EVALUATIONS)))
    choose("min_steps", 0 if explicit_epochs else math.ceil(MIN_STEPS_SHARE * steps))
    grouped = n_contexts > 1 and n / n_contexts >= GROUP_MIN_ROWS_PER_CONTEXT and batch >= GROUP_MIN_BATCH
    choose("rows_per_context", GROUP_ROWS if grouped else 1)
    values["derived"] = tuple(derived)
    return dataclasses.replace(config, **values)


def describe(settings: Mapping[str, Any], n: int) -> str:
    """One line saying what a resolved config (or a history's ``settings``) does with ``n`` comparisons."""
    auto = set(settings.get("derived", ()))

    def mark(name: str) -> str:
        return " (auto)" if name in auto else ""

    batch, steps = settings["batch_size"], settings["max_steps"]
    return (
        f"{n:,} comparisons: batch {batch:,}{mark('batch_size')}, up to {steps:,} steps{mark('max_steps')}"
        f" ({steps * batch / max(n, 1):.3g} epochs), {settings['lr_schedule']} learning rate (maps "
        f"{settings['lr_maps']:.2g}, prototypes {settings['lr_prototypes']:.2g}, users "
        f"{settings['lr_users']:.2g}){mark('lr_maps')}, evaluation every {settings['eval_every']} steps"
    )
