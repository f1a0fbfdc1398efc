"""POST /get_reward: OpenRLHF's remote reward model protocol (``--remote_rm_url http://HOST:PORT/get_reward``).

OpenRLHF posts ``{"query": [...], "prompts": [...], "labels": [...]}``, each query being its prompt and the
generated response decoded together, and reads ``{"rewards": [...]}``. Each response is the query minus its
prompt (the query must start with it). The user comes from the body (``user_id`` for all queries,
``user_ids`` one per query, or fixed prototype ``weights``), from the URL (``?user_id=alice``, since
OpenRLHF's body has no such field) or from the labels (``?users_from_labels=true``, with OpenRLHF's
``--label_key user_id``); with none of them every query gets the zero-shot weights. Like /v1/score it only
reads, so it needs no token.
"""

from typing import Annotated

import numpy as np
import torch
from fastapi import APIRouter, Query

from pluralign.data.questions import MAX_TEXT_CHARS
from pluralign.serve.deps import ServiceDep
from pluralign.serve.errors import ERRORS, ApiError
from pluralign.serve.schemas import MAX_USER_ID_CHARS, RewardRequest, RewardResponse
from pluralign.serve.service import Service

router = APIRouter(tags=["rlhf"], responses=ERRORS)


def invalid(field: str, detail: str) -> ApiError:
    return ApiError(422, "invalid request", f"field '{field}': {detail}")


def split_queries(body: RewardRequest) -> tuple[list[str], list[str]]:
    """(prompts, responses) of the queries: each response is its query minus the prompt prefix."""
    n = len(body.query)
    if body.prompts is None:
        prompts = [""] * n
    elif len(body.prompts) != n:
        raise invalid("prompts", f"{len(body.prompts)} prompts for {n} queries (one per query)")
    else:
        prompts = body.prompts
    responses = []
    for i, (query, prompt) in enumerate(zip(body.query, prompts, strict=True)):
        if not query.startswith(prompt):
            raise invalid(f"query.{i}", f"does not start with its prompt (prompts.{i})")
        response = query[len(prompt) :]
        if len(response) > MAX_TEXT_CHARS:
            raise invalid(f"query.{i}", f"the response is longer than {MAX_TEXT_CHARS} characters")
        responses.append(response)
    return prompts, responses


def user_weights(
    service: Service, body: RewardRequest, url_user: str | None, users_from_labels: bool
) -> tuple[torch.Tensor, list[str]]:
    """Weights per query ([n, K] or [K]) and their kind per query."""
    n = len(body.query)
    sources = [
        name
        for name, given in (
            ("user_id", body.user_id is not None),
            ("user_ids", body.user_ids is not None),
            ("weights", body.weights is not None),
            ("?user_id", url_user is not None),
            ("?users_from_labels", users_from_labels),
        )
        if given
    ]
    if len(sources) > 1:
        raise invalid(sources[1], f"give one of user_id, user_ids, weights (got {', '.join(sources)})")
    if body.weights is not None:
        if len(body.weights) != service.k:
            raise invalid("weights", f"{len(body.weights)} weights for K = {service.k} prototypes")
        return torch.tensor(body.weights, dtype=torch.float32), ["fixed"] * n
    ids: list[str] | None = None
    if body.user_ids is not None:
        if len(body.user_ids) != n:
            raise invalid("user_ids", f"{len(body.user_ids)} user ids for {n} queries (one per query)")
        ids = body.user_ids
    elif users_from_labels:
        labels = body.labels or []
        if len(labels) != n:
            raise invalid("labels", f"{len(labels)} labels for {n} queries (users_from_labels: one each)")
        ids = [str(label) for label in labels]
        bad = [i for i, u in enumerate(ids) if not 1 <= len(u) <= MAX_USER_ID_CHARS or labels[i] is None]
        if bad:
            raise invalid(f"labels.{bad[0]}", f"not a user id (1 to {MAX_USER_ID_CHARS} characters)")
    one = body.user_id if body.user_id is not None else url_user
    if ids is None:
        user = service.weights_of(one) if one is not None else None
        weights = service.zero_shot if user is None else user.weights
        return weights, [user.kind if user is not None else "zero-shot"] * n
    unique, inverse = np.unique(np.asarray(ids, dtype=object), return_inverse=True)
    found = [service.weights_of(str(u)) for u in unique]  # one lookup per distinct user
    table = torch.stack([u.weights for u in found])
    kinds = np.asarray([u.kind for u in found], dtype=object)[inverse]
    return table[torch.from_numpy(inverse.astype(np.int64))], kinds.tolist()


@router.post("/get_reward", response_model=RewardResponse)
async def get_reward(
    body: RewardRequest,
    service: ServiceDep,
    user_id: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=MAX_USER_ID_CHARS,
            description="The user of all queries, for clients whose body cannot carry one (OpenRLHF).",
        ),
    ] = None,
    users_from_labels: Annotated[
        bool, Query(description="Each query's label is its user id (OpenRLHF's --label_key user_id).")
    ] = False,
) -> RewardResponse:
    """Rewards of OpenRLHF queries (prompt + response) for a user, the users of each query, or fixed
    prototype weights (OpenRLHF's remote reward model protocol)."""
    prompts, responses = split_queries(body)
    weights, kinds = user_weights(service, body, user_id, users_from_labels)
    if service.context_dim:
        unique_prompts, codes = np.unique(np.asarray(prompts, dtype=object), return_inverse=True)
        # the groups are named after the body's fields, for the 422 of a text the encoder cannot embed
        vectors = await service.vectors({"prompts": unique_prompts.tolist(), "query": responses})
        contexts = vectors["prompts"][codes.reshape(-1)]
    else:  # a model trained without prompts: they carry no features
        vectors = await service.vectors({"query": responses})
        contexts = np.zeros((len(responses), 0), dtype=np.float32)
    rewards = service.rewards(weights, vectors["query"], contexts)
    return RewardResponse(rewards=rewards.tolist(), weights=kinds)
