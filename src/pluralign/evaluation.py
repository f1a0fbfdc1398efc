"""Evaluation protocols of the PAL paper: seen-user accuracy on held-out pairs, and the few-shot curve of
unseen users (fit their weights on n of their comparisons, score the rest); how users spread over the
prototypes (`weight_spread`)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from pluralign.data.comparisons import PreferenceData
from pluralign.data.splits import take_per_user
from pluralign.estimator import PALEstimator


def few_shot_curve(
    estimator: PALEstimator,
    adapt_pool: PreferenceData,
    held_out: PreferenceData,
    shots: Sequence[int],
    *,
    seed: int = 0,
) -> pd.DataFrame:
    """Accuracy on ``held_out`` after adapting each unseen user on ``n`` rows of ``adapt_pool``, per n.

    n = 0 is the zero-shot point (mean weights of the seen users). For each n every user uses the first n
    of one fixed random order of their pool rows, so the curves are nested across n.
    """
    rows = []
    for n in sorted(set(shots)):
        if n == 0:
            rows.append({"shots": 0, "accuracy": estimator.score(held_out), "users_adapted": 0})
            continue
        first, _ = take_per_user(adapt_pool, n, seed=seed)
        adapted = estimator.copy()
        weights = adapted.adapt(first)
        rows.append({"shots": n, "accuracy": adapted.score(held_out), "users_adapted": len(weights)})
    return pd.DataFrame(rows)


def weight_spread(weights: np.ndarray) -> dict[str, float]:
    """How differently users weigh the K prototypes ([n_users, K] rows on the simplex).

    ``entropy``: mean entropy of a user's weights over log K (0: every user on one prototype, 1: every user
    uniform; 0 when K = 1). ``distance``: mean total-variation distance 0.5 ||w_u - mean w||_1 from the
    mean weight (0: all users alike). ``effective_k``: exp(entropy of the mean weight), how many prototypes
    the population uses.
    """
    w = np.clip(np.asarray(weights, dtype=np.float64), 0.0, 1.0)
    k = w.shape[1]
    plogp = np.where(w > 0, w * np.log(np.where(w > 0, w, 1.0)), 0.0)
    mean = w.mean(0)
    mean_entropy = -float(np.sum(np.where(mean > 0, mean * np.log(np.where(mean > 0, mean, 1.0)), 0.0)))
    return {
        "entropy": float(-plogp.sum(1).mean() / math.log(k)) if k > 1 else 0.0,
        "distance": float(0.5 * np.abs(w - mean).sum(1).mean()),
        "effective_k": math.exp(mean_entropy),
    }
