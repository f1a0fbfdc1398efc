"""A user's state: POST /v1/feedback (store comparisons, re-fit weights), GET and DELETE /v1/users/{id}."""

from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool

from pluralign.serve.deps import ServiceDep, UserIdParam, require_token
from pluralign.serve.errors import ERRORS, ApiError
from pluralign.serve.schemas import (
    MAX_USER_COMPARISONS,
    DeleteResponse,
    FeedbackRequest,
    FeedbackResponse,
    UserResponse,
)
from pluralign.serve.store import iso

router = APIRouter(tags=["users"], responses=ERRORS)


@router.post("/v1/feedback", response_model=FeedbackResponse, dependencies=[Depends(require_token)])
async def feedback(body: FeedbackRequest, service: ServiceDep) -> FeedbackResponse:
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


@router.get("/v1/users/{user_id:path}", response_model=UserResponse)
async def get_user(user_id: UserIdParam, service: ServiceDep) -> UserResponse:
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


@router.delete(
    "/v1/users/{user_id:path}", response_model=DeleteResponse, dependencies=[Depends(require_token)]
)
async def delete_user(user_id: UserIdParam, service: ServiceDep) -> DeleteResponse:
    """Erase the user's comparisons and weights (a checkpoint user then gets zero-shot weights)."""
    async with service.user_lock(user_id):
        if not service.known(user_id):
            raise ApiError(404, "not found", f"unknown user {user_id!r}")
        deleted = await run_in_threadpool(
            service.store.delete_user, user_id, tombstone=user_id in service.checkpoint_users
        )
        service.user_deleted(user_id)
    return DeleteResponse(user_id=user_id, comparisons_deleted=deleted)
