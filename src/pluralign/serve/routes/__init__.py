"""The endpoints, one APIRouter per responsibility; ``create_app`` includes them all (``ROUTERS``)."""

from pluralign.serve.routes import health, questions, scoring, users

#: in the order of the OpenAPI spec
ROUTERS = (scoring.router, users.router, questions.router, health.router)

__all__ = ["ROUTERS"]
