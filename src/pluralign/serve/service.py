"""The state behind the endpoints: the model, the users' weights (checkpoint, fitted from feedback, or
zero-shot) and the state database.

Concurrency: one process, one event loop. Scoring runs on the loop (a few small matrix products). Feedback
for one user is serialized by a per-user asyncio lock: read the user's stored comparisons, embed, re-fit on
a worker thread (a private copy of the model, under a lock), then store the new comparisons and weights in
one SQLite transaction. The store's file lock refuses a second process on the same database.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from pluralign.checkpoint import model_directory
from pluralign.data.comparisons import PreferenceData
from pluralign.data.questions import Question, read_questions
from pluralign.errors import PluralignError
from pluralign.serve.embedder import MicroBatchEmbedder
from pluralign.serve.errors import ApiError
from pluralign.serve.store import StateStore, StoredUser

if TYPE_CHECKING:
    from fastapi.security import HTTPAuthorizationCredentials

    from pluralign.serve.schemas import Candidate

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class UserWeights:
    weights: torch.Tensor  # float32 [K]
    kind: str  # "fitted" | "zero-shot"


def model_fingerprint(model_dir: Path) -> str:
    """sha256 of the checkpoint's config and tensors: stored weights are only valid for this model."""
    digest = hashlib.sha256()
    for name in ("config.json", "model.safetensors"):
        path = model_dir / name
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


class Service:
    """The model, the users' weights and the state database behind the endpoints."""

    def __init__(
        self,
        model_dir: str | Path,
        state_path: str | Path,
        *,
        token: str | None = None,
        read_only: bool = False,
        questions: str | Path | Sequence[Question | Candidate] | None = None,
        encoder: str | None = None,
        cache_dir: str | Path | None = None,
        batch_wait: float = 0.005,
        batch_texts: int = 64,
    ) -> None:
        from pluralign.estimator import PALEstimator

        if not read_only and not token:
            raise PluralignError(
                "refusing to start in write mode without a token: set PLURALIGN_TOKEN or pass --token-file "
                "(or start with --read-only)"
            )
        self.token = token
        self.read_only = read_only
        self.started = time.time()
        self.model_dir = model_dir = model_directory(model_dir)
        est = PALEstimator.load(model_dir)
        if encoder is not None:
            est.encoder = encoder
        if cache_dir is not None:
            est.cache_dir = cache_dir
        self.est = est
        self.model = est.model_.eval()
        self.k = int(self.model.n_prototypes)
        self.context_dim = int(est.context_dim_)
        self.questions: list[Question | Candidate] | None
        if questions is None or isinstance(questions, list | tuple):
            self.questions = None if questions is None else list(questions)
        else:
            self.questions = read_questions(questions)
        self.encoder = est.get_encoder()
        self.embedder = MicroBatchEmbedder(
            self.encoder, est.get_cache(), max_wait=batch_wait, max_texts=batch_texts
        )
        with torch.no_grad():
            table = self.model.weights().detach().float()
        self.checkpoint_users = {str(u): i for i, u in enumerate(est.users_)}
        self._checkpoint_table = table
        self.zero_shot = est.zero_shot_weights_.float()
        # fitting: on a private copy of the model (PAL-A's fit toggles requires_grad), one fit at a time
        self._fitter = est.copy()
        self._fit_lock = threading.Lock()
        self._user_locks: dict[str, list[Any]] = {}
        self.store = StateStore(state_path)
        try:
            self._load_state()
        except BaseException:
            self.close()
            raise

    # --- state ------------------------------------------------------------------------------------------
    def _load_state(self) -> None:
        fingerprint = model_fingerprint(self.model_dir)
        self.erased = self.store.erased()
        users = {u.user_id: u for u in self.store.users()}
        stored = self.store.get_meta("model_fingerprint")
        if users and stored != fingerprint:
            logger.warning(
                "state database %s was written for another model (%s); re-fitting %d users' weights from "
                "their stored comparisons",
                self.store.path,
                stored,
                len(users),
            )
            self._refit_all(users)
            users = {u.user_id: u for u in self.store.users()}
        self.store.set_meta("model_fingerprint", fingerprint)
        self.state_users: dict[str, StoredUser] = users
        self._state_weights = {u: torch.tensor(s.weights, dtype=torch.float32) for u, s in users.items()}

    def _refit_all(self, users: dict[str, StoredUser]) -> None:
        rows = self.store.all_comparisons()
        frame = pd.DataFrame(rows, columns=["user_id", "prompt", "chosen", "rejected"])
        data = PreferenceData.from_frame(frame)
        items = self.embedder.embed_sync(list(data.items))
        contexts = self._context_vectors_sync(list(data.contexts))
        weights = self._adapt(data.with_vectors(items, contexts))
        self.store.set_weights({u: weights.loc[u, self._weight_columns].tolist() for u in weights.index})

    def _context_vectors_sync(self, prompts: list[str]) -> np.ndarray:
        if not self.context_dim:
            return np.zeros((len(prompts), 0), dtype=np.float32)
        return self.embedder.embed_sync(prompts)

    @property
    def _weight_columns(self) -> list[str]:
        return [f"w{k}" for k in range(self.k)]

    def close(self) -> None:
        self.embedder.close()
        if getattr(self, "store", None) is not None:
            self.store.close()

    # --- users ------------------------------------------------------------------------------------------
    def in_checkpoint(self, user_id: str) -> bool:
        return user_id in self.checkpoint_users and user_id not in self.erased

    def known(self, user_id: str) -> bool:
        return user_id in self.state_users or self.in_checkpoint(user_id)

    def weights_of(self, user_id: str) -> UserWeights:
        weights = self._state_weights.get(user_id)
        if weights is not None:
            return UserWeights(weights, "fitted")
        if self.in_checkpoint(user_id):
            return UserWeights(self._checkpoint_table[self.checkpoint_users[user_id]], "fitted")
        return UserWeights(self.zero_shot, "zero-shot")

    @contextlib.asynccontextmanager
    async def user_lock(self, user_id: str) -> AsyncIterator[None]:
        """Serializes writes of one user (all requests run on one event loop, so an asyncio lock suffices)."""
        entry = self._user_locks.get(user_id)
        if entry is None:
            entry = self._user_locks[user_id] = [asyncio.Lock(), 0]
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._user_locks[user_id]

    # --- model ------------------------------------------------------------------------------------------
    async def vectors(self, groups: dict[str, list[str]]) -> dict[str, np.ndarray]:
        """Embed each named group of texts (one micro-batched call); a bad text is a 422 naming its group."""
        skip = {name for name in groups if name.endswith("prompt") and not self.context_dim}
        texts = [t for name, group in groups.items() if name not in skip for t in group]
        try:
            table = await self.embedder.embed(texts)
        except PluralignError as exc:
            for name, group in groups.items():  # which field? (error path only)
                if name in skip:
                    continue
                try:
                    await self.embedder.embed(group)
                except PluralignError:
                    raise ApiError(422, "invalid request", f"field '{name}': {exc}") from None
            raise ApiError(422, "invalid request", str(exc)) from None
        out, start = {}, 0
        for name, group in groups.items():
            if name in skip:
                out[name] = np.zeros((len(group), 0), dtype=np.float32)
                continue
            out[name] = table[start : start + len(group)]
            start += len(group)
        return out

    def rewards(self, weights: torch.Tensor, items: np.ndarray, contexts: np.ndarray) -> np.ndarray:
        """Rewards of rows (item, context) for one user (weights [K]) or one weight row each ([n, K]), as
        ``PALEstimator.reward`` computes them."""
        n = len(items)
        if weights.dim() == 1:
            weights = weights[None].expand(n, -1)
        with torch.inference_mode():
            out = self.model.rewards(weights, torch.from_numpy(items), torch.from_numpy(contexts))
        return out.double().numpy()

    def _adapt(self, data: PreferenceData) -> pd.DataFrame:
        """Few-shot fit of the users in ``data`` (already embedded) on the private model copy."""
        with self._fit_lock:
            return self._fitter.fit_weights(data)

    def fit_and_record(
        self,
        user_id: str,
        new: list[tuple[str, str, str]],
        rows: list[tuple[str, str, str]],
        vectors: dict[str, np.ndarray],
    ) -> StoredUser:
        """Re-fit the user on ``rows`` (stored + new); store ``new`` and the weights in one transaction."""
        frame = pd.DataFrame(rows, columns=["prompt", "chosen", "rejected"])
        frame.insert(0, "user_id", user_id)
        data = PreferenceData.from_frame(frame)
        items = vectors["items"][pd.Index(vectors["item_texts"]).get_indexer(data.items)]
        contexts = vectors["prompt"][pd.Index(vectors["prompt_texts"]).get_indexer(data.contexts)]
        fitted = self._adapt(data.with_vectors(items, contexts))
        weights = fitted.loc[user_id, self._weight_columns].to_numpy(dtype=np.float64)
        n = int(fitted.loc[user_id, "n_comparisons"])
        return self.store.record_feedback(user_id, new, weights.tolist(), n)

    def active_question(
        self,
        user_id: str,
        strategy: str,
        pool: tuple[list[tuple[str, str, str]], dict[str, np.ndarray]],
        answers: tuple[list[tuple[str, str, str]], dict[str, np.ndarray]],
    ) -> tuple[int, float]:
        """Position of the next question in ``pool`` (rows prompt, a, b and their vectors) for a user with
        the stored ``answers`` (rows prompt, chosen, rejected), and its P(a); pluralign.training.active."""
        from pluralign.estimator.onboarding import next_questions

        def embedded(rows: list[tuple[str, str, str]], vec: dict[str, np.ndarray], names: tuple[str, ...]):
            n = len(rows)
            return PreferenceData(
                user=np.zeros(n, dtype=np.int64),
                context=np.arange(n),
                chosen=np.arange(n),
                rejected=np.arange(n, 2 * n),
                user_ids=np.array([user_id], dtype=object),
                contexts=np.array([r[0] for r in rows], dtype=object),
                items=np.array([r[1] for r in rows] + [r[2] for r in rows], dtype=object),
                item_vectors=np.concatenate([vec[names[1]], vec[names[2]]]),
                context_vectors=vec[names[0]],
            )

        candidates = embedded(*pool, ("prompt", "a", "b"))
        names = ("answers.prompt", "answers.chosen", "answers.rejected")
        stored = embedded(*answers, names) if answers[0] else None
        # answered pairs were already left out (or deliberately kept, skip_answered=false)
        out = next_questions(
            self.est, candidates, stored, users=[user_id], strategy=strategy, skip_answered=False
        )
        return int(out["index"].iloc[0]), float(out["p_a"].iloc[0])

    def stored_user_updated(self, user: StoredUser) -> None:
        self.state_users[user.user_id] = user
        self._state_weights[user.user_id] = torch.tensor(user.weights, dtype=torch.float32)
        self.erased.discard(user.user_id)

    def user_deleted(self, user_id: str) -> None:
        self.state_users.pop(user_id, None)
        self._state_weights.pop(user_id, None)
        if user_id in self.checkpoint_users:
            self.erased.add(user_id)

    def check_token(self, credentials: HTTPAuthorizationCredentials | None) -> None:
        if self.read_only:
            raise ApiError(403, "read-only", "this service was started with --read-only: writes are disabled")
        challenge = {"WWW-Authenticate": "Bearer"}
        if credentials is None:
            raise ApiError(401, "unauthorized", "missing 'Authorization: Bearer <token>' header", challenge)
        if not hmac.compare_digest(credentials.credentials.encode(), (self.token or "").encode()):
            raise ApiError(401, "unauthorized", "invalid token", challenge)
