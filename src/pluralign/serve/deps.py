"""FastAPI dependencies of the endpoints: the app's ``Service``, the bearer-token check, shared parameters."""

from typing import Annotated

from fastapi import Depends, Request
from fastapi import Path as PathParam
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from pluralign.serve.schemas import MAX_USER_ID_CHARS
from pluralign.serve.service import Service

bearer = HTTPBearer(auto_error=False, description="The service's token (PLURALIGN_TOKEN / --token-file).")


async def get_service(request: Request) -> Service:
    """The ``Service`` that ``create_app`` put in ``app.state.service``."""
    return request.app.state.service


async def get_max_body_bytes(request: Request) -> int:
    """The body size limit the app was built with (``create_app(max_body_bytes=...)``)."""
    return request.app.state.max_body_bytes


ServiceDep = Annotated[Service, Depends(get_service)]


async def require_token(
    service: ServiceDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    """Writes need ``Authorization: Bearer <token>`` (401 without or with a wrong one; 403 if read-only)."""
    service.check_token(credentials)


UserIdParam = Annotated[str, PathParam(min_length=1, max_length=MAX_USER_ID_CHARS, description="User id.")]
