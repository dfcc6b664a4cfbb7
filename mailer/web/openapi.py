"""The OpenAPI 3.1 description of the JSON API, built from the declared operations.

Schemas come from the same pydantic models that validate requests, so the
document and the behaviour cannot disagree (tests/admin/test_api_properties.py
drives the API with inputs generated from this document).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from mailer.config import Settings

if TYPE_CHECKING:
    from mailer.web.api import Operation

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
    error_ref = _schema(_error_model(), components)
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


def _error_model() -> type[BaseModel]:
    from mailer.web.api import Error

    return Error
