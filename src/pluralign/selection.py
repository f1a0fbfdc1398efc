"""Choosing the number of prototypes K by cross-validation: ``select_k(data, k_values=range(1, 7))``.

Protocol. Fold f (of ``folds``) uses seed ``seed + f`` for three seeded splits of ``pluralign.data.splits``:
``split_users`` holds out a random ``held_out_users`` share of the users; ``split_per_user`` holds out a
``test_fraction`` share of every remaining (seen) user's comparisons; ``take_per_user`` gives each held-out
user ``shots`` answers to adapt on, their other answers are scored. For every K the model is trained on the
seen users' training rows, and every fold reports, for that K:

- ``seen_accuracy`` / ``seen_log_loss``: held-out comparisons of seen users;
- ``new_zero_shot_accuracy``: held-out users with the zero-shot (mean) weights;
- ``new_few_shot_accuracy`` / ``new_few_shot_log_loss``: held-out users after fitting only their K weights
  on ``shots`` answers (the shared maps and prototypes frozen), scored on their remaining answers.

Log loss is the mean of log(1 + exp(-margin)) in nats (the margin is the model's logit). Folds are repeated
random splits (Monte Carlo cross-validation): every fold trains every K on the same rows, so differences
between K are compared fold by fold (paired).

Decision rule (:func:`choose_k`), on one criterion s[K, f] oriented so that higher is better (log losses are
negated): the best K maximizes the mean over folds; for every K the paired gap d_f = s[best, f] - s[K, f] has
mean g_K and standard error se_K = std(d, ddof=1) / sqrt(folds). K is *within noise* of the best when

    g_K <= n_se * se_K + rel_tol * (max_K mean s - min_K mean s),

and the chosen K is the smallest K within noise: the one-standard-error rule of Breiman et al. (1984) on
paired differences, plus a practical-equivalence margin of ``rel_tol`` (default 1%) of the whole range of
the criterion over K. The margin matters on noise-free data (e.g. Persona), where every K >= K* predicts
almost perfectly, fold-to-fold standard errors are near 0, and ever larger K keep shaving off 1e-4 of log
loss. ``criterion="combined"`` (the default) applies the rule to seen-user log loss and to new-user few-shot
accuracy and chooses the larger of the two Ks: the smallest K within noise of the best on both held-out
comparisons and held-out users. (New-user few-shot *log loss* is reported but is a poor criterion: with
few answers it is dominated by a few confident mistakes.)

Cost. Each fit trains the step budget the same data would get from ``pluralign train``
(``pluralign.training.budget``), with early stopping on the automatic validation share, or
``budget_share`` of it (e.g. 0.5: half the time; on the pooled Polis data K = 3 instead of K = 2, the two
within noise of each other on new-user accuracy). Given ``max_steps`` or ``epochs``, every fit trains
exactly that.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from pluralign.atomic import atomic_write_json
from pluralign.data.comparisons import PreferenceData
from pluralign.data.splits import split_per_user, split_users, take_per_user
from pluralign.errors import DataError, PluralignError
from pluralign.estimator import PALA, PALB, DataLike, PALEstimator
from pluralign.evaluation import weight_spread
from pluralign.training import budget
from pluralign.training.config import TrainConfig

__all__ = [
    "CRITERIA",
    "METRICS",
    "KSelection",
    "apply_rule",
    "choose_k",
    "log_loss",
    "parse_k_values",
    "select_k",
    "weight_spread",
]

logger = logging.getLogger(__name__)

#: metric -> True when higher is better
METRICS: dict[str, bool] = {
    "seen_accuracy": True,
    "seen_log_loss": False,
    "new_zero_shot_accuracy": True,
    "new_few_shot_accuracy": True,
    "new_few_shot_log_loss": False,
}
#: criteria of the decision rule: one metric, or "combined" (the larger K chosen on these two)
COMBINED = ("seen_log_loss", "new_few_shot_accuracy")
CRITERIA = ("combined", *METRICS)
ESTIMATOR_CLASSES: dict[str, type[PALEstimator]] = {"pal-a": PALA, "pal-b": PALB}


def log_loss(margins: np.ndarray) -> float:
    """Mean logistic loss log(1 + exp(-m)) in nats of margins m (chosen minus rejected reward)."""
    return float(np.mean(np.logaddexp(0.0, -np.asarray(margins, dtype=np.float64))))


def _accuracy(margins: np.ndarray) -> float:
    return float(np.mean((margins > 0) + 0.5 * (margins == 0)))


# --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RuleResult:
    """What :func:`choose_k` decided on one criterion."""

    criterion: str
    chosen_k: int
    best_k: int
    gap: list[float]  # per K: mean paired gap to the best, in the oriented score (>= 0 means worse)
    se: list[float]  # per K: standard error of that gap
    within: list[bool]  # per K: within noise of the best


def choose_k(
    scores: np.ndarray,
    k_values: Sequence[int],
    *,
    higher_is_better: bool = True,
    n_se: float = 1.0,
    rel_tol: float = 0.0,
    criterion: str = "score",
) -> RuleResult:
    """The smallest K whose fold scores are within noise of the best K's (module docstring: the rule).

    ``scores`` is [len(k_values), folds]. With a single fold the standard error is 0 and only ``rel_tol``
    counts as noise.
    """
    scores = np.asarray(scores, dtype=np.float64)
    k_values = list(k_values)
    if scores.ndim != 2 or scores.shape[0] != len(k_values) or scores.shape[1] < 1:
        raise ValueError(f"scores must be [len(k_values)={len(k_values)}, folds], got shape {scores.shape}")
    if not np.isfinite(scores).all():
        raise ValueError(f"scores of criterion '{criterion}' contain NaN or infinity")
    if n_se < 0 or not 0 <= rel_tol < 1:
        raise ValueError(f"n_se must be >= 0 and rel_tol in [0, 1), got {n_se} and {rel_tol}")
    oriented = scores if higher_is_better else -scores
    best = int(np.argmax(oriented.mean(1)))  # ties: the smallest K (k_values are sorted by the caller)
    diff = oriented[best][None, :] - oriented
    gap = diff.mean(1)
    folds = scores.shape[1]
    se = diff.std(1, ddof=1) / math.sqrt(folds) if folds > 1 else np.zeros(len(k_values))
    means = oriented.mean(1)
    within = gap <= n_se * se + rel_tol * (means.max() - means.min())
    chosen = k_values[int(np.flatnonzero(within)[0])]  # the best K itself is always within
    return RuleResult(criterion, chosen, k_values[best], gap.tolist(), se.tolist(), within.tolist())


def apply_rule(
    scores: dict[str, Any],
    k_values: Sequence[int],
    criterion: str = "combined",
    *,
    n_se: float = 1.0,
    rel_tol: float = 0.01,
) -> tuple[int, dict[str, RuleResult]]:
    """The chosen K and the per-criterion decisions for metric tables ``scores[metric]`` [K, folds];
    "combined" takes the larger K chosen on seen log loss and new-user few-shot accuracy."""
    if criterion not in CRITERIA:
        raise PluralignError(f"unknown criterion '{criterion}': choose one of {', '.join(CRITERIA)}")
    criteria = list(COMBINED) if criterion == "combined" else [criterion]
    decisions = {
        c: choose_k(scores[c], k_values, higher_is_better=METRICS[c], n_se=n_se, rel_tol=rel_tol, criterion=c)
        for c in criteria
    }
    return max(d.chosen_k for d in decisions.values()), decisions


# --------------------------------------------------------------------------------------------------------
@dataclass
class KSelection:
    """Cross-validated scores per K and the K the rule chose (see the module docstring)."""

    k_values: list[int]
    model: str
    criterion: str
    chosen_k: int
    rule: str
    #: metric -> [len(k_values)][folds]
    scores: dict[str, list[list[float]]]
    #: criterion -> RuleResult as a dict (gap, se, within per K)
    decisions: dict[str, dict[str, Any]]
    heterogeneity: dict[str, Any]
    #: per K: weight_spread of the seen users, averaged over folds
    spread: list[dict[str, float]]
    folds: list[dict[str, int]]
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def mean(self, metric: str) -> np.ndarray:
        return np.mean(np.asarray(self.scores[metric], dtype=np.float64), axis=1)

    def std(self, metric: str) -> np.ndarray:
        values = np.asarray(self.scores[metric], dtype=np.float64)
        return values.std(axis=1, ddof=1) if values.shape[1] > 1 else np.zeros(len(values))

    def as_rows(self) -> list[dict[str, Any]]:
        """One row per K: mean and std over folds of every metric, weight spread, within-noise flags."""
        rows = []
        for i, k in enumerate(self.k_values):
            row: dict[str, Any] = {"K": k}
            for metric in self.scores:
                row[metric] = float(self.mean(metric)[i])
                row[f"{metric}_std"] = float(self.std(metric)[i])
            row["weight_entropy"] = self.spread[i]["entropy"]
            row["weight_distance"] = self.spread[i]["distance"]
            for name, decision in self.decisions.items():
                row[f"within_noise[{name}]"] = bool(decision["within"][i])
            row["chosen"] = k == self.chosen_k
            rows.append(row)
        return rows

    def table_rows(self) -> list[dict[str, Any]]:
        """Compact rows for printing: mean ± std of the main metrics per K, a mark on the chosen K."""
        rows = []
        for i, k in enumerate(self.k_values):
            row: dict[str, Any] = {"K": f"{k} *" if k == self.chosen_k else str(k)}
            for metric in self.scores:
                digits = 4 if "accuracy" in metric else 3
                row[metric] = f"{self.mean(metric)[i]:.{digits}f} ± {self.std(metric)[i]:.{digits}f}"
            row["weight entropy"] = round(self.spread[i]["entropy"], 3)
            row["within noise"] = ", ".join(
                name.replace("_log_loss", "") for name, d in self.decisions.items() if d["within"][i]
            )
            rows.append(row)
        return rows

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, path: str | Path | None = None) -> str:
        """The whole selection as JSON; written atomically to ``path`` when given."""
        payload = self.to_dict()
        if path is not None:
            atomic_write_json(path, payload)
        return json.dumps(payload, indent=2)


# --------------------------------------------------------------------------------------------------------
def _check_k_values(k_values: Iterable[int]) -> list[int]:
    values = list(k_values)
    if not values:
        raise PluralignError("k_values is empty: give at least one number of prototypes, e.g. 1..6")
    for k in values:
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise PluralignError(f"every K must be an integer >= 1, got {k!r}")
    return sorted({int(k) for k in values})


def _fold_splits(
    data: PreferenceData, fold_seed: int, held_out_users: float, test_fraction: float, shots: int
) -> tuple[PreferenceData, PreferenceData, PreferenceData | None, PreferenceData | None]:
    seen, unseen = split_users(data, held_out_users, seed=fold_seed)
    train, test = split_per_user(seen, (1.0 - test_fraction, test_fraction), seed=fold_seed)
    if len(test) == 0:
        raise DataError(
            f"no held-out comparisons: seen users have too few comparisons for test_fraction={test_fraction}",
            path=data.source,
        )
    if held_out_users == 0:
        return train, test, None, None
    adapt, new_test = take_per_user(unseen, shots, seed=fold_seed)
    if len(new_test) == 0:
        raise DataError(
            f"held-out users have at most shots={shots} comparisons each, so none are left to score: "
            "lower shots (--shots) or give users more comparisons",
            path=data.source,
        )
    return train, test, adapt, new_test


def _evaluate(
    est: PALEstimator,
    test: PreferenceData,
    adapt: PreferenceData | None,
    new_test: PreferenceData | None,
) -> dict[str, float]:
    m = est.margins(test)
    out = {"seen_accuracy": _accuracy(m), "seen_log_loss": log_loss(m)}
    if adapt is not None and new_test is not None:
        out["new_zero_shot_accuracy"] = _accuracy(est.margins(new_test))
        adapted = est.copy()
        adapted.adapt(adapt)  # only the held-out users' K weights; the copy's shared parts stay frozen
        m_new = adapted.margins(new_test)
        out["new_few_shot_accuracy"] = _accuracy(m_new)
        out["new_few_shot_log_loss"] = log_loss(m_new)
    return out


def select_k(
    data: DataLike,
    k_values: Iterable[int] = range(1, 7),
    *,
    model: str = "pal-b",
    folds: int = 3,
    seed: int = 0,
    held_out_users: float = 0.2,
    test_fraction: float = 0.2,
    shots: int = 10,
    criterion: str = "combined",
    n_se: float = 1.0,
    rel_tol: float = 0.01,
    budget_share: float = 1.0,
    progress: bool = False,
    **params: Any,
) -> KSelection:
    """Cross-validate PAL with every K in ``k_values`` on ``data`` and choose K (module docstring).

    ``model`` is "pal-b" or "pal-a"; ``params`` go to the estimator (``PALB(n_prototypes=K, **params)``),
    including ``encoder``/``cache_dir`` for data that is not embedded yet. ``held_out_users`` = 0 skips the
    new-user metrics (then ``criterion`` must be a seen-user metric). ``budget_share``: the share of the
    derived step budget each fit trains (module docstring).
    """
    start = time.perf_counter()
    k_values = _check_k_values(k_values)
    if model not in ESTIMATOR_CLASSES:
        raise PluralignError(f"unknown model '{model}': choose {' or '.join(ESTIMATOR_CLASSES)}")
    if criterion not in CRITERIA:
        raise PluralignError(f"unknown criterion '{criterion}': choose one of {', '.join(CRITERIA)}")
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise PluralignError(
            f"folds must be an integer >= 2 (the rule needs fold-to-fold noise), got {folds}"
        )
    if not 0.0 <= held_out_users < 1.0:
        raise PluralignError(f"held_out_users must be in [0, 1), got {held_out_users}")
    if not 0.0 < test_fraction < 1.0:
        raise PluralignError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if shots < 1:
        raise PluralignError(f"shots must be >= 1, got {shots}")
    if not 0.0 < budget_share <= 1.0:
        raise PluralignError(f"budget_share must be in (0, 1], got {budget_share}")
    new_metrics = held_out_users > 0
    if not new_metrics and criterion != "seen_accuracy" and criterion != "seen_log_loss":
        raise PluralignError(
            f"criterion '{criterion}' needs held-out users: set held_out_users > 0 or use a seen_* criterion"
        )
    if "n_prototypes" in params:
        raise PluralignError("pass the numbers of prototypes as k_values, not n_prototypes")
    cls = ESTIMATOR_CLASSES[model]
    try:
        template = cls(**params)
    except TypeError as exc:
        raise PluralignError(f"bad estimator parameter: {exc}") from None
    data = template.prepare(data)  # embeds once (through the cache), shared by every fit
    n_users = len(data.users_present())
    n_held = int(np.floor(held_out_users * n_users + 0.5)) if new_metrics else 0
    n_held = max(n_held, 1) if new_metrics else 0
    if n_users - n_held < 2 or (new_metrics and n_held < 1):
        raise DataError(
            f"{n_users} user(s) with comparisons: too few for cross-validation with held_out_users="
            f"{held_out_users} (need at least 2 seen users per fold{' and 1 held-out user' * new_metrics})",
            path=data.source,
        )

    metric_names = [m for m in METRICS if new_metrics or m.startswith("seen_")]
    scores = {m: np.zeros((len(k_values), folds)) for m in metric_names}
    spread = np.zeros((len(k_values), folds, 3))
    fold_info = []
    bar = tqdm(total=folds * len(k_values), desc="select-k", disable=not progress, unit="fit")
    for f in range(folds):
        train, test, adapt, new_test = _fold_splits(data, seed + f, held_out_users, test_fraction, shots)
        fold_info.append(
            {
                "fold": f,
                "seed": seed + f,
                "train_rows": len(train),
                "test_rows": len(test),
                "held_out_users": 0 if adapt is None else len(adapt.users_present()),
                "adapt_rows": 0 if adapt is None else len(adapt),
                "new_test_rows": 0 if new_test is None else len(new_test),
            }
        )
        steps = selection_steps(template, len(train), budget_share)
        for i, k in enumerate(k_values):
            est = cls(**{**params, **steps, "n_prototypes": k, "seed": seed + f})
            est.fit(train)
            for metric, value in _evaluate(est, test, adapt, new_test).items():
                scores[metric][i, f] = value
            spread[i, f] = list(weight_spread(est.user_weights().to_numpy()).values())
            logger.info(
                "fold %d K=%d: %s",
                f,
                k,
                ", ".join(f"{m}={scores[m][i, f]:.4f}" for m in metric_names),
            )
            bar.update(1)
    bar.close()

    chosen, decisions = apply_rule(scores, k_values, criterion, n_se=n_se, rel_tol=rel_tol)
    rule = describe_rule(criterion, n_se, rel_tol, folds)
    spread_mean = spread.mean(1)
    heterogeneity = _heterogeneity(scores, k_values, chosen, decisions, spread_mean, n_se)
    return KSelection(
        k_values=k_values,
        model=model,
        criterion=criterion,
        chosen_k=chosen,
        rule=rule,
        scores={m: v.tolist() for m, v in scores.items()},
        decisions={c: asdict(d) for c, d in decisions.items()},
        heterogeneity=heterogeneity,
        spread=[
            dict(zip(("entropy", "distance", "effective_k"), s.tolist(), strict=True)) for s in spread_mean
        ],
        folds=fold_info,
        settings={
            "folds": folds,
            "seed": seed,
            "held_out_users": held_out_users,
            "test_fraction": test_fraction,
            "shots": shots,
            "n_se": n_se,
            "rel_tol": rel_tol,
            "budget_share": budget_share,
            "n_users": n_users,
            "n_comparisons": len(data),
            "params": {k: v for k, v in params.items() if isinstance(v, int | float | str | bool | None)},
            "threads": torch.get_num_threads(),
        },
        seconds=time.perf_counter() - start,
    )


#: the TrainConfig fields the step budget depends on, besides the ones selection_steps leaves to the user
BUDGET_FIELDS = ("batch_size", "grad_accum_steps")


def selection_steps(template: PALEstimator, n_rows: int, share: float) -> dict[str, int]:
    """``{"max_steps": ...}``: ``share`` of the step budget a fit of ``template`` would derive for
    ``n_rows`` comparisons (less its automatic validation share); nothing when the template fixes its own
    ``max_steps`` or ``epochs``, or ``share`` is 1."""
    if share >= 1.0 or template.max_steps is not None or template.epochs is not None:
        return {}
    config = TrainConfig(
        **{name: getattr(template, name) for name in BUDGET_FIELDS if hasattr(template, name)}
    )
    rows = max(1, round(n_rows * (1.0 - template.val_fraction)))
    return {"max_steps": max(1, math.ceil(share * budget.resolve(config, rows).max_steps))}


def describe_rule(criterion: str, n_se: float, rel_tol: float, folds: int) -> str:
    """The decision rule in one sentence (stored in KSelection.rule and printed by the CLI)."""
    on = (
        "seen-user log loss and new-user few-shot accuracy (the larger of the two Ks)"
        if criterion == "combined"
        else criterion
    )
    noise = f"{n_se:g} paired standard error(s) over {folds} folds"
    if rel_tol:
        noise += f" + {100 * rel_tol:g}% of the criterion's range over K"
    return f"smallest K whose mean gap to the best K is <= {noise}, on {on}"


def _heterogeneity(
    scores: dict[str, np.ndarray],
    k_values: list[int],
    chosen: int,
    decisions: dict[str, RuleResult],
    spread: np.ndarray,
    n_se: float,
) -> dict[str, Any]:
    """How far the chosen K beats K = 1 (paired over folds) and how spread the users' weights are."""
    out: dict[str, Any] = {"chosen_k": chosen}
    i = k_values.index(chosen)
    out["weight_entropy"], out["weight_distance"], out["effective_k"] = spread[i].tolist()
    if 1 not in k_values:
        out["gain_over_k1"] = None
        return out
    j = k_values.index(1)
    gains = {}
    for metric, values in scores.items():
        sign = 1.0 if METRICS[metric] else -1.0
        diff = sign * (values[i] - values[j])
        se = float(diff.std(ddof=1) / math.sqrt(len(diff)))
        gains[metric] = {"gain": float(diff.mean()), "se": se}
    out["gain_over_k1"] = gains
    main = decisions[next(iter(decisions))].criterion
    out["heterogeneous"] = bool(chosen > 1)
    out["summary"] = (
        f"K = {chosen} beats K = 1 by {100 * gains['seen_accuracy']['gain']:+.1f} ± "
        f"{100 * gains['seen_accuracy']['se']:.1f} accuracy points on seen users' held-out comparisons "
        f"and by {gains[main]['gain']:+.4f} ± {gains[main]['se']:.4f} on {main}"
        if chosen > 1
        else f"K = 1 is within {n_se:g} SE of the best K: no evidence of heterogeneity"
    )
    return out


def parse_k_values(spec: str) -> list[int]:
    """K values from a CLI spec: "1..6" (inclusive range), "1,2,4", or a mix such as "1..4,6,8"."""
    values: list[int] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        try:
            if ".." in part:
                low, high = (int(x) for x in part.split(".."))
                if high < low:
                    raise PluralignError(f"K range '{part}' is empty: write low..high")
                values += range(low, high + 1)
            else:
                values.append(int(part))
        except ValueError:
            raise PluralignError(f"cannot read K values '{spec}': use e.g. 1..6 or 1,2,4") from None
    return _check_k_values(values)
