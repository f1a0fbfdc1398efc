"""The HTTP service: ``create_app(model_dir, state_path, token=...)`` returns a FastAPI app for uvicorn.

Endpoints (JSON, under /v1; OpenAPI at /docs and /openapi.json):

    POST   /v1/score           rewards of n responses for a user, best first (best-of-n)
    POST   /v1/feedback        store a user's comparisons and re-fit their weights   (token)
    POST   /v1/next-question   the candidate pair the model is least sure about for the user
    GET    /v1/users/{id}      a user's weights, comparison count, timestamps
    DELETE /v1/users/{id}      erase a user's comparisons and weights                 (token)
    POST   /get_reward         OpenRLHF's remote reward protocol (--remote_rm_url): rewards of prompt+response
    GET    /v1/health, /v1/model

Layout: ``service.Service`` holds the model, the users' weights and the state database (concurrency is
described there); the endpoints are APIRouters in ``routes/`` that get the service and the token check as
dependencies (``deps``); ``errors`` turns every error into JSON; ``middleware`` limits body sizes.
"""

import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from fastapi import FastAPI

import pluralign
from pluralign.data.questions import Question
from pluralign.serve.errors import install_error_handlers
from pluralign.serve.middleware import BodyLimitMiddleware
from pluralign.serve.routes import ROUTERS
from pluralign.serve.schemas import MAX_BODY_BYTES, Candidate
from pluralign.serve.service import Service

__all__ = ["create_app"]

DESCRIPTION = (
    "Rewards are personal: each user is a mixture (weights over K prototypes) of the model's "
    "prototype preferences. Unknown users get the population's mean weights (zero-shot); "
    "`POST /v1/feedback` fits a user's weights from their comparisons (few-shot). Write endpoints "
    'need `Authorization: Bearer <token>`. Errors are JSON `{"error", "detail"}`.'
)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """On shutdown: stop the embedder's worker, close the state database."""
    service: Service = app.state.service
    try:
        yield
    finally:
        await service.embedder.aclose()
        service.close()


def create_app(
    model_dir: str | Path,
    state_path: str | Path = "state.db",
    *,
    token: str | None = None,
    read_only: bool = False,
    questions: str | Path | Sequence[Question | Candidate] | None = None,
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
    app = FastAPI(
        title="pluralign",
        version=pluralign.__version__,
        summary="Personalized reward models (PAL): score responses per user, learn users from feedback.",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.max_body_bytes = max_body_bytes
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    return app
