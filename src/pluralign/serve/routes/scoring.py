"""POST /v1/score: rewards of n responses for a user, best first (best-of-n)."""

import numpy as np
from fastapi import APIRouter

from pluralign.serve.deps import ServiceDep
from pluralign.serve.errors import ERRORS
from pluralign.serve.schemas import ScoreRequest, ScoreResponse

router = APIRouter(tags=["scoring"], responses=ERRORS)


@router.post("/v1/score", response_model=ScoreResponse)
async def score(body: ScoreRequest, service: ServiceDep) -> ScoreResponse:
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
