"""`pluralign serve`: the model as an HTTP service (FastAPI), user state in SQLite.

``create_app(model_dir, state_path, token=...)`` builds the app; ``pluralign.client.PluralignClient`` talks
to it. Needs the ``serve`` extra (``pip install 'pluralign[serve]'``: fastapi, uvicorn, httpx, pydantic).
"""

from pluralign.extras import require

require("serve", "fastapi")  # a missing extra is one line naming the pip command, not a traceback

from pluralign.serve.app import create_app  # noqa: E402
from pluralign.serve.errors import ApiError  # noqa: E402
from pluralign.serve.service import Service  # noqa: E402
from pluralign.serve.store import StateStore  # noqa: E402

__all__ = ["ApiError", "Service", "StateStore", "create_app"]
