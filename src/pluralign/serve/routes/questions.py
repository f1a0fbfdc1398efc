"""POST /v1/next-question: the candidate pair to ask a user next (active onboarding)."""

import numpy as np
from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from pluralign.serve.deps import ServiceDep
from pluralign.serve.errors import ERRORS, ApiError
from pluralign.serve.schemas import NextQuestionRequest, NextQuestionResponse

router = APIRouter(tags=["users"], responses=ERRORS)


@router.post("/v1/next-question", response_model=NextQuestionResponse)
async def next_question(body: NextQuestionRequest, service: ServiceDep) -> NextQuestionResponse:
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
    if strategy != "uncertainty" and body.user_id not in service.state_users and service.known(body.user_id):
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
