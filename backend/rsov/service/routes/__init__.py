"""The HTTP routes, one ``APIRouter`` per resource; every router but health's needs the token."""

from . import health, jobs, models

ROUTERS = (health.router, models.router, jobs.router)
