"""The OpenAPI schema: served at ``/openapi.json`` (with the token), committed as ``docs/api/openapi.json``.

FastAPI builds it from the routes; ``install_openapi`` then adds what it cannot see (the job body,
parsed by hand, and the GeoJSON result, served as a file) and replaces FastAPI's validation-error
schema by ``ErrorBody``, which is what the backend answers. ``dump`` is the committed file's text.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse

from .schemas import EXTRA_MODELS, ErrorBody
from .security import require_token

FASTAPI_VALIDATION = ("HTTPValidationError", "ValidationError")
COMMITTED = "docs/api/openapi.json"


def _register(components: dict[str, Any], model) -> None:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}", by_alias=True)
    components.update(schema.pop("$defs", {}))
    components[model.__name__] = schema


def _patched(schema: dict[str, Any]) -> dict[str, Any]:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in EXTRA_MODELS:
        _register(components, model)
    error = {"$ref": f"#/components/schemas/{ErrorBody.__name__}"}
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            invalid = operation.get("responses", {}).get("422")
            if invalid and invalid["content"]["application/json"]["schema"] != error:
                del operation["responses"]["422"]  # FastAPI's guess: no such 422 here
    for name in FASTAPI_VALIDATION:
        components.pop(name, None)
    if FASTAPI_VALIDATION[0] in json.dumps(schema):
        raise RuntimeError("A route still refers to FastAPI's validation error: document its 422 as ErrorBody.")
    return schema


def install_openapi(app: FastAPI) -> None:
    """``app.openapi()`` as the contract says, and ``GET /openapi.json`` behind the token."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _patched(FastAPI.openapi(app))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/openapi.json", dependencies=[Depends(require_token)], include_in_schema=False)
    def schema() -> JSONResponse:
        return JSONResponse(app.openapi())


def dump(schema: dict[str, Any]) -> str:
    """The committed file's text: pretty-printed, keys sorted, a trailing newline."""
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
