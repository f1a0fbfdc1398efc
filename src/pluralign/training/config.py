"""What the fit loop (training/trainer.py) takes and gives, shared with its callbacks (training/resume.py).

    TrainConfig  the optimization settings
    History      what a fit did, evaluation by evaluation
    TrainState   where a fit is (epoch, step, running sums, early-stopping state): what a checkpoint holds
    Run          the live objects of one fit (modules, optimizer, ...) that a callback may read and restore
    Callback     hooks the loop calls at the start, after every optimizer step and after every evaluation

Both the loop and the checkpointing import this module, not each other: checkpointing is a callback.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from pluralign.training.budget import SCHEDULES
from pluralign.training.distributed import DistContext
from pluralign.training.losses import get_loss

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class TrainConfig:
    """Optimization settings. Every field left None is derived from the number of training comparisons
    by ``pluralign.training.budget.resolve`` (batch size, steps, learning rates, schedule, evaluation
    cadence); the learning rates follow PAL App. D.2 (maps 5e-4 with weight decay 1e-3, prototypes and
    user weights 5e-3) at batch 1024, scaled up for larger batches.

    A step is ``grad_accum_steps`` micro-batches of ``batch_size`` rows. Given ``epochs``, a fit is that
    many passes at a constant learning rate, evaluated once per epoch (the fit of earlier versions);
    ``max_steps`` caps the optimizer steps either way. ``patience`` counts evaluations (every
    ``eval_every`` steps) without a better validation score, and never stops a fit before ``min_steps``.
    ``encoder_lr``/``encoder_wd`` are the trainable text tower's (PAL-Large). ``precision``: ``auto`` is
    bf16 autocast on CUDA devices that support it (else fp16 with loss scaling) and fp32 on CPU; ``bf16``
    also works on CPU (fast only with AVX512-BF16/AMX).
    """

    loss: str = "logistic"
    #: passes over the data (None: the step budget decides)
    epochs: int | None = None
    batch_size: int | None = None
    lr_maps: float | None = None
    wd_maps: float = 1e-3
    lr_prototypes: float | None = None
    wd_prototypes: float = 0.0
    lr_users: float | None = None
    wd_users: float = 0.0
    #: "cosine" (linear warm-up, cosine decay) or "constant"; None: cosine, or constant with ``epochs``
    lr_schedule: str | None = None
    warmup_steps: int | None = None
    #: validate every this many optimizer steps
    eval_every: int | None = None
    #: stop after this many evaluations without a better validation score (None: never stop early)
    patience: int | None = 10
    min_delta: float = 0.0
    #: early stopping never ends a fit before this many steps
    min_steps: int | None = None
    max_grad_norm: float | None = None
    #: build each batch from runs of this many rows sharing a context (1: plain shuffle; None: derived from
    #: the data, see training.budget); see trainer.epoch_order
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
    # --- micro-batching, mixed precision, device and the trainable encoder (PAL-Large) ---
    encoder_lr: float = 1e-5
    encoder_wd: float = 0.0
    grad_accum_steps: int = 1
    precision: str = "auto"
    device: str = "cpu"
    max_steps: int | None = None
    #: the fields ``budget.resolve`` derived from the data (set by it; empty in a config as given)
    derived: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        get_loss(self.loss)
        for name in ("eval_batch_size", "grad_accum_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr_maps", "lr_prototypes", "lr_users", "encoder_lr"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in (
            "epochs",
            "batch_size",
            "rows_per_context",
            "patience",
            "checkpoint_every",
            "max_steps",
            "eval_every",
        ):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {getattr(self, name)}")
        for name in ("warmup_steps", "min_steps"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 or None, got {getattr(self, name)}")
        if self.lr_schedule is not None and self.lr_schedule not in SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(SCHEDULES)}, got {self.lr_schedule!r}")
        if self.checkpoint_seconds is not None and not self.checkpoint_seconds > 0:
            raise ValueError(f"checkpoint_seconds must be > 0 or None, got {self.checkpoint_seconds}")
        if (self.checkpoint_every or self.checkpoint_seconds or self.resume) and not self.checkpoint_dir:
            raise ValueError("checkpoint_every, checkpoint_seconds and resume need a checkpoint_dir")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        self.derived = tuple(self.derived)


@dataclass
class History:
    """What a fit did. ``records``: one per evaluation (every ``eval_every`` steps and at the end) with
    ``step``, ``epoch`` (steps / steps per epoch), the training loss and accuracy over the rows since the
    previous record (``rows`` of them), the learning-rate factor, seconds, and the validation loss and
    accuracy when there is validation data."""

    records: list[dict] = field(default_factory=list)
    #: optimizer step whose weights were kept (the best validation score), None without validation
    best_step: int | None = None
    best_val_accuracy: float | None = None
    best_val_loss: float | None = None
    stopped_early: bool = False
    seconds: float = 0.0
    comparisons_per_second: float = 0.0
    #: optimizer steps in one epoch over the training data
    steps_per_epoch: int | None = None
    #: optimizer steps done
    steps: int = 0
    #: the settings the fit ran with (``budget.resolve``'s choices among them, named in ``derived``)
    settings: dict = field(default_factory=dict)
    #: where the validation data came from: "given", "held out" (a share of each user's rows) or None
    validation: str | None = None
    #: what a user should read about the fit: the budget it chose, where its validation rows came from
    notes: list[str] = field(default_factory=list)

    @property
    def epochs(self) -> list[dict]:
        """``records`` under its name of earlier versions (one record per epoch there)."""
        return self.records

    @property
    def best_epoch(self) -> float | None:
        """The epoch (fractional) of ``best_step``."""
        if self.best_step is None or not self.steps_per_epoch:
            return None
        return self.best_step / self.steps_per_epoch


@dataclass
class TrainState:
    """Where a fit loop is: ``step`` steps of ``epoch`` (1-based) are done, ``global_step`` in all."""

    epoch: int
    step: int
    global_step: int
    #: state of the shuffling generator at the start of ``epoch`` (its order is regenerated from it)
    generator_state: torch.Tensor
    #: running loss sum and number of rows ranked right since the last evaluation (float64)
    loss_sum: torch.Tensor
    correct: torch.Tensor
    history: History
    #: the best validation step's weights: module name ("model", "encoder") -> state dict
    best_state: dict[str, dict[str, torch.Tensor]] | None
    #: evaluations since the best validation score (early stopping)
    stale: int
    #: training seconds before this process (a resumed run adds its own)
    elapsed: float
    #: rows trained on since the last evaluation
    window_rows: int = 0


@dataclass
class Run:
    """One fit's live objects: what a callback saves (and restores into, on resume)."""

    config: TrainConfig
    #: the trained modules by name: "model" and, for PAL-Large, "encoder" (the text tower)
    modules: dict[str, nn.Module]
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ddp: DistContext
    #: identifies the training and validation data (a resumed run must see the same)
    fingerprint: str
    state: TrainState
    #: ``time.perf_counter()`` when this process's part of the fit began
    started: float = field(default_factory=time.perf_counter)

    def seconds(self) -> float:
        """Training seconds so far, over every process that worked on this fit (resumes add up)."""
        return self.state.elapsed + time.perf_counter() - self.started


class Callback:
    """Hooks of the fit loop (each a no-op here; override what you need). ``on_train_begin`` may replace
    ``run.state`` (resume). ``checkpoints``: this callback writes resumable checkpoints (the loop refuses a
    ``config.checkpoint_dir`` that no callback serves). On a step that evaluates, ``on_evaluate`` runs
    before ``on_step_end``."""

    checkpoints: bool = False

    def on_train_begin(self, run: Run) -> None:
        """Before the first step (after the optimizer is built)."""

    def on_step_end(self, run: Run) -> None:
        """After each optimizer step; ``run.state`` counts it."""

    def on_evaluate(self, run: Run) -> None:
        """After each evaluation's record (and early-stopping update) is in ``run.state.history``."""
