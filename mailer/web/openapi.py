"""The OpenAPI 3.1 description of the JSON API, built from the declared operations.

mailer.web.api declares its operations with :class:`Operation` from here and
answers errors in the :class:`Error` shape; this module imports nothing from it.

Schemas come from the same pydantic models that validate requests, so the
document and the behaviour cannot disagree (tests/admin/test_api_properties.py
drives the API with inputs generated from this document).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from starlette.responses import Response

from mailer.accounts import Role
from mailer.config import Settings

Handler = Callable[..., Awaitable[Response]]


@dataclass
class Operation:
    """One API operation: its address, the role it needs, its handler and the models
    that validate its input and describe its answer (mailer.web.routes.API_OPERATIONS)."""

    method: str
    path: str
    role: Role
    summary: str
    handler: Handler
    response: type[BaseModel]
    status: int = 200
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    path_params: tuple[str, ...] = ()
    errors: tuple[int, ...] = ()
    tag: str = ""

    @property
    def operation_id(self) -> str:
        return self.handler.__name__


class Error(BaseModel):
    """Every error answer: ``{"error": message}``, plus ``details`` for invalid input."""

    error: str
    details: list[dict[str, Any]] | None = None


REF = "#/components/schemas/{model}"
_CONVERTER = re.compile(r"\{(\w+):\w+\}")
REASONS = {
    400: "The body could not be read (not JSON)",
    401: "No token, or an unknown or revoked one",
    403: "The token's role may not do this",
    404: "Not found",
    409: "Conflicts with the current state",
    413: "The body is too large",
    422: "The input is not valid",
}


def _schema(model: type[BaseModel], components: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template=REF)
    for name, definition in schema.pop("$defs", {}).items():
        components[name] = definition
    components[model.__name__] = schema
    return {"$ref": REF.format(model=model.__name__)}


def _parameters(model: type[BaseModel], components: dict[str, Any]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=REF)
    for name, definition in schema.pop("$defs", {}).items():
        components[name] = definition
    required = set(schema.get("required", []))
    parameters = []
    for name, prop in schema.get("properties", {}).items():
        prop = dict(prop)
        description = prop.pop("description", None)
        prop.pop("title", None)
        parameter: dict[str, Any] = {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": prop,
        }
        if description:
            parameter["description"] = description
        parameters.append(parameter)
    return parameters


def build_document(operations: list[Operation], settings: Settings) -> dict[str, Any]:
    components: dict[str, Any] = {}
    error_ref = _schema(Error, components)
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        path = "/api" + _CONVERTER.sub(r"{\1}", op.path)
        entry: dict[str, Any] = {
            "operationId": op.operation_id,
            "summary": op.summary,
            "tags": [op.tag] if op.tag else [],
            "description": f"Needs a token with the {op.role.value} role"
            + (" (or admin)." if op.role.value != "admin" else "."),
            "responses": {
                str(op.status): {
                    "description": "Success",
                    "content": {"application/json": {"schema": _schema(op.response, components)}},
                }
            },
        }
        parameters: list[dict[str, Any]] = [
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": {"type": "integer", "minimum": 1, "maximum": 2**31 - 1},
            }
            for name in op.path_params
        ]
        if op.query is not None:
            parameters += _parameters(op.query, components)
        if parameters:
            entry["parameters"] = parameters
        if op.body is not None:
            entry["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": _schema(op.body, components)}},
            }
        codes = {401, 403, *op.errors}
        if op.query is not None or op.body is not None:
            codes.add(422)
        if op.body is not None:
            codes |= {400, 413}
        for code in sorted(codes):
            entry["responses"][str(code)] = {
                "description": REASONS[code],
                "content": {"application/json": {"schema": error_ref}},
            }
        paths.setdefault(path, {})[op.method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {
            "title": f"{settings.site.name} — mailer API",
            "version": "1",
            "description": "Subscribers, releases and digests. Authenticate with "
            "`Authorization: Bearer <token>`; create tokens with `mailer admin create-token`. "
            'Errors are JSON: {"error": "..."}.',
        },
        "servers": [{"url": settings.site.base_url}],
        "security": [{"bearer": []}],
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "paths": paths,
    }
