"""GET /v1/health and /v1/model: liveness, and the model behind the service with the request limits."""

import time
from typing import Annotated

from fastapi import APIRouter, Depends

import pluralign
from pluralign.serve.deps import ServiceDep, get_max_body_bytes
from pluralign.serve.schemas import (
    MAX_CANDIDATES,
    MAX_COMPARISONS,
    MAX_QUERIES,
    MAX_RESPONSES,
    MAX_TEXT_CHARS,
    MAX_USER_COMPARISONS,
    HealthResponse,
    ModelResponse,
)

router = APIRouter(tags=["service"])


@router.get("/v1/health", response_model=HealthResponse)
async def health(service: ServiceDep) -> HealthResponse:
    """Liveness: the model is loaded and the service answers."""
    return HealthResponse(read_only=service.read_only, uptime_s=round(time.time() - service.started, 3))


@router.get("/v1/model", response_model=ModelResponse)
async def model_info(
    service: ServiceDep, max_body_bytes: Annotated[int, Depends(get_max_body_bytes)]
) -> ModelResponse:
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
            "max_queries": MAX_QUERIES,
            "max_comparisons": MAX_COMPARISONS,
            "max_candidates": MAX_CANDIDATES,
            "max_text_chars": MAX_TEXT_CHARS,
            "max_user_comparisons": MAX_USER_COMPARISONS,
        },
    )
