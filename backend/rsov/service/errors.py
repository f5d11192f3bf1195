"""Errors as the contract has them: ``{"error": {"code", "message"}}`` with an HTTP status.

``ApiError`` is raised by routes and dependencies; the handlers installed by ``install_error_handlers``
answer it, and every other failure (validation, unknown routes, crashes), in that shape. ``documented``
gives a route's ``responses`` for the error codes it can answer (``ERROR_CODES`` in ``schemas``).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .schemas import ERROR_CODES, ErrorBody

log = logging.getLogger(__name__)
# Any route can answer these: the trusted-host check runs before routing, and a bug is a bug.
EVERYWHERE = ("untrusted_host", "internal_error")


class ApiError(Exception):
    """An error answered as ``{"error": {"code", "message"}}`` with an HTTP status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        if code not in ERROR_CODES or ERROR_CODES[code][0] not in (None, status):  # a bug: the contract lacks it
            raise ValueError(f"HTTP {status} {code} is not an error of the contract (schemas.ERROR_CODES).")
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def describe_validation(exc: ValidationError | RequestValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    return f"Invalid request: {where}: {first.get('msg', 'invalid value')}."


def documented(*codes: str) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of a route that answers these error codes (and ``EVERYWHERE``'s): per
    status, ``ErrorBody``, a description naming each code, and the codes in ``x-error-codes``."""
    by_status: dict[int, list[str]] = {}
    for code in dict.fromkeys((*codes, *EVERYWHERE)):
        status = ERROR_CODES[code][0]
        if status is None:
            raise ValueError(f"{code} has no status of its own: it cannot be documented per route.")
        by_status.setdefault(status, []).append(code)
    return {
        status: {
            "model": ErrorBody,
            "x-error-codes": names,
            "description": "\n".join(f"`{c}`: {ERROR_CODES[c][1]}." for c in names),
        }
        for status, names in sorted(by_status.items())
    }


def install_error_handlers(app: FastAPI) -> None:
    """Every error the app answers, in the contract's shape."""

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError):
        return error_response(exc.status, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError):
        return error_response(422, "invalid_request", describe_validation(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException):
        return error_response(exc.status_code, "http_error", str(exc.detail))

    @app.exception_handler(Exception)
    async def crash(_: Request, exc: Exception):
        log.exception("unhandled error")
        return error_response(500, "internal_error", f"Internal error: {type(exc).__name__}.")
