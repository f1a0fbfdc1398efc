"""The service's errors: every error is JSON ``{"error", "detail"}`` (422 adds ``"fields"``) with an HTTP
status; ``install_error_handlers(app)`` maps exceptions to those responses."""

import logging
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pluralign.errors import PluralignError
from pluralign.serve.schemas import ErrorResponse

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """An error answered as JSON {"error", "detail"} with an HTTP status."""

    def __init__(self, status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = headers


#: the error responses every endpoint documents (``responses=ERRORS``)
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


def field_path(loc: Sequence[Any]) -> str:
    """A validation error's location as a dotted field name (``comparisons.0.chosen``), or ``body``."""
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) if parts else "body"


async def api_error(request: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse({"error": exc.error, "detail": exc.detail}, exc.status, headers=exc.headers)


async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    fields = [
        {
            "field": "body" if e.get("type") == "json_invalid" else field_path(e.get("loc", ())),
            "message": e.get("msg", "invalid"),
            "type": e.get("type"),
        }
        for e in exc.errors()
    ]
    detail = "; ".join(f"field '{f['field']}': {f['message']}" for f in fields[:5])
    return JSONResponse({"error": "invalid request", "detail": detail, "fields": fields}, 422)


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    error = HTTPStatus(exc.status_code).phrase.lower()
    return JSONResponse(
        {"error": error, "detail": str(exc.detail)},
        exc.status_code,
        headers=getattr(exc, "headers", None),
    )


async def pluralign_error(request: Request, exc: PluralignError) -> JSONResponse:
    return JSONResponse({"error": "invalid request", "detail": str(exc)}, 422)


async def crash(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse(
        {"error": "internal error", "detail": "an unexpected error occurred; see the server log"}, 500
    )


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error as JSON: ApiError with its status, validation errors as 422 naming the fields,
    HTTP errors (404 path, 405 method) with their phrase, PluralignError as 422, anything else as 500."""
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(PluralignError, pluralign_error)
    app.add_exception_handler(Exception, crash)
