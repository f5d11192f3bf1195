"""Who may ask, and what the backend may read.

- ``require_token``: the bearer token (declared with ``HTTPBearer``, so the schema has its security
  scheme), compared in constant time; every route but health depends on it.
- ``TrustedHosts``: requests whose Host header is not a trusted name are refused (DNS-rebinding defence).
- ``PathPolicy``: the files a request may name (rasters, weights to import).
"""

from __future__ import annotations

import hmac
import os
import stat
from pathlib import Path

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import InputError
from .config import ServerConfig
from .errors import ApiError, error_response

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearerToken",
    description="The token `rsov serve` keeps in its token file (default ~/.config/rsov/token).",
)


async def require_token(request: Request, credentials: HTTPAuthorizationCredentials | None = Security(bearer)) -> None:
    """401 ``unauthorized`` unless ``Authorization: Bearer <the token>`` was sent."""
    config: ServerConfig = request.app.state.service.config
    sent = credentials.credentials if credentials is not None else ""
    if not hmac.compare_digest(sent.encode(), config.token.encode()):
        raise ApiError(
            401,
            "unauthorized",
            f"Missing or wrong token: send 'Authorization: Bearer <token>' with the token from {config.token_file}.",
        )


class TrustedHosts:
    """ASGI middleware: 403 ``untrusted_host`` for an HTTP request whose Host is not one of ``hosts``."""

    def __init__(self, app: ASGIApp, hosts: frozenset[str]) -> None:
        self.app, self.hosts = app, hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = (Headers(scope=scope).get("host") or "").rsplit(":", 1)[0].strip("[]").lower()
            if host not in self.hosts:
                response = error_response(
                    403,
                    "untrusted_host",
                    f"Host '{host}' is not allowed; talk to the backend as 127.0.0.1 or localhost.",
                )
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


class PathPolicy:
    """The local files a request may name: absolute paths of regular files, never ``/vsi...``, never the
    token file or the results folder, and only under the allowed folders when there are any."""

    def __init__(self, config: ServerConfig) -> None:
        self.private = {config.token_file.resolve()}
        self.results_dir = config.results_dir.resolve()
        self.allowed_dirs = config.allowed_dirs

    def check(self, raw: str) -> str:
        """The resolved path, or ApiError 400 ``bad_path`` / 403 ``forbidden_path``."""
        if any(ord(c) < 32 or ord(c) == 127 for c in raw):
            raise ApiError(
                400, "bad_path", "The raster path holds control characters (such as NUL): give a plain path."
            )
        if raw.startswith("/vsi") or not os.path.isabs(raw):
            raise ApiError(400, "bad_path", f"Raster path '{raw}' must be an absolute path to a local file.")
        path = Path(raw).resolve()
        if path in self.private or path == self.results_dir or self.results_dir in path.parents:
            raise ApiError(403, "forbidden_path", f"The backend does not read {raw}.")
        if self.allowed_dirs and not any(d == path or d in path.parents for d in self.allowed_dirs):
            allowed = ", ".join(str(d) for d in self.allowed_dirs)
            raise ApiError(
                403, "forbidden_path", f"{raw} is outside the directories this backend may read ({allowed})."
            )
        try:
            mode = path.stat().st_mode
        except OSError:
            raise ApiError(400, "bad_path", f"Raster file not found: {raw}.") from None
        if not stat.S_ISREG(mode):  # a FIFO or a device would block the reader
            raise ApiError(400, "bad_path", f"{raw} is not a regular file.")
        return str(path)

    def for_worker(self, raw: str) -> str:
        """``check`` for the job worker, whose errors are InputErrors."""
        try:
            return self.check(raw)
        except ApiError as exc:
            raise InputError(exc.message) from None
