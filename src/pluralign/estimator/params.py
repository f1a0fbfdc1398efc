"""The estimators' hyperparameters, defined once: name, default, type and help text.

Everything that sets a hyperparameter derives from these tables: the estimators' ``__init__`` signatures
(so ``inspect.signature``, scikit-learn's ``get_params`` / ``clone`` and ``help(PALB)`` see them), the
``TrainConfig`` an estimator trains with (fields matched by name), and the CLI options of ``pluralign
train`` and ``pluralign select-k`` (``--lr-maps`` for ``lr_maps``, the help text below). Adding a
hyperparameter is one line here; a test checks that Python and the CLI agree on every name and default.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

#: groups, in the order ``--help`` and the docs list them
GROUPS = ("model", "training", "encoders", "new users", "run")


@dataclass(frozen=True)
class Param:
    """One hyperparameter. ``type`` is what the CLI parses (``int | None`` accepts ``none``); ``cli``
    False for settings a command derives itself (e.g. the metrics file inside the run directory)."""

    name: str
    default: Any
    type: Any
    help: str
    group: str
    cli: bool = True
    #: extra CLI spellings kept for compatibility (e.g. ``--k``)
    aliases: tuple[str, ...] = ()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


P = Param
TINY_PARAMS: tuple[Param, ...] = (
    P("n_prototypes", 3, int, "Number of prototypes K.", "model", aliases=("--k",)),
    P("dim", 16, int, "Latent dimension d of the maps' output.", "model"),
    P("f_layers", 2, int, "Layers of the item map f (1 = linear).", "model"),
    P("g_layers", 2, int, "Layers of each context map g_k (PAL-B).", "model"),
    P("hidden", None, int | None, "Hidden width of the maps (default: their input width).", "model"),
    P("dropout", 0.0, float, "Dropout in the maps (needs >= 2 layers).", "model"),
    P("residual", False, bool, "Residual hidden layers (the paper's '2-layer MLP with residual').", "model"),
    P("bias", True, bool, "Linear layers with a bias.", "model"),
    P(
        "loss",
        "logistic",
        str,
        "Loss on the margin: logistic, hinge, cumulative, cumulative-mean.",
        "training",
    ),
    P(
        "epochs",
        None,
        int | None,
        "Passes over the data at a constant learning rate (none: a step budget derived from the data).",
        "training",
    ),
    P(
        "batch_size",
        None,
        int | None,
        "Comparisons per optimizer step, over all processes (none: all rows up to 4,096, then about "
        "n / 16, at most 16,384).",
        "training",
    ),
    P(
        "max_steps",
        None,
        int | None,
        "Optimizer steps (none: derived from the data; with --epochs, a cap on them).",
        "training",
    ),
    P(
        "lr_maps",
        None,
        float | None,
        "Learning rate of the maps f and g (none: 1e-3 x sqrt(batch / 1024), 1x to 2x).",
        "training",
    ),
    P(
        "wd_maps",
        1e-3,
        float,
        "Weight decay of the maps' weight matrices (not biases or scales).",
        "training",
    ),
    P(
        "lr_prototypes",
        None,
        float | None,
        "Learning rate of the prototypes (none: 1e-2 x sqrt(batch / 1024), 1x to 2x).",
        "training",
    ),
    P("wd_prototypes", 0.0, float, "Weight decay of the prototypes.", "training"),
    P(
        "lr_users",
        None,
        float | None,
        "Learning rate of the users' weight logits (none: 2.5e-2 x sqrt(batch / 1024), 0.2x to 2x).",
        "training",
    ),
    P("wd_users", 0.0, float, "Weight decay of the users' weight logits.", "training"),
    P(
        "lr_schedule",
        None,
        str | None,
        "cosine (warm-up, then cosine decay to 10%) or constant (none: cosine; constant with --epochs).",
        "training",
    ),
    P(
        "warmup_steps",
        None,
        int | None,
        "Linear warm-up steps of the cosine schedule (none: 5% of the steps).",
        "training",
    ),
    P(
        "eval_every",
        None,
        int | None,
        "Validate every N optimizer steps (none: 50 times per fit; once per epoch with --epochs).",
        "training",
    ),
    P(
        "patience",
        10,
        int | None,
        "Stop after this many evaluations without a better validation score (none: never).",
        "training",
    ),
    P(
        "min_steps",
        None,
        int | None,
        "Early stopping never stops before this many steps (none: a quarter of them; 0 with --epochs).",
        "training",
    ),
    P(
        "val_fraction",
        0.1,
        float,
        "Without validation data, hold out this share of each user's rows for early stopping (0: none; "
        "not with --epochs).",
        "training",
    ),
    P("min_delta", 0.0, float, "Smallest val-accuracy gain that counts as better.", "training"),
    P("max_grad_norm", None, float | None, "Clip the gradient norm to this (none: no clipping).", "training"),
    P(
        "rows_per_context",
        None,
        int | None,
        "Build batches from runs of this many rows sharing a prompt (1: plain shuffle; none: 8 when prompts "
        "have >= 32 rows each and batches >= 4,096 rows, else 1).",
        "training",
    ),
    P("eval_batch_size", 65536, int, "Rows per chunk when scoring validation data.", "training"),
    P("seed", 0, int, "Random seed (initialisation, batch order, few-shot).", "training"),
    P(
        "encoder",
        None,
        str | None,
        "Sentence-transformers/HF model directory, or a .npz/.parquet file of precomputed vectors keyed "
        "by text. Default: all-MiniLM-L6-v2 (offline).",
        "encoders",
    ),
    P(
        "context_encoder",
        None,
        str | None,
        "Encoder of the prompts when it differs from --encoder (e.g. prompt vectors beside image vectors).",
        "encoders",
    ),
    P("cache_dir", None, Path | None, "Embedding cache directory.", "encoders", aliases=("--cache",)),
    P(
        "adapt_ridge",
        1.0,
        float,
        "Few-shot: pull of a new user's weights toward the zero-shot prior.",
        "new users",
    ),
    P("adapt_steps", 300, int, "Few-shot: solver iterations (PAL-A; PAL-B is solved exactly).", "new users"),
    P(
        "adapt_method",
        "map",
        str,
        "Few-shot: map (start at the zero-shot weights, ridge toward them) or paper (random start, no "
        "ridge: PAL App. D.1).",
        "new users",
    ),
    P("progress", False, bool, "Progress bars on stderr.", "run", cli=False),
    P("metrics_path", None, Path | None, "Write per-epoch metrics as JSON lines here.", "run", cli=False),
    P("checkpoint_dir", None, Path | None, "Directory of resumable checkpoints.", "run", cli=False),
    P("checkpoint_every", None, int | None, "Checkpoint every N optimizer steps (resumable).", "run"),
    P("checkpoint_seconds", None, float | None, "Checkpoint every S seconds (resumable).", "run"),
)

#: PAL-Large's own hyperparameters (the text encoder trained with the heads)
LARGE_EXTRA: tuple[Param, ...] = (
    P("encoder_lr", 1e-5, float, "PAL-Large: learning rate of the text encoder.", "encoders"),
    P("encoder_wd", 0.0, float, "PAL-Large: weight decay of the text encoder.", "encoders"),
    P("max_length", 128, int | None, "PAL-Large: token limit per text (none: the model's).", "encoders"),
    P("grad_accum_steps", 1, int, "PAL-Large: micro-batches per optimizer step.", "training"),
    P("precision", "auto", str, "PAL-Large: auto, fp32, bf16 or fp16 autocast.", "training"),
    P("device", "cpu", str, "PAL-Large: torch device.", "training"),
)

#: PAL-Large's defaults where they differ from Tiny's (PAL App. D.3, Table 4)
LARGE_DEFAULTS: dict[str, Any] = {
    "epochs": 1,
    "batch_size": 16,
    "lr_maps": 1e-4,
    "wd_maps": 1e-2,
    "lr_prototypes": 1e-4,
    "lr_users": 5e-3,
    "patience": None,
    "max_grad_norm": 1.0,
    "val_fraction": 0.0,
}


def with_defaults(params: Sequence[Param], **defaults: Any) -> tuple[Param, ...]:
    """``params`` with some defaults changed."""
    unknown = set(defaults) - {p.name for p in params}
    if unknown:
        raise KeyError(f"no such hyperparameter(s): {', '.join(sorted(unknown))}")
    return tuple(replace(p, default=defaults[p.name]) if p.name in defaults else p for p in params)


LARGE_PARAMS: tuple[Param, ...] = (*with_defaults(TINY_PARAMS, **LARGE_DEFAULTS), *LARGE_EXTRA)
BTL_PARAMS: tuple[Param, ...] = with_defaults(TINY_PARAMS, n_prototypes=1)


def without(params: Sequence[Param], *names: str) -> tuple[Param, ...]:
    """``params`` but ``names`` (for a class where they would mean nothing)."""
    unknown = set(names) - {p.name for p in params}
    if unknown:
        raise KeyError(f"no such hyperparameter(s): {', '.join(sorted(unknown))}")
    return tuple(p for p in params if p.name not in names)


#: the peer methods' own hyperparameter (pluralign.estimator.peers)
PEER_EXTRA: tuple[Param, ...] = (
    P(
        "user_l2",
        1.0,
        float,
        "MF, per-user: L2 penalty on each user's free vector (user_l2 / 2 * ||u||^2 per user, as "
        "scikit-learn's C = 1 / user_l2), in training and as the ridge of a new user's few-shot fit.",
        "model",
    ),
)
#: TINY_PARAMS a map-free or simplex-free peer has no use for (its tables leave them out, not ignore them)
_MAPS = ("dim", "f_layers", "g_layers", "hidden", "dropout", "residual", "bias", "lr_maps", "wd_maps")
_SIMPLEX_ADAPT = ("adapt_ridge", "adapt_steps", "adapt_method")
_PROTOTYPES = ("lr_prototypes", "wd_prototypes")
#: LoRe: a linear basis V (the "prototypes" group) and simplex weights, solved exactly for new users. V's
#: rate is fixed at 0.1: the budget's prototype rate (0.01-0.02, for PAL's prototypes behind MLP maps) leaves
#: the linear basis still improving at the last step (seen accuracy, seed 0, K = 3: pooled Polis 0.729 at
#: the budget's rate vs 0.758 at 0.1, PAL-B synthetic 0.850 vs 0.861, PAL-A synthetic 0.690 vs 0.692)
LORE_PARAMS: tuple[Param, ...] = with_defaults(
    without(TINY_PARAMS, *_MAPS, "loss", "adapt_steps"), lr_prototypes=0.1
)
#: matrix factorisation: maps b and g (f_layers), free user vectors
MF_PARAMS: tuple[Param, ...] = (
    *without(TINY_PARAMS, "dim", "g_layers", "loss", *_PROTOTYPES, *_SIMPLEX_ADAPT),
    *PEER_EXTRA,
)
#: per-user linear rewards: nothing shared, only the users' vectors. Their rate is fixed at 0.3: the budget's
#: users' rate (for PAL's weight logits, 0.035 on 2,000 full-batch rows) leaves a single user's logistic
#: regression unconverged in the default steps (largest coefficient error 0.44 vs 5e-6 at 0.3; D = 8)
PER_USER_PARAMS: tuple[Param, ...] = (
    *with_defaults(
        without(TINY_PARAMS, "n_prototypes", *_MAPS, "loss", *_PROTOTYPES, *_SIMPLEX_ADAPT),
        lr_users=0.3,
    ),
    *PEER_EXTRA,
)

#: parameters that may be given by position (the rest are keyword-only)
POSITIONAL = ("n_prototypes", "dim")


def signature(params: Sequence[Param]) -> inspect.Signature:
    """``(self, n_prototypes=3, dim=16, *, f_layers=2, ...)`` for a table of parameters."""
    kinds = {True: inspect.Parameter.POSITIONAL_OR_KEYWORD, False: inspect.Parameter.KEYWORD_ONLY}
    return inspect.Signature(
        [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        + [
            inspect.Parameter(p.name, kinds[p.name in POSITIONAL], default=p.default, annotation=p.type)
            for p in params
        ]
    )


def make_init(params: Sequence[Param]) -> Callable[..., None]:
    """An ``__init__`` that stores each hyperparameter as given (scikit-learn's convention: no
    derivation here; values are validated where they are used) and then calls ``self.check_init()``.
    Unknown names are a TypeError, as for any Python function."""
    sig = signature(params)

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        bound = sig.bind(self, *args, **kwargs)
        bound.apply_defaults()
        for name, value in bound.arguments.items():
            if name != "self":
                setattr(self, name, value)
        self.check_init()

    __init__.__signature__ = sig  # type: ignore[attr-defined]
    __init__.__doc__ = "Hyperparameters:\n\n" + "\n".join(
        f"- ``{p.name}`` ({p.default!r}): {p.help}" for p in params
    )
    return __init__


def by_name(params: Sequence[Param]) -> dict[str, Param]:
    return {p.name: p for p in params}


def dataclass_params(cls: type, group: str) -> tuple[Param, ...]:
    """The fields of a config dataclass as :class:`Param` rows, for commands whose options come from a
    config rather than an estimator (``pluralign rl train``): each field's ``metadata["help"]`` is its help
    text, ``metadata["cli"] = False`` keeps it off the command line. The dataclass stays the one source."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata:
            raise TypeError(f"{cls.__name__}.{f.name} has no help text (field metadata 'help')")
        rows.append(
            Param(f.name, f.default, hints[f.name], f.metadata["help"], group, f.metadata.get("cli", True))
        )
    return tuple(rows)
