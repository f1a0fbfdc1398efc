"""Active onboarding for a fitted estimator: the next question for each user (``next_questions``).

The particle posterior and the question scores are ``pluralign.training.active``; this module turns an
estimator, a candidate pool and the users' answers so far into that machinery's tables and back into a
table of questions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from pluralign.data.comparisons import PreferenceData
from pluralign.errors import DataError, PluralignError
from pluralign.training.active import (
    OnboardingPosterior,
    check_model,
    check_strategy,
    pair_features,
    particle_features,
    prior_particles,
    question_scores,
)

if TYPE_CHECKING:
    from pluralign.estimator.base import PALEstimator


def _candidate_data(estimator: PALEstimator, candidates: Any) -> PreferenceData:
    """Candidate pairs as PreferenceData (chosen = a, rejected = b), embedded by the estimator."""
    if isinstance(candidates, PreferenceData):
        return estimator.prepare(candidates)
    if isinstance(candidates, pd.DataFrame):
        frame = candidates.copy()
        if "prompt" not in frame.columns:
            frame["prompt"] = ""
    else:
        try:
            rows = [tuple(c) for c in candidates]
        except TypeError:
            raise DataError(
                "candidates: expected a DataFrame (prompt, a, b) or (prompt, a, b) tuples"
            ) from None
        if any(len(r) != 3 for r in rows):
            raise DataError("candidates: every candidate must be a (prompt, a, b) tuple")
        frame = pd.DataFrame(rows, columns=["prompt", "a", "b"])
    if len(frame) == 0:
        raise PluralignError("the candidate pool is empty")
    for name in ("prompt", "a", "b"):
        if name not in frame.columns:
            raise DataError("missing column", path="candidates", field=name)
        values = frame[name]
        bad = ~values.map(lambda v: isinstance(v, str)).to_numpy()
        if name != "prompt":  # responses must say something; a prompt may be empty
            bad |= (values.astype(str).str.strip() == "").to_numpy()
        if bad.any():
            line = int(np.flatnonzero(bad)[0]) + 1
            raise DataError("expected a non-empty string", path="candidates", line=line, field=name)
    same = (frame["a"] == frame["b"]).to_numpy()
    if same.any():
        line = int(np.flatnonzero(same)[0]) + 1
        raise DataError("is identical to 'a'", path="candidates", line=line, field="b")
    frame = pd.DataFrame(
        {"user_id": "candidates", "prompt": frame["prompt"], "chosen": frame["a"], "rejected": frame["b"]}
    )
    return estimator.prepare(PreferenceData.from_frame(frame, source="candidates"))


def _pair_keys(data: PreferenceData) -> pd.Series:
    """One key per row: (prompt, unordered pair), as the service matches answered questions."""
    a, b = data.items[data.chosen].astype(str), data.items[data.rejected].astype(str)
    low, high = np.where(a <= b, a, b), np.where(a <= b, b, a)
    return pd.Series(data.contexts[data.context].astype(str)) + "\0" + low + "\0" + high


def next_questions(
    estimator: PALEstimator,
    candidates: Any,
    answers: Any = None,
    *,
    users: Sequence[str] | None = None,
    strategy: str = "info-gain",
    n_particles: int = 1024,
    lapse: float = 0.05,
    temperature: float = 1.0,
    seed: int | None = None,
    skip_answered: bool = True,
) -> pd.DataFrame:
    """The next question for each user: ``PALEstimator.next_questions`` (see there). ``skip_answered``
    False keeps pairs a user already answered among the candidates."""
    check_strategy(strategy)
    estimator.check_fitted()
    model = estimator.model_
    check_model(model)
    pool = _candidate_data(estimator, candidates)
    seed = estimator.seed if seed is None else seed
    answered = None if answers is None else estimator.prepare(answers)
    if users is None:
        if answered is None or len(answered) == 0:
            raise PluralignError("no users: pass answers or users")
        users = answered.user_ids[np.unique(answered.user)].astype(str)
    ids = pd.Index([str(u) for u in users])
    if ids.has_duplicates:
        raise DataError("duplicate user ids in users", field="users")
    local = np.zeros(0, dtype=np.int64) if answered is None else ids.get_indexer(answered.user_ids)
    rows = np.zeros(0, dtype=np.int64) if answered is None else np.flatnonzero(local[answered.user] >= 0)
    phi = pair_features(model, estimator.to_batch(pool, np.zeros(len(pool))), estimator.to_tables(pool))
    population = model.weights()[: estimator.n_seen_users_].detach()
    particles = prior_particles(n_particles, model.n_prototypes, population=population, seed=seed)
    posterior = OnboardingPosterior(model, particles, len(ids), lapse=lapse, temperature=temperature)
    asked = torch.zeros(len(ids), len(pool), dtype=torch.bool)
    point = None
    if len(rows):
        answered = answered.subset(rows)
        user = local[answered.user]
        # the user chose `chosen` over `rejected`: a pair (a = chosen, b = rejected) answered "a"
        answer_phi = pair_features(model, estimator.to_batch(answered, user), estimator.to_tables(answered))
        posterior.observe(torch.from_numpy(user), answer_phi, torch.ones(len(user), dtype=torch.bool))
        if skip_answered:
            hits = pd.DataFrame({"key": _pair_keys(answered), "user": user}).merge(
                pd.DataFrame({"key": _pair_keys(pool), "row": np.arange(len(pool))}), on="key"
            )
            asked[torch.tensor(hits["user"].to_numpy()), torch.tensor(hits["row"].to_numpy())] = True
        if strategy == "uncertainty":  # at the estimator's own few-shot fit, as score() would use
            fitted = estimator.fit_weights(answered)
            point = estimator.zero_shot_weights_.double().expand(len(ids), -1).clone()
            present = ids.get_indexer(fitted.index)
            point[torch.from_numpy(present)] = torch.tensor(fitted.filter(regex=r"^w\d+$").to_numpy())
    if strategy == "uncertainty" and point is None:
        point = estimator.zero_shot_weights_.double().expand(len(ids), -1).clone()
    generator = torch.Generator().manual_seed(seed)
    scores = question_scores(
        posterior, phi, strategy=strategy, asked=asked, point=point, generator=generator, dtype=torch.float64
    )
    exhausted = torch.isneginf(scores).all(dim=-1)
    if exhausted.any():
        who = ids[exhausted.numpy()]
        raise PluralignError(
            f"no question left for {len(who)} user(s) (e.g. {who[0]!r}): they answered every candidate"
        )
    best = scores.argmax(dim=-1)
    chosen_phi = phi[best]
    if strategy == "uncertainty":
        p_a = torch.sigmoid((chosen_phi * particle_features(model, point)).sum(-1))  # the model's own P(a)
    else:
        p_a = posterior.predictive(torch.arange(len(ids)), chosen_phi)
    pick = best.numpy()
    frame = pd.DataFrame(
        {
            "index": pick,
            "prompt": pool.contexts[pool.context[pick]].astype(str),
            "a": pool.items[pool.chosen[pick]].astype(str),
            "b": pool.items[pool.rejected[pick]].astype(str),
            "p_a": p_a.numpy(),
            "score": scores[torch.arange(len(ids)), best].numpy(),
            "n_answers": np.bincount(local[answered.user], minlength=len(ids)) if len(rows) else 0,
            "n_candidates": (~asked).sum(-1).numpy(),
        },
        index=ids,
    )
    frame.index.name = "user_id"
    return frame
