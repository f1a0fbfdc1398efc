"""The endpoints, one APIRouter per responsibility; ``create_app`` includes them all (``ROUTERS``)."""

from pluralign.serve.routes import health, questions, remote_reward, scoring, users

#: in the order of the OpenAPI spec
ROUTERS = (scoring.router, users.router, questions.router, remote_reward.router, health.router)

__all__ = ["ROUTERS"]
