"""What each prototype of a trained model stands for, and how its users spread over the prototypes.

``explain(estimator, data, users=None, top=5)`` scores the data's texts by every prototype alone (the reward
of a user whose weights are the one-hot e_k) and returns an :class:`Explanation`. The CLI is
``pluralign explain RUN DATA``; the report page has the same tables (docs/explain.md).

**Units.** When every row of the data compares the same two responses (Polis and Persona rows: a statement
asked as a question, answered "Yes" / "No"), the unit is the prompt and prototype k's margin on it is

    m_k(c) = r_k(a, c) - r_k(b, c)

with ``a`` the *positive* response: one named "yes" or "agree" (any case), else the one chosen in more rows
(ties: the first row's chosen). For Polis that is how much prototype k agrees with the statement. When each
prompt has one pair of responses but the pairs differ between prompts, the unit is still the prompt and
``a`` is, per prompt, the response chosen in more of its rows (ties: its first row's chosen), so m_k is
how much prototype k favours the majority's answer. Otherwise (``unit="response"``, or prompts with more
than two responses) the unit is a distinct (prompt, response) and m_k is the reward centred within the
prompt, ``r_k(x, c) - mean of r_k(x', c)`` over the responses x' the data shows at c (only differences
within a prompt are learned from comparisons).

**Score.** Prototype k's score of a unit is its margin minus the mean margin of the other prototypes,

    score_k = m_k - (sum_{j != k} m_j) / (K - 1)        (score_k = m_k when K = 1),

so a unit every prototype likes equally scores 0: the top units are what sets prototype k apart, not what
everyone agrees on. ``favours`` are the ``top`` highest scores, ``disfavours`` the ``top`` lowest.

**What the voters did.** Beside the model's numbers every unit carries the data's: its rows, the share of
them where the positive response (response units: this response) was chosen, and the same share among the
rows of users whose dominant prototype (largest weight) is k.

**Users.** Over the model's users: how many have each prototype as dominant (argmax, ties: the lower k),
the mean weights, ``weight_spread``'s numbers (mean entropy over log K, mean total-variation distance from
the mean weight, effective_k = exp(entropy of the mean weight)) and ``user_effective_k``, the mean over users
of exp(entropy of their weights): how many prototypes a typical user mixes.

**Groups.** Given group labels (a users CSV with ``user_id`` and a group column, as the Polis reader's
``<stem>.users.csv`` with Polis's ``group_id``, or a mapping user id -> label), the contingency table of
group against dominant prototype and its adjusted Rand index (sklearn's ``adjusted_rand_score``; 1: the
dominant prototypes are the groups up to renaming, about 0: unrelated). Users without a label (an empty
cell or no row) are left out and counted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pluralign.data.comparisons import PreferenceData
from pluralign.errors import DataError
from pluralign.estimator import DataLike, PALEstimator
from pluralign.report.groups import (
    GROUP_COLUMN,
    default_users_file,
    group_agreement,
    read_groups,
    user_summary,
)

UNITS = ("auto", "prompt", "response")
#: responses taken as the positive answer of a two-response prompt (compared case-insensitively)
POSITIVE = ("yes", "agree", "i agree")
#: rows scored per call of the model (bounds the memory of large data)
CHUNK = 8192


@dataclass(frozen=True)
class Prototype:
    """One prototype's most and least favoured units (each a dict; see :func:`explain`), and its overall
    lean: the mean of its margins m_k over all units and the share of units where m_k > 0 (prompt units:
    where it gives the positive answer). A prototype that favours the positive answer everywhere more than
    the others (Polis: one that agrees more) has a high lean and all its scores positive."""

    prototype: int
    favours: list[dict[str, Any]]
    disfavours: list[dict[str, Any]]
    mean_margin: float = 0.0
    positive_units: float = 0.0


@dataclass(frozen=True)
class Explanation:
    """What :func:`explain` found; ``to_dict()`` is its JSON form (``pluralign explain --json``)."""

    estimator: str
    n_prototypes: int
    unit: str  # "prompt" or "response"
    definition: str
    n_rows: int
    n_units: int
    top: int
    prototypes: list[Prototype]
    users: dict[str, Any]
    groups: dict[str, Any] | None = None
    positive: str | None = None  # the positive response when every row compares the same two
    source: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def unit_rows(self, k: int, which: str = "favours", width: int = 80) -> list[dict[str, Any]]:
        """Table rows of prototype k's ``favours`` or ``disfavours``, the text cut to ``width`` (0: whole)."""
        rows = []
        for rank, unit in enumerate(getattr(self.prototypes[k], which), 1):
            row: dict[str, Any] = {"rank": rank, "text": shorten(unit["text"], width)}
            if self.unit == "prompt" and self.positive is None:
                row["positive"] = shorten(unit["positive"], 24)
            row |= {"score": unit["score"], "margin": unit["margin"], "others": unit["others"]}
            row |= {"rows": unit["n_rows"], "share": unit["share"]}
            row |= {"rows_k": unit["n_rows_dominant"], "share_k": unit["share_dominant"]}
            rows.append(row)
        return rows

    def user_rows(self) -> list[dict[str, Any]]:
        """One row per prototype: the users it is dominant for, their share, the mean weight on it, and its
        lean (mean margin, share of units with a positive margin)."""
        users = self.users
        return [
            {
                "prototype": k,
                "users": n,
                "share": share,
                "mean_weight": weight,
                "mean_margin": proto.mean_margin,
                "positive_units": proto.positive_units,
            }
            for k, (n, share, weight, proto) in enumerate(
                zip(
                    users["dominant"],
                    users["dominant_share"],
                    users["mean_weight"],
                    self.prototypes,
                    strict=True,
                )
            )
        ]

    def contingency_rows(self) -> list[dict[str, Any]]:
        """One row per group: its labelled users and how many have each prototype as dominant."""
        if self.groups is None:
            return []
        return [
            {"group": group, "users": sum(counts), **{f"p{k}": n for k, n in enumerate(counts)}}
            for group, counts in self.groups["contingency"].items()
        ]


def shorten(text: str, width: int) -> str:
    """One line (whitespace runs as single spaces) cut to ``width`` characters with an ellipsis (0: whole)."""
    text = " ".join(str(text).split())
    return text if width <= 0 or len(text) <= width else text[: max(width - 1, 1)] + "…"


def _common_prefix(texts: list[str]) -> str:
    first, last = min(texts), max(texts)  # the common prefix of all is that of the extremes
    n = next(
        (i for i, (a, b) in enumerate(zip(first, last, strict=False)) if a != b), min(len(first), len(last))
    )
    return first[:n]


def display_texts(texts: np.ndarray) -> np.ndarray:
    """The texts without the prefix and suffix they share, cut at a newline, quote, colon or question mark
    (never inside a sentence: shared first words stay), so that a Polis prompt shows its statement, not
    'On "<topic>": do you agree ...'. Multi-line texts are trimmed among those with the same first line
    (the prompts of one Polis conversation, when several are pooled), the others among themselves; a
    text alone in its set is unchanged."""
    texts = [str(t) for t in texts]
    heads = pd.Series([t.split("\n", 1)[0] if "\n" in t else None for t in texts], dtype=object)
    out = np.empty(len(texts), dtype=object)
    for rows in heads.groupby(heads.fillna("\0"), sort=False).indices.values():
        out[rows] = _trim([texts[i] for i in rows])
    return out


def _trim(texts: list[str]) -> np.ndarray:
    """``display_texts`` of one set of texts."""
    if len(texts) < 2:
        return np.asarray(texts, dtype=object)
    boundary = '\n"“”:?'
    prefix = _common_prefix(texts)
    start = max((prefix.rfind(ch) for ch in boundary), default=-1) + 1 if prefix else 0
    suffix = _common_prefix([t[start:][::-1] for t in texts])[::-1]
    cut = min((i for i, ch in enumerate(suffix) if ch in boundary), default=len(suffix)) if suffix else 0
    stop = len(suffix) - cut
    out = [t[start : len(t) - stop] if len(t) - stop > start else t for t in texts]
    return np.asarray([o.strip() or t for o, t in zip(out, texts, strict=True)], dtype=object)


def prototype_rewards(estimator: PALEstimator, items: np.ndarray, contexts: np.ndarray) -> np.ndarray:
    """r_k(x_i, c_i) per row i and prototype k, [n, K]: the model's reward of a user with weights e_k."""
    model = estimator.model_
    k = model.n_prototypes
    out = np.empty((len(items), k))
    eye = torch.eye(k)
    with torch.no_grad():
        model.eval()
        for start in range(0, len(items), CHUNK):
            x = torch.from_numpy(np.ascontiguousarray(items[start : start + CHUNK]))
            c = torch.from_numpy(np.ascontiguousarray(contexts[start : start + CHUNK]))
            for j in range(k):
                out[start : start + len(x), j] = (
                    model.rewards(eye[j].expand(len(x), k), x, c).double().numpy()
                )
    return out


def relative_scores(margins: np.ndarray) -> np.ndarray:
    """score_k = m_k - mean of the other prototypes' m_j, per unit ([n, K]; unchanged when K = 1)."""
    k = margins.shape[1]
    if k == 1:
        return margins.copy()
    return margins - (margins.sum(axis=1, keepdims=True) - margins) / (k - 1)


def _pairs(data: PreferenceData) -> pd.DataFrame:
    """Per prompt: its distinct unordered response pairs (columns context, lo, hi)."""
    lo, hi = np.minimum(data.chosen, data.rejected), np.maximum(data.chosen, data.rejected)
    return pd.DataFrame({"context": data.context, "lo": lo, "hi": hi}).drop_duplicates()


def _positive_per_prompt(
    data: PreferenceData, pairs: pd.DataFrame
) -> tuple[np.ndarray, np.ndarray, str | None]:
    """(positive item, negative item) per prompt in ``pairs`` order, and the global positive text if any."""
    n_items = len(data.items)
    if len(pairs[["lo", "hi"]].drop_duplicates()) == 1:
        a, b = int(pairs["lo"].iloc[0]), int(pairs["hi"].iloc[0])
        named = [i for i in (a, b) if str(data.items[i]).strip().casefold() in POSITIVE]
        if len(named) == 1:
            positive = named[0]
        else:
            wins = np.bincount(data.chosen, minlength=n_items)
            positive = a if wins[a] > wins[b] else b if wins[b] > wins[a] else int(data.chosen[0])
        negative = b if positive == a else a
        n = len(pairs)
        return np.full(n, positive), np.full(n, negative), str(data.items[positive])
    # one pair per prompt, pairs differ: per prompt, the response chosen more often there
    frame = pd.DataFrame({"context": data.context, "chosen": data.chosen, "row": np.arange(len(data))})
    wins = frame.groupby(["context", "chosen"]).agg(n=("row", "size"), first=("row", "min")).reset_index()
    wins = wins.sort_values(["context", "n", "first"], ascending=[True, False, True])
    best = wins.drop_duplicates("context").set_index("context")["chosen"]
    lo, hi = pairs["lo"].to_numpy(), pairs["hi"].to_numpy()
    positive = best.reindex(pairs["context"]).to_numpy()
    return positive, np.where(positive == lo, hi, lo), None


def explain(
    estimator: PALEstimator,
    data: DataLike,
    users: str | Path | Mapping[str, Any] | pd.Series | None = None,
    *,
    top: int = 5,
    unit: str = "auto",
    group_column: str = GROUP_COLUMN,
) -> Explanation:
    """Score ``data``'s prompts (or prompt-response pairs) by every prototype of ``estimator`` and rank
    them by how much more each prototype favours them than the others do; summarise the users' weights and,
    given ``users`` (a users CSV or a mapping user id -> group label), their agreement with the groups.

    Every unit (a dict) has: ``text`` (the prompt without what every prompt shares; response units:
    ``prompt`` text -> response, or the response alone without prompts), ``prompt``, ``positive`` /
    ``negative`` (prompt units) or ``response``, ``score``, ``margin`` (m_k), ``others`` (mean m_j of the
    other prototypes), ``n_rows``, ``share`` (of those rows choosing the positive response / this
    response), ``n_rows_dominant`` and ``share_dominant`` (the same over rows of users whose dominant
    prototype is k; None without rows).
    The definitions are in this module's docstring.
    """
    if unit not in UNITS:
        raise ValueError(f"unknown unit '{unit}', expected one of {list(UNITS)}")
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    estimator.check_fitted()
    data = estimator.prepare(data)
    if len(data) == 0:
        raise DataError("no comparisons to explain", path=data.source)
    k = estimator.model_.n_prototypes
    weights = estimator.user_weights().to_numpy(dtype=np.float64)
    dominant_of_user = weights.argmax(axis=1) if len(weights) else np.zeros(0, dtype=np.int64)
    rows = estimator.user_rows(data)
    row_dominant = np.where(rows >= 0, dominant_of_user[np.maximum(rows, 0)] if len(weights) else -1, -1)
    notes = []
    if (rows < 0).any():
        notes.append(
            f"{int((rows < 0).sum())} of {len(data)} rows are from users the model does not know: they count "
            "in 'share', not in 'share_k'"
        )

    pairs = _pairs(data)
    one_pair = not pairs["context"].duplicated().any() and bool((pairs["lo"] != pairs["hi"]).all())
    if unit == "prompt" and not one_pair:
        raise DataError(
            "unit 'prompt' needs one pair of responses per prompt; this data has prompts with more "
            "(use unit 'response')",
            path=data.source,
        )
    use_prompts = one_pair and unit != "response"
    display = display_texts(data.contexts)
    if use_prompts:
        positive, negative, global_positive = _positive_per_prompt(data, pairs)
        context = pairs["context"].to_numpy()
        both = np.concatenate([positive, negative])
        reward = prototype_rewards(
            estimator, data.item_vectors[both], data.context_vectors[np.concatenate([context, context])]
        )
        margins = reward[: len(context)] - reward[len(context) :]
        position = pd.Series(np.arange(len(context)), index=context)[data.context].to_numpy()
        chose = data.chosen == positive[position]
        units = [
            {
                "text": display[c],
                "prompt": str(data.contexts[c]),
                "positive": str(data.items[p]),
                "negative": str(data.items[q]),
            }
            for c, p, q in zip(context, positive, negative, strict=True)
        ]
        # each row is about one unit
        row_units, row_hit = position[None, :], chose[None, :]
    else:
        global_positive = None
        codes = pd.DataFrame(
            {
                "context": np.concatenate([data.context, data.context]),
                "item": np.concatenate([data.chosen, data.rejected]),
            }
        )
        unique = codes.drop_duplicates().reset_index(drop=True)
        context, item = unique["context"].to_numpy(), unique["item"].to_numpy()
        reward = prototype_rewards(estimator, data.item_vectors[item], data.context_vectors[context])
        means = pd.DataFrame(reward).groupby(context).transform("mean").to_numpy()
        margins = reward - means
        lookup = pd.Series(np.arange(len(unique)), index=pd.MultiIndex.from_frame(unique))
        chosen_unit = lookup.reindex(pd.MultiIndex.from_arrays([data.context, data.chosen])).to_numpy()
        rejected_unit = lookup.reindex(pd.MultiIndex.from_arrays([data.context, data.rejected])).to_numpy()
        units = [
            {
                "text": f"{display[c]} -> {data.items[i]}" if display[c] else str(data.items[i]),
                "prompt": str(data.contexts[c]),
                "response": str(data.items[i]),
            }
            for c, i in zip(context, item, strict=True)
        ]
        # each row is about two units: its chosen one (a hit) and its rejected one (a miss)
        row_units = np.stack([chosen_unit, rejected_unit])
        row_hit = np.stack([np.ones(len(data), bool), np.zeros(len(data), bool)])

    scores = relative_scores(margins)
    n_units = len(units)
    flat_units, flat_hit = row_units.ravel(), row_hit.ravel()
    flat_dominant = np.broadcast_to(row_dominant, row_units.shape).ravel()
    n_rows = np.bincount(flat_units, minlength=n_units)
    hits = np.bincount(flat_units, weights=flat_hit, minlength=n_units)
    others = np.zeros_like(margins) if k == 1 else (margins.sum(axis=1, keepdims=True) - margins) / (k - 1)
    shown = min(top, n_units)
    prototypes = []
    for j in range(k):
        mine = flat_dominant == j
        n_mine = np.bincount(flat_units[mine], minlength=n_units)
        hits_mine = np.bincount(flat_units[mine], weights=flat_hit[mine], minlength=n_units)
        order = np.lexsort((np.arange(n_units), -scores[:, j]))  # highest first, ties by data order

        def entry(i: int, j: int = j, n_mine: np.ndarray = n_mine, hits_mine: np.ndarray = hits_mine) -> dict:
            return {
                **units[i],
                "score": float(scores[i, j]),
                "margin": float(margins[i, j]),
                "others": float(others[i, j]),
                "n_rows": int(n_rows[i]),
                "share": float(hits[i] / n_rows[i]) if n_rows[i] else None,
                "n_rows_dominant": int(n_mine[i]),
                "share_dominant": float(hits_mine[i] / n_mine[i]) if n_mine[i] else None,
            }

        prototypes.append(
            Prototype(
                j,
                [entry(int(i)) for i in order[:shown]],
                [entry(int(i)) for i in order[::-1][:shown]],
                mean_margin=float(margins[:, j].mean()),
                positive_units=float((margins[:, j] > 0).mean()),
            )
        )

    groups = None
    if users is not None:
        labels = read_groups(users, group_column)
        dominant = pd.Series(dominant_of_user, index=estimator.users_.astype(str))
        given = isinstance(users, Mapping | pd.Series)
        groups = {"source": None if given else str(users), "column": None if given else labels.name}
        groups |= group_agreement(dominant, labels, k)
        if groups["n_labelled"] == 0:
            notes.append("no user of the model has a group label")
    if k == 1:
        notes.append("K = 1: one prototype, so scores are its own margins (no others to compare with)")
    definition = (
        "score_k = m_k - mean_{j != k} m_j; "
        + (
            "m_k = r_k(positive, prompt) - r_k(negative, prompt)"
            if use_prompts
            else "m_k = r_k(response, prompt) - mean over the prompt's responses of r_k"
        )
        + "; r_k = reward of a user with weights e_k"
    )
    return Explanation(
        estimator=type(estimator).__name__,
        n_prototypes=k,
        unit="prompt" if use_prompts else "response",
        definition=definition,
        n_rows=len(data),
        n_units=n_units,
        top=shown,
        prototypes=prototypes,
        users=user_summary(weights),
        groups=groups,
        positive=global_positive,
        source=data.source,
        notes=notes,
    )


__all__ = [
    "GROUP_COLUMN",
    "Explanation",
    "Prototype",
    "default_users_file",
    "display_texts",
    "explain",
    "group_agreement",
    "prototype_rewards",
    "read_groups",
    "relative_scores",
    "shorten",
    "user_summary",
]
