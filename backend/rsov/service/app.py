"""``rsov serve``: the local HTTP service the QGIS plugin talks to.

Models load once and stay warm; jobs run one at a time (see ``jobs``). Every endpoint but
``GET /v1/health`` needs ``Authorization: Bearer <token>``, the token living in a user-only file;
requests whose Host header is not a trusted name are refused (DNS-rebinding defence). The contract
is ``docs/api/openapi.json`` (``rsov api-schema``), also served at ``/openapi.json`` with the token.

The parts: ``security`` (token, trusted hosts, path policy), ``errors`` (the error answers),
``deps`` (the shared state the routes reach), ``submission`` (job bodies to checked requests),
``routes`` (health, models, jobs), ``openapi`` (the schema) and ``schemas`` (every body).
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from .. import __version__
from ..engine import EngineSlot
from .config import LOCAL_HOSTS, ServerConfig, default_results_dir, default_token_file, load_or_create_token
from .deps import Service
from .errors import ApiError, install_error_handlers
from .openapi import install_openapi
from .routes import ROUTERS
from .security import TrustedHosts

__all__ = [
    "ApiError",
    "LOCAL_HOSTS",
    "ServerConfig",
    "build_app",
    "create_app",
    "default_results_dir",
    "default_token_file",
    "load_or_create_token",
]
DESCRIPTION = (
    "Open-vocabulary segmentation of remote-sensing rasters, the local backend of the rsov QGIS plugin. "
    "Every error is an ErrorBody; each response lists its codes in x-error-codes."
)


@asynccontextmanager
async def lifespan(app: FastAPI):
    yield
    service = getattr(app.state, "service", None)
    if service is not None:
        service.jobs.stop()


def build_app() -> FastAPI:
    """The routes, error handlers and schema, without any state (what ``rsov api-schema`` prints)."""
    # No /docs or /redoc; the schema is served behind the token like everything but health.
    app = FastAPI(
        title="rsov backend",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    install_openapi(app)
    return app


def create_app(engines: EngineSlot, config: ServerConfig) -> FastAPI:
    """The FastAPI application around one engine (loaded when its weights are there) and one job manager."""
    app = build_app()
    app.state.service = Service(engines, config)
    app.add_middleware(TrustedHosts, hosts=config.allowed_hosts)
    return app
