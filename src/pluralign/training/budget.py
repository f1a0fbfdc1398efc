"""The step budget: batch size, optimizer steps, learning rates, schedule and evaluation cadence, derived
from the number of training comparisons wherever ``TrainConfig`` leaves them None.

A fit is a number of optimizer steps, not of epochs, so the same defaults work on 12 rows and on 40M:

    batch_size     all rows up to FULL_BATCH_ROWS (full batch), else n / ROWS_PER_STEP_DIVISOR rounded up
                   to a power of two, between FULL_BATCH_ROWS and MAX_BATCH
    steps          the number of passes AUTO_EPOCHS(n) the data needs (many for small data, few for large),
                   turned into steps and kept between MIN_STEPS and MAX_STEPS
    learning rates the paper's (App. D.2: maps 5e-4, prototypes and users 5e-3, at batch 1024) times
                   sqrt(batch / 1024), kept between 1x and MAX_LR_SCALE x (larger batches, less noise)
    schedule       linear warm-up over WARMUP_SHARE of the steps, then cosine decay to MIN_LR_SHARE
    evaluation     every steps / EVALUATIONS steps; early stopping after ``patience`` evaluations without
                   a better validation score, never before ``min_steps`` (MIN_STEPS_SHARE of the steps)

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
#: the paper's learning rates at BASE_BATCH (App. D.2)
BASE_LR = {"lr_maps": 5e-4, "lr_prototypes": 5e-3, "lr_users": 5e-3}
MAX_LR_SCALE = 4.0
WARMUP_SHARE = 0.05
MIN_LR_SHARE = 0.1
EVALUATIONS = 50
MIN_STEPS_SHARE = 0.25
SCHEDULES = ("cosine", "constant")


def auto_batch_size(n: int) -> int:
    """Comparisons per step for ``n`` training comparisons (see the module docstring)."""
    if n <= FULL_BATCH_ROWS:
        return max(n, 1)
    return min(MAX_BATCH, max(FULL_BATCH_ROWS, 2 ** math.ceil(math.log2(n / ROWS_PER_STEP_DIVISOR))))


def auto_epochs(n: int) -> float:
    """Passes over ``n`` comparisons that the step budget aims at."""
    return min(MAX_AUTO_EPOCHS, max(MIN_AUTO_EPOCHS, AUTO_EPOCHS_SCALE / math.sqrt(max(n, 1))))


def lr_scale(batch_size: int) -> float:
    """Factor on the paper's learning rates for ``batch_size``: sqrt(batch / 1024) in [1, MAX_LR_SCALE]."""
    return min(MAX_LR_SCALE, max(1.0, math.sqrt(batch_size / BASE_BATCH)))


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """The learning rate of optimizer step ``step`` (0-based) as a share of the base rate."""
    if schedule == "constant":
        return 1.0
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return MIN_LR_SHARE + (1.0 - MIN_LR_SHARE) * 0.5 * (1.0 + math.cos(math.pi * progress))


def resolve(config: Any, n: int) -> Any:
    """``config`` (a ``TrainConfig``) with every field left None derived for ``n`` training comparisons.

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
        choose(name, base * lr_scale(batch))
    choose("warmup_steps", 0 if schedule == "constant" else math.ceil(WARMUP_SHARE * steps))
    choose("eval_every", steps_per_epoch if explicit_epochs else max(1, math.ceil(steps / EVALUATIONS)))
    choose("min_steps", 0 if explicit_epochs else math.ceil(MIN_STEPS_SHARE * steps))
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
