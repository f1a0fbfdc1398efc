"""Where ``PersonalReward``'s rewards come from: an estimator in this process, or a ``pluralign serve``.

A scorer maps rendered (prompt, completion) texts and either user ids or one fixed weight vector to rewards
in one call: ``LocalScorer`` is ``PALEstimator.reward`` (one embedding call for the batch's completions,
through the estimator's cache); ``RemoteScorer`` posts the batch to the service's ``/get_reward`` in as few
requests as the service's limits allow.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from pluralign.errors import PluralignError

if TYPE_CHECKING:
    from pluralign.client import PluralignClient
    from pluralign.estimator import PALEstimator


class Scorer(Protocol):
    n_prototypes: int

    def score(
        self,
        prompts: list[str],
        completions: list[str],
        user_ids: list[str] | None,
        weights: np.ndarray | None,
    ) -> np.ndarray: ...

    def close(self) -> None: ...


class LocalScorer:
    """``PALEstimator.reward`` of a fitted estimator (users or fixed weights)."""

    def __init__(self, estimator: PALEstimator) -> None:
        estimator.check_fitted()
        self.estimator = estimator
        self.n_prototypes = int(estimator.model_.n_prototypes)

    @classmethod
    def load(cls, estimator: PALEstimator | str | Path) -> LocalScorer:
        """From an estimator, or a saved one's directory (a run directory holding ``model/``, or that)."""
        if isinstance(estimator, str | Path):
            from pluralign.estimator import PALEstimator

            estimator = PALEstimator.load(estimator)
        return cls(estimator)

    def score(
        self,
        prompts: list[str],
        completions: list[str],
        user_ids: list[str] | None,
        weights: np.ndarray | None,
    ) -> np.ndarray:
        return self.estimator.reward(user_ids, prompts, completions, weights=weights)

    def close(self) -> None:
        """Nothing to release (the estimator belongs to the caller)."""

    def __repr__(self) -> str:
        return f"LocalScorer({type(self.estimator).__name__}, K={self.n_prototypes})"


class RemoteScorer:
    """A ``pluralign serve``'s ``POST /get_reward``, batched within the service's request limits."""

    def __init__(self, client: PluralignClient, *, owns_client: bool = False) -> None:
        self.client = client
        self.owns_client = owns_client
        info = client.model_info()
        self.n_prototypes = int(info["n_prototypes"])
        limits = info.get("limits", {})
        self.max_queries = int(limits.get("max_queries", 64))
        # leave room for the JSON around the lists and the user / weights fields
        self.max_bytes = int(limits.get("max_body_bytes", 1 << 20)) - 4096

    @classmethod
    def connect(
        cls, url: str, *, token: str | None = None, timeout: float = 60.0, transport: Any = None
    ) -> RemoteScorer:
        from pluralign.client import PluralignClient

        client = PluralignClient(url, token=token, timeout=timeout, transport=transport)
        try:
            return cls(client, owns_client=True)
        except BaseException:
            client.close()
            raise

    def score(
        self,
        prompts: list[str],
        completions: list[str],
        user_ids: list[str] | None,
        weights: np.ndarray | None,
    ) -> np.ndarray:
        queries = [p + c for p, c in zip(prompts, completions, strict=True)]
        if not queries:
            return np.zeros(0)
        out: list[float] = []
        for start, stop in self._chunks(queries, prompts, user_ids):
            answer = self.client.get_reward(
                queries[start:stop],
                prompts[start:stop],
                user_ids=None if user_ids is None else user_ids[start:stop],
                weights=None if weights is None else [float(w) for w in weights],
            )
            out.extend(answer["rewards"])
        if len(out) != len(queries):
            raise PluralignError(f"the service answered {len(out)} rewards for {len(queries)} completions")
        return np.asarray(out, dtype=np.float64)

    def _chunks(
        self, queries: list[str], prompts: list[str], user_ids: list[str] | None
    ) -> list[tuple[int, int]]:
        """[start, stop) slices of at most ``max_queries`` rows and about ``max_bytes`` of JSON each."""
        users = user_ids or [""] * len(queries)
        sizes = np.array(
            [
                len(json.dumps(q)) + len(json.dumps(p)) + len(json.dumps(u)) + 6
                for q, p, u in zip(queries, prompts, users, strict=True)
            ],
            dtype=np.int64,
        )
        if sizes.size and sizes.max() > self.max_bytes:
            raise PluralignError(
                f"completion {int(sizes.argmax())} is too long for one request to the service "
                f"({int(sizes.max()):,} bytes of JSON, limit {self.max_bytes:,})"
            )
        slices, start, total = [], 0, 0
        for i, size in enumerate(sizes.tolist()):
            if i > start and (i - start >= self.max_queries or total + size > self.max_bytes):
                slices.append((start, i))
                start, total = i, 0
            total += size
        slices.append((start, len(sizes)))
        return slices

    def close(self) -> None:
        if self.owns_client:
            self.client.close()

    def __repr__(self) -> str:
        return f"RemoteScorer({self.client.base_url!r}, K={self.n_prototypes})"
