"""Users over prototypes, for :mod:`pluralign.report.explain`: dominant prototypes and the spread of the
weights, group labels read from a users CSV, and the agreement of dominant prototype with group (ARI)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pluralign.errors import DataError
from pluralign.evaluation import weight_spread

#: the group label column of the users file `pluralign datasets polis` writes
GROUP_COLUMN = "group_id"


def read_groups(users: str | Path | Mapping[str, Any] | pd.Series, column: str = GROUP_COLUMN) -> pd.Series:
    """Group label per user id from a users CSV (``user_id`` + ``column``) or a mapping; empty labels are
    dropped. ``group_id`` and ``group-id`` name the same column (Polis writes one, the reader the other).
    With a ``conversation`` column (the users file of several Polis conversations) labels are
    ``<conversation>/<group>``: Polis numbers its groups per conversation, so group 0 of one conversation
    has nothing to do with group 0 of another."""
    if isinstance(users, Mapping | pd.Series):
        labels = pd.Series(
            {str(u): "" if g is None else str(g) for u, g in dict(users).items()}, dtype=object
        )
        return labels[labels.str.strip() != ""]
    path = Path(users)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise DataError("no such users file", path=path) from None
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"not a readable CSV ({exc})", path=path) from None
    if column not in frame.columns:
        swapped = column.replace("-", "_") if "-" in column else column.replace("_", "-")
        if swapped not in frame.columns:
            raise DataError(
                f"no group column '{column}' (columns: {', '.join(map(str, frame.columns))}; "
                "choose one with --group-column)",
                path=path,
                field=column,
            )
        column = swapped
    if "user_id" not in frame.columns:
        raise DataError("no 'user_id' column", path=path, field="user_id")
    labels = frame.set_index(frame["user_id"].astype(str))[column].astype(str).str.strip()
    if "conversation" in frame.columns and column != "conversation":
        conversation = frame["conversation"].astype(str).str.strip().to_numpy()
        labels = labels.where(labels == "", conversation + "/" + labels)
    if labels.index.duplicated().any():
        raise DataError(f"user '{labels.index[labels.index.duplicated()][0]}' appears twice", path=path)
    return labels[labels != ""].rename(column)


def _group_order(labels: list[str]) -> list[str]:
    """Group labels sorted as numbers when they all are, else as text."""
    try:
        return sorted(labels, key=float)
    except ValueError:
        return sorted(labels)


def group_agreement(dominant: pd.Series, labels: pd.Series, n_prototypes: int) -> dict[str, Any]:
    """Adjusted Rand index of dominant prototype (per user id) against group label, and the contingency."""
    from sklearn.metrics import adjusted_rand_score

    shared = dominant.index.intersection(labels.index)
    group, proto = labels.loc[shared].to_numpy(dtype=str), dominant.loc[shared].to_numpy()
    order = _group_order(sorted(set(group.tolist())))
    contingency = {g: np.bincount(proto[group == g], minlength=n_prototypes).tolist() for g in order}
    return {
        "ari": float(adjusted_rand_score(group, proto)) if len(shared) >= 2 else None,
        "n_labelled": len(shared),
        "n_unlabelled": len(dominant) - len(shared),
        "n_unknown": len(labels.index.difference(dominant.index)),
        "n_groups": len(order),
        "contingency": contingency,
    }


def user_summary(weights: np.ndarray) -> dict[str, Any]:
    """Dominant prototypes, mean weights and the spread of users' weights ([n_users, K])."""
    n, k = weights.shape
    dominant = np.bincount(weights.argmax(axis=1), minlength=k) if n else np.zeros(k, dtype=np.int64)
    w = np.clip(weights, 0.0, 1.0)
    entropy = -np.where(w > 0, w * np.log(np.where(w > 0, w, 1.0)), 0.0).sum(axis=1)
    spread = weight_spread(weights) if n else {"entropy": None, "distance": None, "effective_k": None}
    return {
        "n_users": n,
        "dominant": dominant.tolist(),
        "dominant_share": (dominant / max(n, 1)).tolist(),
        "mean_weight": (weights.mean(axis=0) if n else np.zeros(k)).tolist(),
        **spread,
        "user_effective_k": float(np.exp(entropy).mean()) if n else None,
    }


def default_users_file(data: str | Path) -> Path | None:
    """``<stem>.users.csv`` beside a rows file (what ``pluralign datasets polis`` writes), if it exists."""
    path = Path(data)
    candidate = path.with_name(f"{path.stem}.users.csv")
    return candidate if path.is_file() and candidate.is_file() else None
