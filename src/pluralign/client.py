"""A Python client of `pluralign serve` (httpx, keep-alive).

    with PluralignClient("http://127.0.0.1:8000", token=os.environ["PLURALIGN_TOKEN"]) as client:
        client.score("alice", "How do I ...?", ["response A", "response B"])["order"]
        client.feedback("alice", [{"prompt": "...", "chosen": "...", "rejected": "..."}])
        client.get_reward(["How do I ...? response A"], ["How do I ...? "], user_id="alice")["rewards"]

HTTP errors raise a ``RemoteError`` subclass carrying the server's status, error and detail.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from pluralign.errors import PluralignError
from pluralign.extras import require

if TYPE_CHECKING:
    import httpx
else:  # a missing extra is one line naming the pip command
    httpx = require("serve", "httpx")


class RemoteError(PluralignError):
    """The service answered with an error (or could not be reached: ``status`` is None)."""

    def __init__(self, message: str, *, status: int | None = None, error: str = "", detail: Any = None):
        super().__init__(message)
        self.status = status
        self.error = error
        self.detail = detail


class AuthError(RemoteError):
    """401 (missing or wrong token) or 403 (read-only service)."""


class NotFoundError(RemoteError):
    """404: unknown user (or path)."""


class RequestError(RemoteError):
    """400/409/413/422: the request was refused; ``detail`` says why (and names the field)."""


class ServiceUnavailable(RemoteError):
    """The service could not be reached, timed out, or failed (5xx)."""


def _error_class(status: int) -> type[RemoteError]:
    if status in (401, 403):
        return AuthError
    if status == 404:
        return NotFoundError
    if status >= 500:
        return ServiceUnavailable
    if 400 <= status < 500:
        return RequestError
    return RemoteError


class PluralignClient:
    """Client of one pluralign service; ``token`` is needed for feedback and delete_user."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        token: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> PluralignClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- transport --------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        try:
            response = self._http.request(method, path, json=body)
        except httpx.TimeoutException as exc:
            raise ServiceUnavailable(f"{method} {self.base_url}{path}: timed out ({exc})") from None
        except httpx.HTTPError as exc:
            raise ServiceUnavailable(f"cannot reach pluralign service at {self.base_url}: {exc}") from None
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if response.is_success and isinstance(payload, dict):
            return payload
        if response.is_success:
            raise RemoteError(
                f"{method} {path}: the server answered {response.status_code} without a JSON object",
                status=response.status_code,
            )
        error = payload.get("error", "") if isinstance(payload, dict) else ""
        detail = payload.get("detail") if isinstance(payload, dict) else response.text[:500]
        message = f"{method} {path}: {response.status_code} {error or response.reason_phrase}"
        if detail:
            message += f": {detail}"
        raise _error_class(response.status_code)(
            message, status=response.status_code, error=error, detail=detail
        )

    # --- endpoints --------------------------------------------------------------------------------------
    def score(self, user_id: str, prompt: str, responses: Sequence[str]) -> dict[str, Any]:
        """{"user_id", "weights": "fitted"|"zero-shot", "rewards", "order" (best first), "best"}."""
        return self._request(
            "POST", "/v1/score", {"user_id": user_id, "prompt": prompt, "responses": list(responses)}
        )

    def get_reward(
        self,
        query: Sequence[str],
        prompts: Sequence[str] | None = None,
        *,
        user_id: str | None = None,
        user_ids: Sequence[str] | None = None,
        weights: Sequence[float] | None = None,
    ) -> dict[str, Any]:
        """OpenRLHF's remote reward call: rewards of ``query`` (each its prompt followed by the response).

        At most one of ``user_id`` (all queries), ``user_ids`` (one per query) and ``weights`` (a fixed
        mixture of the K prototypes); none: the zero-shot weights. Returns {"rewards", "weights"}.
        """
        body: dict[str, Any] = {"query": list(query)}
        if prompts is not None:
            body["prompts"] = list(prompts)
        if user_id is not None:
            body["user_id"] = user_id
        if user_ids is not None:
            body["user_ids"] = list(user_ids)
        if weights is not None:
            body["weights"] = list(weights)
        return self._request("POST", "/get_reward", body)

    def feedback(
        self, user_id: str, comparisons: Iterable[Mapping[str, str] | Sequence[str]]
    ) -> dict[str, Any]:
        """Store comparisons ({"prompt", "chosen", "rejected"} or (prompt, chosen, rejected)); re-fit.

        Returns {"user_id", "weights", "n_comparisons", "added"}.
        """
        rows = [
            dict(c) if isinstance(c, Mapping) else dict(zip(("prompt", "chosen", "rejected"), c, strict=True))
            for c in comparisons
        ]
        return self._request("POST", "/v1/feedback", {"user_id": user_id, "comparisons": rows})

    def next_question(
        self,
        user_id: str,
        candidates: Iterable[Mapping[str, str] | Sequence[str]] | None = None,
        *,
        skip_answered: bool = True,
    ) -> dict[str, Any]:
        """The most informative pair ({"prompt", "a", "b"} or (prompt, a, b)) to ask next, with p_a."""
        body: dict[str, Any] = {"user_id": user_id, "skip_answered": skip_answered}
        if candidates is not None:
            body["candidates"] = [
                dict(c) if isinstance(c, Mapping) else dict(zip(("prompt", "a", "b"), c, strict=True))
                for c in candidates
            ]
        return self._request("POST", "/v1/next-question", body)

    def get_user(self, user_id: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/users/{quote(user_id, safe='')}")

    def delete_user(self, user_id: str) -> dict[str, Any]:
        return self._request("DELETE", f"/v1/users/{quote(user_id, safe='')}")

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/v1/health")

    def model_info(self) -> dict[str, Any]:
        return self._request("GET", "/v1/model")
