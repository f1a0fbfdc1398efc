"""Growing prototypes on a fitted estimator (``PALEstimator.grow``): detect, train, commit.

The method is described in ``pluralign.training.growth`` (detection rule, frozen training of the new
prototypes, blockwise model); this module runs it on an estimator's data: few-shot cross-validation of new
and reference users (detect), training the new prototypes on the flagged users (train), and a new
estimator holding the grown model with every new user added (commit). The estimator grown from is never
modified.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from pluralign.data.comparisons import PreferenceData
from pluralign.data.splits import rank_within_user, split_per_user, take_per_user
from pluralign.errors import DataError, PluralignError
from pluralign.models.base import Batch, PreferenceModel
from pluralign.models.pal_a import PALAModel
from pluralign.models.pal_b import PALBModel
from pluralign.training.adaptation import fit_user_weights, weights_to_logits
from pluralign.training.budget import auto_batch_size
from pluralign.training.growth import (
    DetectionRule,
    GrowReport,
    NothingToGrow,
    accuracy_of,
    add_prototypes,
    flag_users,
    frozen_names,
    population_stats,
)
from pluralign.training.trainer import fit, predict_margins

if TYPE_CHECKING:
    from pluralign.estimator.base import PALEstimator

logger = logging.getLogger(__name__)


def _fit_weights(
    est: PALEstimator, model: PreferenceModel, parts: list[tuple[np.ndarray, PreferenceData]], n_users: int
) -> list[torch.Tensor]:
    """Few-shot weights [n_users, K] from each part (per-row user indices 0..n_users-1, rows of one table),
    as ``est.fit_weights`` fits them, in one batched fit (user u of part p is pseudo-user p * n_users + u)."""
    columns = zip(
        *[
            (users + p * n_users, part.context, part.chosen, part.rejected)
            for p, (users, part) in enumerate(parts)
        ],
        strict=True,
    )
    batch = Batch(*(torch.from_numpy(np.concatenate(column).astype(np.int64)) for column in columns))
    prior = est.zero_shot_weights_.double()
    if model.n_prototypes > len(prior):  # a grown model: the zero-shot weights are 0 on the new prototypes
        prior = torch.cat([prior, torch.zeros(model.n_prototypes - len(prior), dtype=torch.float64)])
    weights = fit_user_weights(
        model,
        batch,
        est.to_tables(parts[0][1]),
        n_users=n_users * len(parts),
        prior=prior,
        loss=est.loss,
        ridge=est.adapt_ridge,
        steps=est.adapt_steps,
        seed=est.seed,
    )
    return list(weights.split(n_users))


def cross_validated_accuracy(
    est: PALEstimator, data: PreferenceData, *, folds: int = 5, seed: int = 0
) -> pd.DataFrame:
    """Per user of ``data``: answers, answers scored and correct in ``folds``-fold CV within the user.

    Each fold's weights are fitted few-shot (as ``est.fit_weights``) on the user's other folds, with the
    model's prototypes frozen; all users and folds in one batched fit. Ties count half. The estimator is
    not modified. Index: user_id.
    """
    data = est.prepare(data)
    present = np.unique(data.user)
    local = np.full(data.n_users, -1, dtype=np.int64)
    local[present] = np.arange(len(present))
    ids = pd.Index(data.user_ids[present].astype(str), name="user_id")
    users = local[data.user]
    rank, _ = rank_within_user(data, np.random.default_rng(seed))
    fold = rank % folds
    # fold f's fit of user u is pseudo-user u * folds + f: every row of u outside fold f
    rows = np.repeat(np.arange(len(data)), folds)
    fit_fold = np.tile(np.arange(folds), len(data))
    keep = fit_fold != fold[rows]
    rows, fit_fold = rows[keep], fit_fold[keep]
    fit_part = (users[rows] * folds + fit_fold, data.subset(rows))
    (weights,) = _fit_weights(est, est.model_, [fit_part], len(present) * folds)
    batch = est.to_batch(data, users * folds + fold)
    margin = predict_margins(est.model_, batch, est.to_tables(data), weights_to_logits(weights))
    margin = margin.double().numpy()
    correct = np.bincount(users, weights=(margin > 0) + 0.5 * (margin == 0), minlength=len(present))
    counts = np.bincount(users, minlength=len(present))
    frame = pd.DataFrame({"n_comparisons": counts, "scored": counts, "correct": correct}, index=ids)
    frame["accuracy"] = correct / np.maximum(counts, 1)
    return frame


def detect(
    est: PALEstimator,
    data: Any,
    reference: Any,
    rule: DetectionRule | None = None,
    *,
    max_reference_users: int | None = 1000,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Flag the users of ``data`` poorly explained by ``est``'s prototypes, against the seen users of
    ``reference`` (at most ``max_reference_users`` of them, drawn with the estimator's seed).

    Few-shot accuracy grows with the number of answers, so each reference user keeps at most the new
    users' median number of comparisons: both sides' cross-validated weights rest on as many answers.
    """
    rule = rule or DetectionRule()
    data, reference = est.prepare(data), est.prepare(reference)
    if len(reference) == 0:
        raise DataError("reference: no comparisons of seen users", path=reference.source)
    present = np.unique(reference.user)
    if max_reference_users is not None and len(present) > max_reference_users:
        keep = np.zeros(reference.n_users, dtype=bool)
        keep[np.random.default_rng(est.seed).choice(present, max_reference_users, replace=False)] = True
        reference = reference.subset(keep[reference.user])
    counts = np.bincount(data.user)
    reference, _ = take_per_user(reference, int(np.median(counts[counts > 0])), seed=est.seed)
    population = population_stats(
        cross_validated_accuracy(est, reference, folds=rule.folds, seed=est.seed), rule.min_answers
    )
    cv = cross_validated_accuracy(est, data, folds=rule.folds, seed=est.seed)
    return flag_users(cv, population, rule), population


def grow_epochs(est: PALEstimator, rows: int, batch_size: int | None) -> int | None:
    """For a model trained by epochs: its epochs, or more (at least as many optimizer steps as one epoch
    of its own training). None for a model trained on the step budget: the grow data's budget decides.

    The flagged users' rows are usually a small share of the training data; the model's epoch count alone
    would then give the new prototypes a handful of steps (the 5x-data grow benchmark: 0.965 on the new
    group instead of 0.998)."""
    if est.epochs is None:
        return None
    original = est.history_.steps_per_epoch
    if not original:  # checkpoints saved before steps_per_epoch was recorded
        return est.epochs
    batch = batch_size or auto_batch_size(rows)
    return max(est.epochs, math.ceil(original / math.ceil(rows / batch)))


def _grow_inputs(
    est: PALEstimator,
    data: Any,
    n_new: int,
    users: Sequence[str] | None,
    reference: Any,
    heldout_fraction: float,
) -> tuple[PreferenceData, pd.Index, list[str] | None, PreferenceData | None]:
    """Checked, embedded inputs: the new users' data, their ids, the users named to grow on, the reference."""
    est.check_fitted()
    if isinstance(n_new, bool) or not isinstance(n_new, int | np.integer) or n_new < 1:
        raise PluralignError(f"n_new must be an integer >= 1, got {n_new!r}")
    if not isinstance(est.model_, PALAModel | PALBModel):
        raise PluralignError(f"a {type(est).__name__} has no prototypes to grow: use PALA or PALB")
    if not 0 < heldout_fraction < 1:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    data = est.prepare(data)
    if len(data) == 0:
        raise DataError("no comparisons of new users", path=data.source)
    present = np.unique(data.user)
    ids = pd.Index(data.user_ids[present].astype(str), name="user_id")
    known = est.users_.get_indexer(ids) >= 0
    if known.any():
        raise DataError(
            f"{int(known.sum())} user(s) are already in the model (e.g. {', '.join(ids[known][:5])}): grow "
            "takes new users only (re-fit known users with adapt)",
            path=data.source,
            field="user_id",
        )
    if users is not None:
        users = [str(u) for u in users]
        missing = [u for u in users if u not in ids]
        if missing:
            raise DataError(
                f"unknown user(s) {', '.join(missing[:5])}: not among the new users' comparisons",
                path=data.source,
                field="user_id",
            )
        if not users:
            raise PluralignError("users: the list of users to grow on is empty")
    elif reference is None:
        raise PluralignError(
            "detecting poorly explained users needs comparisons of seen users to compare against "
            "(reference=..., CLI --reference FILE), or name the users to grow on (users=..., --users)"
        )
    reference_data = None if reference is None else est.prepare(reference)
    return data, ids, users, reference_data


def _detect_phase(
    est: PALEstimator,
    data: PreferenceData,
    reference_data: PreferenceData | None,
    users: list[str] | None,
    rule: DetectionRule,
    max_reference_users: int | None,
) -> tuple[pd.DataFrame, dict[str, float] | None, list[str]]:
    """Per-user detection table, the population it was judged against and the users to grow on."""
    if reference_data is not None:
        detection, population = detect(
            est, data, reference_data, rule, max_reference_users=max_reference_users
        )
    else:
        detection = cross_validated_accuracy(est, data, folds=rule.folds, seed=est.seed)
        population = None
    if users is not None:
        detection["flagged"] = detection.index.isin(users)
    flagged = list(detection.index[detection["flagged"]])
    if not flagged:
        assessed = detection[detection["n_comparisons"] >= rule.min_answers]
        worst = assessed["accuracy"].min() if len(assessed) else float("nan")
        raise NothingToGrow(
            f"none of the {len(detection)} new users is poorly explained by the {est.model_.n_prototypes} "
            f"prototypes (lowest held-out accuracy {worst:.3f} vs the seen users' "
            f"{population['accuracy']:.3f}; rule: {rule.describe()}): nothing to grow; add them with adapt"
        )
    logger.info("%d of %d new users flagged as poorly explained", len(flagged), len(detection))
    return detection, population, flagged


@dataclass
class _GrowStep:
    """What the training phase of ``grow`` produced (the inputs of the commit and of the report)."""

    model: PreferenceModel
    logits: torch.Tensor
    prior: torch.Tensor
    history: Any
    n_old: int
    held_flagged: np.ndarray
    margin_before: torch.Tensor
    margin_after_flagged: torch.Tensor
    margin_after_others: torch.Tensor
    seconds: float


def _train_phase(
    est: PALEstimator,
    data: PreferenceData,
    ids: pd.Index,
    flagged: list[str],
    n_new: int,
    epochs: int | None,
    heldout_fraction: float,
) -> _GrowStep:
    """Train ``n_new`` prototypes on the flagged users' answers (all else frozen); fit the other new users."""
    present = np.unique(data.user)
    grow_start = time.perf_counter()
    old = est.model_
    n_old = old.n_prototypes
    grown = add_prototypes(old, n_new, seed=est.seed + 1)
    tables = est.to_tables(data)
    local = np.full(data.n_users, -1, dtype=np.int64)
    local[present] = np.arange(len(present))
    is_flagged = ids.isin(flagged)
    train, heldout = split_per_user(data, (1 - heldout_fraction, heldout_fraction), seed=est.seed)
    prior = torch.cat([est.zero_shot_weights_.double(), torch.zeros(n_new, dtype=torch.float64)])

    # before: few-shot weights with the old prototypes, fitted on the 90%, scored on the 10%
    (weights_before,) = _fit_weights(est, old, [(local[train.user], train)], len(present))
    margin_before = predict_margins(
        old, est.to_batch(heldout, local[heldout.user]), tables, weights_to_logits(weights_before)
    )

    # train the new prototypes and the flagged users' weights on the flagged users' 90%, all else frozen
    flagged_rows = is_flagged[local[train.user]]
    held_flagged = is_flagged[local[heldout.user]]
    order = np.flatnonzero(is_flagged)  # model row r of the training model is new user order[r]
    to_train = np.full(len(present), -1, dtype=np.int64)
    to_train[order] = np.arange(len(order))
    init = torch.cat(
        [
            0.5 * weights_before[torch.from_numpy(order)],
            torch.full((len(order), n_new), 0.5 / n_new).double(),
        ],
        dim=1,
    )
    trainee = copy.deepcopy(grown)
    trainee.user_logits = nn.Parameter(weights_to_logits(init))
    frozen = frozen_names(trainee, n_old)
    parameters = dict(trainee.named_parameters())
    for name in frozen:
        parameters[name].requires_grad_(False)
    if isinstance(trainee, PALAModel):
        mask = torch.zeros(trainee.n_prototypes, 1)
        mask[n_old:] = 1.0
        trainee.prototypes.register_hook(lambda grad: grad * mask)
    tr = train.subset(flagged_rows)
    ho = heldout.subset(held_flagged)
    config = est.train_config()
    # the grow step writes no metrics file or resumable training checkpoints of the estimator's own run
    off = {"metrics_path": None, "checkpoint_dir": None, "checkpoint_every": None, "checkpoint_seconds": None}
    off = {k: v for k, v in off.items() if k in {f.name for f in dataclasses.fields(config)}}
    if epochs is None:
        epochs = grow_epochs(est, len(tr), config.batch_size)
    config = dataclasses.replace(config, epochs=epochs, **off)
    train_part = (est.to_batch(tr, to_train[local[tr.user]]), tables)
    val_part = (est.to_batch(ho, to_train[local[ho.user]]), tables) if len(ho) else None
    history = fit(trainee, train_part, val_part, config)
    # every frozen parameter must be untouched, or the new prototypes were fitted against other numbers
    reference_params = dict(grown.named_parameters())
    changed = [n for n in frozen if not torch.equal(parameters[n].detach(), reference_params[n].detach())]
    if isinstance(trainee, PALAModel) and not torch.equal(trainee.prototypes[:n_old], old.prototypes):
        changed.append("prototypes[:K]")
    if changed:
        raise RuntimeError(f"growing changed frozen parameters: {', '.join(changed[:5])}")
    with torch.no_grad():
        if isinstance(grown, PALBModel):
            for k in range(n_old, grown.n_prototypes):
                grown.g[k].load_state_dict(trainee.g[k].state_dict())
        else:
            grown.prototypes[n_old:] = trainee.prototypes[n_old:].detach()
    margin_after_flagged = predict_margins(trainee, val_part[0], tables) if val_part else torch.zeros(0)

    # other new users: few-shot weights with all K + M prototypes (90% for the figure, then all rows)
    weights_after, final = _fit_weights(
        est, grown, [(local[train.user], train), (local[data.user], data)], len(present)
    )
    held_others = ~held_flagged
    margin_after_others = predict_margins(
        grown,
        est.to_batch(heldout.subset(held_others), local[heldout.user[held_others]]),
        tables,
        weights_to_logits(weights_after),
    )
    logits = weights_to_logits(final)
    logits[torch.from_numpy(order)] = trainee.user_logits.detach()
    return _GrowStep(
        model=grown,
        logits=logits,
        prior=prior,
        history=history,
        n_old=n_old,
        held_flagged=held_flagged,
        margin_before=margin_before.double(),
        margin_after_flagged=margin_after_flagged,
        margin_after_others=margin_after_others,
        seconds=time.perf_counter() - grow_start,
    )


def _commit(
    est: PALEstimator, step: _GrowStep, ids: pd.Index, reference_data: PreferenceData | None
) -> tuple[PALEstimator, dict[str, Any] | None]:
    """A new estimator holding the grown model with every new user added (``est`` is not modified), and
    the check that the reference users' margins are unchanged."""
    grown = step.model
    grown.grow_users(len(ids), step.logits)
    grown.eval()
    new = copy.copy(est)
    new.model_ = grown
    new.users_ = est.users_.append(ids)
    new.n_prototypes = grown.n_prototypes
    new.zero_shot_weights_ = step.prior
    if reference_data is None:
        return new, None
    seen = est.user_rows(reference_data) >= 0
    if not seen.any():
        return new, None
    ref_rows = reference_data.subset(seen)
    before, after = est.margins(ref_rows), new.margins(ref_rows)
    return new, {
        "users": len(np.unique(ref_rows.user)),
        "comparisons": len(ref_rows),
        "accuracy_before": float(np.mean((before > 0) + 0.5 * (before == 0))),
        "accuracy_after": float(np.mean((after > 0) + 0.5 * (after == 0))),
        "max_abs_margin_change": float(np.max(np.abs(after - before))),
        "margins_identical": bool(np.array_equal(before, after)),
    }


def grow_estimator(
    est: PALEstimator,
    data: Any,
    n_new: int = 1,
    *,
    reference: Any = None,
    users: Sequence[str] | None = None,
    rule: DetectionRule | None = None,
    epochs: int | None = None,
    heldout_fraction: float = 0.1,
    max_reference_users: int | None = 1000,
) -> PALEstimator:
    """Detect the poorly explained new users of ``data`` and grow ``n_new`` prototypes for them: returns a
    new estimator (``grow_report_`` says what was done); ``est`` is not modified.

    ``reference``: comparisons of seen users, the population the detection rule compares against (needed
    unless ``users`` names the users to grow on). All users of ``data`` must be new to the model; they are
    all added to it. ``epochs`` of the grow step: None is the step budget of the grow data for a model
    trained on the budget; for one trained by epochs, the model's epochs, raised to at least one epoch of its
    own training in optimizer steps. Raises NothingToGrow when no user is flagged.
    """
    start = time.perf_counter()
    rule = rule or DetectionRule()
    data, ids, users, reference_data = _grow_inputs(est, data, n_new, users, reference, heldout_fraction)
    detection, population, flagged = _detect_phase(
        est, data, reference_data, users, rule, max_reference_users
    )
    detect_seconds = time.perf_counter() - start
    step = _train_phase(est, data, ids, flagged, n_new, epochs, heldout_fraction)
    new, check = _commit(est, step, ids, reference_data)
    held_flagged = torch.from_numpy(step.held_flagged)
    new.grow_report_ = GrowReport(
        n_prototypes_before=step.n_old,
        n_prototypes_after=step.model.n_prototypes,
        rule=rule.describe() if users is None else "users named by the caller",
        detection=detection,
        population=population,
        flagged=flagged,
        heldout_before=accuracy_of(step.margin_before[held_flagged]),
        heldout_after=accuracy_of(step.margin_after_flagged),
        n_heldout=int(step.held_flagged.sum()),
        others_heldout_before=accuracy_of(step.margin_before[~held_flagged]),
        others_heldout_after=accuracy_of(step.margin_after_others),
        n_others_heldout=int((~step.held_flagged).sum()),
        reference_check=check,
        steps=step.history.steps,
        best_step=step.history.best_step,
        detect_seconds=detect_seconds,
        grow_seconds=step.seconds,
        seconds=time.perf_counter() - start,
    )
    return new
