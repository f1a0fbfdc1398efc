"""The HTTP service: ``create_app(model_dir, state_path, token=...)`` returns a FastAPI app for uvicorn.

Endpoints (JSON, under /v1; OpenAPI at /docs and /openapi.json):

    POST   /v1/score           rewards of n responses for a user, best first (best-of-n)
    POST   /v1/feedback        store a user's comparisons and re-fit their weights   (token)
    POST   /v1/next-question   the candidate pair the model is least sure about for the user
    GET    /v1/users/{id}      a user's weights, comparison count, timestamps
    DELETE /v1/users/{id}      erase a user's comparisons and weights                 (token)
    GET    /v1/health, /v1/model

Concurrency: one process, one event loop. Scoring runs on the loop (a few small matrix products). Feedback
for one user is serialized by a per-user asyncio lock: read the user's stored comparisons, embed, re-fit on
a worker thread (a private copy of the model, under a lock), then store the new comparisons and weights in
one SQLite transaction. The store's file lock refuses a second process on the same database.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at definition time.
import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
import torch
from fastapi import Depends, FastAPI, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

import pluralign
from pluralign.data.comparisons import PreferenceData
from pluralign.errors import PluralignError
from pluralign.serve.embedder import MicroBatchEmbedder
from pluralign.serve.schemas import (
    MAX_BODY_BYTES,
    MAX_CANDIDATES,
    MAX_COMPARISONS,
    MAX_RESPONSES,
    MAX_TEXT_CHARS,
    MAX_USER_ID_CHARS,
    Candidate,
    DeleteResponse,
    ErrorResponse,
    FeedbackRequest,
    FeedbackResponse,
    HealthResponse,
    ModelResponse,
    NextQuestionRequest,
    NextQuestionResponse,
    ScoreRequest,
    ScoreResponse,
    UserResponse,
)
from pluralign.serve.store import StateStore, StoredUser, iso

logger = logging.getLogger(__name__)

#: a user's stored comparisons are all re-fitted on each feedback; past this many, feedback is refused (409)
MAX_USER_COMPARISONS = 10_000
#: most candidates in a --questions pool
MAX_POOL = 100_000


class ApiError(Exception):
    """An error answered as JSON {"error", "detail"} with an HTTP status."""

    def __init__(self, status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = headers


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


def read_questions(path: str | Path) -> list[Candidate]:
    """A pool of candidate pairs: JSONL (one {"prompt", "a", "b"} a line) or a JSON list of them."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PluralignError(f"cannot read questions file {path}: {exc.strerror}") from None
    stripped = text.lstrip()
    try:
        if stripped.startswith("["):
            items = [(i + 1, item) for i, item in enumerate(json.loads(text))]
        else:
            items = [(n, json.loads(line)) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    except json.JSONDecodeError as exc:
        raise PluralignError(f"{path}: not JSON/JSONL: {exc}") from None
    pool = []
    for where, item in items:
        try:
            pool.append(Candidate.model_validate(item))
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "item"
            raise PluralignError(f"{path}:{where}: field '{field}': {first['msg']}") from None
    if not pool:
        raise PluralignError(f"{path}: no questions")
    if len(pool) > MAX_POOL:
        raise PluralignError(f"{path}: {len(pool):,} questions (at most {MAX_POOL:,})")
    return pool


class Service:
    """The model, the users' weights and the state database behind the endpoints."""

    def __init__(
        self,
        model_dir: str | Path,
        state_path: str | Path,
        *,
        token: str | None = None,
        read_only: bool = False,
        questions: str | Path | Sequence[Candidate] | None = None,
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
        model_dir = Path(model_dir)
        if (model_dir / "model").is_dir():
            model_dir = model_dir / "model"
        self.model_dir = model_dir
        est = PALEstimator.load(model_dir)
        if encoder is not None:
            est.encoder = encoder
        if cache_dir is not None:
            est.cache_dir = cache_dir
        self.est = est
        self.model = est.model_.eval()
        self.k = int(self.model.n_prototypes)
        self.context_dim = int(est.context_dim_)
        self.encoder = est.get_encoder()
        self.embedder = MicroBatchEmbedder(
            self.encoder, est.get_cache(), max_wait=batch_wait, max_texts=batch_texts
        )
        with torch.no_grad():
            table = self.model.weights().detach().float()
        self.checkpoint_users = {str(u): i for i, u in enumerate(est.users_)}
        self._checkpoint_table = table
        self.zero_shot = est.zero_shot_weights_.float()
        self.questions: list[Candidate] | None
        if questions is None or isinstance(questions, list | tuple):
            self.questions = None if questions is None else list(questions)
        else:
            self.questions = read_questions(questions)
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
        """Rewards of rows (item, context) for one user, as ``PALEstimator.reward`` computes them."""
        n = len(items)
        with torch.inference_mode():
            out = self.model.rewards(
                weights[None].expand(n, -1), torch.from_numpy(items), torch.from_numpy(contexts)
            )
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


# --- request body size ------------------------------------------------------------------------------------
class BodyLimitMiddleware:
    """Answers 413 to bodies over ``max_bytes`` (by Content-Length, or counted while reading)."""

    def __init__(self, app: Any, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _send_json(send, 400, {"error": "bad request", "detail": "invalid Content-Length"})
                    return
                if declared > self.max_bytes:
                    await self._reject(send)
                    return
        chunks, total, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # client went away
                return
            body = message.get("body", b"")
            total += len(body)
            if total > self.max_bytes:
                await self._reject(send)
                return
            chunks.append(body)
            more = message.get("more_body", False)
        body, replayed = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, send: Any) -> None:
        detail = f"request body is larger than {self.max_bytes:,} bytes"
        await _send_json(send, 413, {"error": "payload too large", "detail": detail})


async def _send_json(send: Any, status: int, payload: dict) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


UserIdParam = Annotated[str, PathParam(min_length=1, max_length=MAX_USER_ID_CHARS, description="User id.")]


# --- the app ----------------------------------------------------------------------------------------------
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "The body cannot be parsed (e.g. not UTF-8), or an invalid Content-Length.",
        401: "Missing or invalid bearer token.",
        403: "The service is read-only.",
        404: "Unknown user.",
        409: "The request conflicts with the user's state.",
        413: "Request body too large.",
        422: "Invalid request: the detail names the field.",
    }.items()
}


def _field(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) if parts else "body"


def create_app(
    model_dir: str | Path,
    state_path: str | Path = "state.db",
    *,
    token: str | None = None,
    read_only: bool = False,
    questions: str | Path | Sequence[Candidate] | None = None,
    encoder: str | None = None,
    cache_dir: str | Path | None = None,
    batch_wait: float = 0.005,
    batch_texts: int = 64,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> FastAPI:
    """Load the model and the state database and build the app (``app.state.service`` is the ``Service``)."""
    service = Service(
        model_dir,
        state_path,
        token=token,
        read_only=read_only,
        questions=questions,
        encoder=encoder,
        cache_dir=cache_dir,
        batch_wait=batch_wait,
        batch_texts=batch_texts,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await service.embedder.aclose()
            service.close()

    app = FastAPI(
        title="pluralign",
        version=pluralign.__version__,
        summary="Personalized reward models (PAL): score responses per user, learn users from feedback.",
        description=(
            "Rewards are personal: each user is a mixture (weights over K prototypes) of the model's "
            "prototype preferences. Unknown users get the population's mean weights (zero-shot); "
            "`POST /v1/feedback` fits a user's weights from their comparisons (few-shot). Write endpoints "
            'need `Authorization: Bearer <token>`. Errors are JSON `{"error", "detail"}`.'
        ),
        lifespan=lifespan,
    )
    app.state.service = service
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
    bearer = HTTPBearer(auto_error=False, description="The service's token (PLURALIGN_TOKEN / --token-file).")

    def require_write(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> None:
        service.check_token(credentials)

    # --- errors -----------------------------------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.error, "detail": exc.detail}, exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        fields = [
            {
                "field": "body" if e.get("type") == "json_invalid" else _field(e.get("loc", ())),
                "message": e.get("msg", "invalid"),
                "type": e.get("type"),
            }
            for e in exc.errors()
        ]
        detail = "; ".join(f"field '{f['field']}': {f['message']}" for f in fields[:5])
        return JSONResponse({"error": "invalid request", "detail": detail, "fields": fields}, 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        from http import HTTPStatus

        error = HTTPStatus(exc.status_code).phrase.lower()
        return JSONResponse(
            {"error": error, "detail": str(exc.detail)},
            exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(PluralignError)
    async def pluralign_error(request: Request, exc: PluralignError) -> JSONResponse:
        return JSONResponse({"error": "invalid request", "detail": str(exc)}, 422)

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(
            {"error": "internal error", "detail": "an unexpected error occurred; see the server log"}, 500
        )

    # --- endpoints --------------------------------------------------------------------------------------
    @app.post("/v1/score", response_model=ScoreResponse, responses=ERRORS, tags=["scoring"])
    async def score(body: ScoreRequest) -> ScoreResponse:
        """Reward of each response for the user and prompt, and the responses ranked best first."""
        user = service.weights_of(body.user_id)
        vectors = await service.vectors({"prompt": [body.prompt], "responses": body.responses})
        n = len(body.responses)
        contexts = np.repeat(vectors["prompt"], n, axis=0)
        rewards = service.rewards(user.weights, vectors["responses"], contexts)
        order = np.argsort(-rewards, kind="stable").tolist()
        return ScoreResponse(
            user_id=body.user_id, weights=user.kind, rewards=rewards.tolist(), order=order, best=order[0]
        )

    @app.post(
        "/v1/feedback",
        response_model=FeedbackResponse,
        responses=ERRORS,
        tags=["users"],
        dependencies=[Depends(require_write)],
    )
    async def feedback(body: FeedbackRequest) -> FeedbackResponse:
        """Store the user's comparisons and re-fit their weights from all their stored comparisons."""
        user_id = body.user_id
        new = [(c.prompt, c.chosen, c.rejected) for c in body.comparisons]
        async with service.user_lock(user_id):
            existing = await run_in_threadpool(service.store.comparisons, user_id)
            if len(existing) + len(new) > MAX_USER_COMPARISONS:
                raise ApiError(
                    409,
                    "too many comparisons",
                    f"user {user_id!r} has {len(existing)} stored comparisons; at most "
                    f"{MAX_USER_COMPARISONS} are kept per user",
                )
            # new texts first: an unknown text is reported against this request's fields
            await service.vectors(
                {
                    "comparisons.prompt": [p for p, _, _ in new],
                    "comparisons.chosen": [c for _, c, _ in new],
                    "comparisons.rejected": [r for _, _, r in new],
                }
            )
            rows = [*existing, *new]
            item_texts = list(dict.fromkeys(t for _, c, r in rows for t in (c, r)))
            prompt_texts = list(dict.fromkeys(p for p, _, _ in rows))
            vectors = await service.vectors({"prompt": prompt_texts, "items": item_texts})
            vectors["item_texts"], vectors["prompt_texts"] = item_texts, prompt_texts
            stored = await run_in_threadpool(service.fit_and_record, user_id, new, rows, vectors)
            service.stored_user_updated(stored)
        return FeedbackResponse(
            user_id=user_id, weights=stored.weights, n_comparisons=stored.n_comparisons, added=len(new)
        )

    @app.post("/v1/next-question", response_model=NextQuestionResponse, responses=ERRORS, tags=["users"])
    async def next_question(body: NextQuestionRequest) -> NextQuestionResponse:
        """The candidate pair whose answer the model is least sure of (preference probability nearest 0.5)."""
        pool = body.candidates if body.candidates is not None else service.questions
        if not pool:
            raise ApiError(
                422,
                "invalid request",
                "field 'candidates': required (the service was started without a --questions pool)",
            )
        positions = list(range(len(pool)))
        if body.skip_answered and body.user_id in service.state_users:
            answered = {
                (p, frozenset((c, r)))
                for p, c, r in await run_in_threadpool(service.store.comparisons, body.user_id)
            }
            positions = [
                i for i in positions if (pool[i].prompt, frozenset((pool[i].a, pool[i].b))) not in answered
            ]
            if not positions:
                raise ApiError(409, "no question left", f"user {body.user_id!r} has answered every candidate")
        chosen = [pool[i] for i in positions]
        user = service.weights_of(body.user_id)
        vectors = await service.vectors(
            {
                "prompt": [c.prompt for c in chosen],
                "a": [c.a for c in chosen],
                "b": [c.b for c in chosen],
            }
        )
        m = len(chosen)
        strategy = body.strategy
        if (
            strategy != "uncertainty"
            and body.user_id not in service.state_users
            and service.known(body.user_id)
        ):
            strategy = "uncertainty"  # weights from the checkpoint, no stored answers to build a posterior on
        if strategy == "uncertainty":
            items = np.concatenate([vectors["a"], vectors["b"]])
            contexts = np.concatenate([vectors["prompt"], vectors["prompt"]])
            rewards = service.rewards(user.weights, items, contexts)
            p_a = 1.0 / (1.0 + np.exp(-(rewards[:m] - rewards[m:])))
            best = int(np.argmin(np.abs(p_a - 0.5)))
        else:
            stored, answers = [], {}
            if body.user_id in service.state_users:
                stored = await run_in_threadpool(service.store.comparisons, body.user_id)
                answers = await service.vectors(
                    {
                        "answers.prompt": [p for p, _, _ in stored],
                        "answers.chosen": [c for _, c, _ in stored],
                        "answers.rejected": [r for _, _, r in stored],
                    }
                )
            pool_rows = [(c.prompt, c.a, c.b) for c in chosen]
            best, p_best = await run_in_threadpool(
                service.active_question, body.user_id, strategy, (pool_rows, vectors), (stored, answers)
            )
            p_a = np.full(m, p_best)
        pick = chosen[best]
        return NextQuestionResponse(
            user_id=body.user_id,
            weights=user.kind,
            index=positions[best],
            prompt=pick.prompt,
            a=pick.a,
            b=pick.b,
            p_a=float(p_a[best]),
            strategy=strategy,
            n_candidates=m,
        )

    @app.get("/v1/users/{user_id:path}", response_model=UserResponse, responses=ERRORS, tags=["users"])
    async def get_user(user_id: UserIdParam) -> UserResponse:
        """A user's weights, how many comparisons they rest on, and when they were created and updated."""
        stored = service.state_users.get(user_id)
        if stored is not None:
            return UserResponse(
                user_id=user_id,
                source="feedback",
                weights=stored.weights,
                n_comparisons=stored.n_comparisons,
                created_at=iso(stored.created_at),
                updated_at=iso(stored.updated_at),
            )
        if service.in_checkpoint(user_id):
            return UserResponse(
                user_id=user_id,
                source="checkpoint",
                weights=service.weights_of(user_id).weights.double().tolist(),
                n_comparisons=0,
                created_at=None,
                updated_at=None,
            )
        raise ApiError(404, "not found", f"unknown user {user_id!r}")

    @app.delete(
        "/v1/users/{user_id:path}",
        response_model=DeleteResponse,
        responses=ERRORS,
        tags=["users"],
        dependencies=[Depends(require_write)],
    )
    async def delete_user(user_id: UserIdParam) -> DeleteResponse:
        """Erase the user's comparisons and weights (a checkpoint user then gets zero-shot weights)."""
        async with service.user_lock(user_id):
            if not service.known(user_id):
                raise ApiError(404, "not found", f"unknown user {user_id!r}")
            deleted = await run_in_threadpool(
                service.store.delete_user, user_id, tombstone=user_id in service.checkpoint_users
            )
            service.user_deleted(user_id)
        return DeleteResponse(user_id=user_id, comparisons_deleted=deleted)

    @app.get("/v1/health", response_model=HealthResponse, tags=["service"])
    async def health() -> HealthResponse:
        """Liveness: the model is loaded and the service answers."""
        return HealthResponse(read_only=service.read_only, uptime_s=round(time.time() - service.started, 3))

    @app.get("/v1/model", response_model=ModelResponse, tags=["service"])
    async def model_info() -> ModelResponse:
        """The model behind the service: type, K, encoder, users, version and request limits."""
        est = service.est
        return ModelResponse(
            model_type=est.model_.kind,
            estimator=type(est).__name__,
            n_prototypes=service.k,
            encoder_id=service.encoder.id,
            checkpoint_users=len(service.checkpoint_users),
            state_users=len(service.state_users),
            zero_shot_weights=service.zero_shot.double().tolist(),
            version=pluralign.__version__,
            read_only=service.read_only,
            limits={
                "max_body_bytes": max_body_bytes,
                "max_responses": MAX_RESPONSES,
                "max_comparisons": MAX_COMPARISONS,
                "max_candidates": MAX_CANDIDATES,
                "max_text_chars": MAX_TEXT_CHARS,
                "max_user_comparisons": MAX_USER_COMPARISONS,
            },
        )

    return app
