"""`pluralign serve`: the model as an HTTP service (FastAPI), user state in SQLite.

``create_app(model_dir, state_path, token=...)`` builds the app; ``pluralign.client.PluralignClient`` talks
to it. Needs the ``serve`` extras (fastapi, uvicorn, httpx).
"""

from pluralign.serve.app import ApiError, Service, create_app
from pluralign.serve.store import StateStore

__all__ = ["ApiError", "Service", "StateStore", "create_app"]
