"""The in-memory dataset: integer index arrays into tables of unique users, contexts and items.

Comparisons reference far fewer distinct texts than there are rows, so every model evaluates its maps on
the unique rows a batch touches and gathers (DESIGN.md, "Efficient training").
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from pluralign.errors import DataError

COLUMNS = ("user_id", "prompt", "chosen", "rejected")


@dataclass(frozen=True, eq=False)
class PreferenceData:
    """Pairwise preferences of many users: row ``j`` says user ``user_ids[user[j]]`` preferred
    ``items[chosen[j]]`` over ``items[rejected[j]]`` given ``contexts[context[j]]``.

    ``item_vectors`` ([len(items), Dx]) and ``context_vectors`` ([len(contexts), Dc], Dc may be 0) are set
    once the texts are embedded (or given directly, e.g. synthetic data). ``source_line`` keeps the 1-based
    line of each row in the file it came from, for error messages. Subsets share the tables.
    """

    user: np.ndarray
    context: np.ndarray
    chosen: np.ndarray
    rejected: np.ndarray
    user_ids: np.ndarray
    contexts: np.ndarray
    items: np.ndarray
    item_vectors: np.ndarray | None = None
    context_vectors: np.ndarray | None = None
    source_line: np.ndarray | None = None
    source: str | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.user)
        for name in ("context", "chosen", "rejected"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"index array '{name}' has {len(getattr(self, name))} rows, expected {n}")
        if self.item_vectors is not None and len(self.item_vectors) != len(self.items):
            raise ValueError(f"item_vectors has {len(self.item_vectors)} rows for {len(self.items)} items")
        if self.context_vectors is not None and len(self.context_vectors) != len(self.contexts):
            raise ValueError(
                f"context_vectors has {len(self.context_vectors)} rows for {len(self.contexts)} contexts"
            )

    # ----------------------------------------------------------------------------------------------------
    @classmethod
    def from_frame(cls, frame: pd.DataFrame, *, source: str | None = None) -> PreferenceData:
        """Index a validated frame with columns user_id, prompt, chosen, rejected (and optional ``_line``)."""
        missing = [c for c in COLUMNS if c not in frame.columns]
        if missing:
            raise DataError(f"missing column(s) {', '.join(missing)}", path=source)
        user, user_ids = pd.factorize(frame["user_id"].astype(str), sort=False)
        context, contexts = pd.factorize(frame["prompt"].astype(str), sort=False)
        responses = pd.concat([frame["chosen"], frame["rejected"]], ignore_index=True).astype(str)
        response_codes, items = pd.factorize(responses, sort=False)
        n = len(frame)
        lines = frame["_line"].to_numpy(np.int64) if "_line" in frame.columns else None
        return cls(
            user=user.astype(np.int64),
            context=context.astype(np.int64),
            chosen=response_codes[:n].astype(np.int64),
            rejected=response_codes[n:].astype(np.int64),
            user_ids=np.asarray(user_ids, dtype=object),
            contexts=np.asarray(contexts, dtype=object),
            items=np.asarray(items, dtype=object),
            source_line=lines,
            source=source,
        )

    def to_frame(self) -> pd.DataFrame:
        """The rows as a frame with columns user_id, prompt, chosen, rejected."""
        return pd.DataFrame(
            {
                "user_id": self.user_ids[self.user],
                "prompt": self.contexts[self.context],
                "chosen": self.items[self.chosen],
                "rejected": self.items[self.rejected],
            }
        )

    # ----------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.user)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def is_embedded(self) -> bool:
        return self.item_vectors is not None and self.context_vectors is not None

    @property
    def item_dim(self) -> int:
        if self.item_vectors is None:
            raise ValueError("the data is not embedded yet")
        return int(self.item_vectors.shape[1])

    @property
    def context_dim(self) -> int:
        if self.context_vectors is None:
            raise ValueError("the data is not embedded yet")
        return int(self.context_vectors.shape[1])

    def subset(self, rows: np.ndarray) -> PreferenceData:
        """Rows selected by a boolean mask or integer indices; the tables are shared, not copied."""
        rows = np.asarray(rows)
        return replace(
            self,
            user=self.user[rows],
            context=self.context[rows],
            chosen=self.chosen[rows],
            rejected=self.rejected[rows],
            source_line=None if self.source_line is None else self.source_line[rows],
        )

    def with_vectors(self, item_vectors: np.ndarray, context_vectors: np.ndarray) -> PreferenceData:
        """A copy carrying embeddings of its item and context tables."""
        return replace(
            self,
            item_vectors=np.ascontiguousarray(item_vectors, dtype=np.float32),
            context_vectors=np.ascontiguousarray(context_vectors, dtype=np.float32),
        )

    def users_present(self) -> np.ndarray:
        """Indices (into user_ids) of users with at least one row."""
        return np.unique(self.user)

    def comparisons_per_user(self) -> np.ndarray:
        """Row count per entry of user_ids."""
        return np.bincount(self.user, minlength=self.n_users)
