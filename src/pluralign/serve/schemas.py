"""Request and response bodies of the HTTP API (pydantic) and the limits requests are checked against."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pluralign.data.questions import MAX_TEXT_CHARS  # longest prompt or response (as in a --questions pool)

#: most responses in one score request
MAX_RESPONSES = 64
#: most queries in one /get_reward request (an RL framework's batch of rollouts)
MAX_QUERIES = 1024
#: most comparisons in one feedback request
MAX_COMPARISONS = 256
#: most candidates in one next-question request
MAX_CANDIDATES = 1024
#: longest user id
MAX_USER_ID_CHARS = 256
#: largest request body, in bytes (larger bodies get 413)
MAX_BODY_BYTES = 1 << 20
#: a user's stored comparisons are all re-fitted on each feedback; past this many, feedback is refused (409)
MAX_USER_COMPARISONS = 10_000

UserId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_USER_ID_CHARS,
        description="The user's id: a user of the checkpoint, one who sent feedback, or a new one.",
        examples=["user-3"],
    ),
]
Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS)]
Prompt = Annotated[
    str,
    Field(max_length=MAX_TEXT_CHARS, description="The prompt (context) the responses answer."),
]
WeightsKind = Literal["fitted", "zero-shot"]
WEIGHTS_DESCRIPTION = (
    "'fitted' if the user has weights of their own (from the checkpoint or from feedback), 'zero-shot' if "
    "the service does not know the user and used the population's mean weights."
)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- score ------------------------------------------------------------------------------------------------
class ScoreRequest(_Body):
    user_id: UserId
    prompt: Prompt = ""
    responses: list[Text] = Field(
        min_length=1,
        max_length=MAX_RESPONSES,
        description=f"Candidate responses to rank (1 to {MAX_RESPONSES}, each at most {MAX_TEXT_CHARS} "
        "characters).",
        examples=[["item-0", "item-1", "item-2"]],
    )

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"user_id": "user-3", "prompt": "ctx-0", "responses": ["item-0", "item-1", "item-2"]}
            ]
        },
    )


class ScoreResponse(BaseModel):
    user_id: str
    weights: WeightsKind = Field(description=WEIGHTS_DESCRIPTION)
    rewards: list[float] = Field(description="Reward of each response, in request order.")
    order: list[int] = Field(description="Indices of the responses, best first (best-of-n ranking).")
    best: int = Field(description="Index of the highest-reward response.")


# --- remote reward (OpenRLHF) -----------------------------------------------------------------------------
class RewardRequest(_Body):
    query: list[Annotated[str, Field(max_length=2 * MAX_TEXT_CHARS)]] = Field(
        min_length=1,
        max_length=MAX_QUERIES,
        description=f"1 to {MAX_QUERIES} texts, each a prompt followed by its response (OpenRLHF: the "
        "prompt and the generated response decoded together). The response is the query minus its prompt.",
    )
    prompts: list[Prompt] | None = Field(
        default=None,
        max_length=MAX_QUERIES,
        description="The prompt of each query, which each query must start with. Omitted: every prompt is "
        "empty and each query is the whole response.",
    )
    labels: list[Any] | None = Field(
        default=None,
        max_length=MAX_QUERIES,
        description="OpenRLHF's labels (its --label_key column): ignored, unless the request's "
        "users_from_labels=true makes them the user ids.",
    )
    user_id: UserId | None = Field(default=None, description="The one user all queries are scored for.")
    user_ids: list[UserId] | None = Field(
        default=None, max_length=MAX_QUERIES, description="The user of each query (one per query)."
    )
    weights: list[Annotated[float, Field(allow_inf_nan=False)]] | None = Field(
        default=None,
        description="A fixed mixture of the K prototypes for all queries instead of a user (e.g. the "
        "one-hot e_k: prototype k's reward).",
    )

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"query": ["ctx-0item-0", "ctx-0item-1"], "prompts": ["ctx-0", "ctx-0"], "user_id": "user-3"}
            ]
        },
    )


class RewardResponse(BaseModel):
    rewards: list[float] = Field(description="Reward of each query's response, in request order.")
    weights: list[Literal["fitted", "zero-shot", "fixed"]] = Field(
        description="Per query: whose weights scored it ('fixed': the request's weights; otherwise "
        + WEIGHTS_DESCRIPTION
        + ")"
    )


# --- feedback ---------------------------------------------------------------------------------------------
class Comparison(_Body):
    prompt: Prompt = ""
    chosen: Text = Field(description="The response the user preferred.", examples=["item-1"])
    rejected: Text = Field(description="The response the user liked less.", examples=["item-2"])


class FeedbackRequest(_Body):
    user_id: UserId
    comparisons: list[Comparison] = Field(
        min_length=1,
        max_length=MAX_COMPARISONS,
        description=f"The user's new answers (1 to {MAX_COMPARISONS}); stored, then the user's weights are "
        "re-fitted from all of their stored comparisons.",
    )

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "user_id": "alice",
                    "comparisons": [{"prompt": "ctx-0", "chosen": "item-1", "rejected": "item-2"}],
                }
            ]
        },
    )


class FeedbackResponse(BaseModel):
    user_id: str
    weights: list[float] = Field(description="The user's new mixture weights over the K prototypes.")
    n_comparisons: int = Field(description="How many stored comparisons the weights rest on.")
    added: int = Field(description="Comparisons added by this request.")


# --- next question ----------------------------------------------------------------------------------------
class Candidate(_Body):
    prompt: Prompt = ""
    a: Text = Field(description="First response of the pair.", examples=["item-3"])
    b: Text = Field(description="Second response of the pair.", examples=["item-4"])


class NextQuestionRequest(_Body):
    user_id: UserId
    candidates: list[Candidate] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_CANDIDATES,
        description="Pairs to choose from; omit to use the pool the service was started with (--questions).",
    )
    skip_answered: bool = Field(
        default=True, description="Leave out pairs the user has already compared (same prompt, same pair)."
    )
    strategy: Literal["uncertainty", "info-gain", "variance", "random"] = Field(
        default="uncertainty",
        description="'uncertainty': the pair whose answer is nearest a coin flip at the user's current "
        "weights; 'info-gain' / 'variance': the pair whose answer tells most about the user's weights "
        "(mutual information / expected posterior variance reduction, from the user's stored answers); "
        "'random'. "
        "Users known only from the checkpoint always get 'uncertainty'.",
    )

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "user_id": "alice",
                    "candidates": [
                        {"prompt": "ctx-0", "a": "item-3", "b": "item-4"},
                        {"prompt": "ctx-1", "a": "item-5", "b": "item-6"},
                    ],
                }
            ]
        },
    )


class NextQuestionResponse(BaseModel):
    user_id: str
    weights: WeightsKind = Field(description=WEIGHTS_DESCRIPTION)
    index: int = Field(description="Position of the chosen pair in the candidate list (or the pool).")
    prompt: str
    a: str
    b: str
    p_a: float = Field(
        description="Probability that the user prefers a over b: at their current weights for 'uncertainty' "
        "(the chosen pair is the one closest to 0.5), the posterior predictive for the other strategies."
    )
    strategy: str = Field(default="uncertainty", description="The strategy that chose the pair.")
    n_candidates: int = Field(description="Candidates considered (after leaving out answered pairs).")


# --- users ------------------------------------------------------------------------------------------------
class UserResponse(BaseModel):
    user_id: str
    source: Literal["checkpoint", "feedback"] = Field(
        description="Where the weights come from: the trained checkpoint, or fits to the user's feedback."
    )
    weights: list[float] = Field(description="Mixture weights over the K prototypes.")
    n_comparisons: int = Field(description="Stored comparisons of the user (0 for checkpoint users).")
    created_at: str | None = Field(description="When the user's first feedback was stored (ISO 8601, UTC).")
    updated_at: str | None = Field(description="When the weights were last re-fitted (ISO 8601, UTC).")


class DeleteResponse(BaseModel):
    user_id: str
    deleted: bool = True
    comparisons_deleted: int


# --- service ----------------------------------------------------------------------------------------------
class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"
    read_only: bool
    uptime_s: float


class ModelResponse(BaseModel):
    model_type: str = Field(description="pal_a, pal_b or btl.", examples=["pal_b"])
    estimator: str = Field(examples=["PALB"])
    n_prototypes: int = Field(description="K, the number of prototypes (length of every weight vector).")
    encoder_id: str
    checkpoint_users: int = Field(description="Users with trained weights in the checkpoint.")
    state_users: int = Field(description="Users with weights fitted from feedback (in the state database).")
    zero_shot_weights: list[float] = Field(description="Weights used for users the service does not know.")
    version: str = Field(description="pluralign version.")
    api_version: str = "v1"
    read_only: bool
    limits: dict[str, int] = Field(description="Request limits (body bytes, list lengths, text length).")


class ErrorResponse(BaseModel):
    error: str = Field(description="Short error name.", examples=["not found"])
    detail: str = Field(description="What went wrong.", examples=["unknown user 'bob'"])
    fields: list[dict] | None = Field(
        default=None, description="For 422: each invalid field (dotted path) and what is wrong with it."
    )
