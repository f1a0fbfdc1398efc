"""Evaluation protocols of the PAL paper: seen-user accuracy on held-out pairs, and the few-shot curve of
unseen users (fit their weights on n of their comparisons, score the rest)."""

from __future__ import annotations

from collections.abc import Sequence

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
