"""``GET /openapi.json``: the OpenAPI 3.1 document, generated from the route table
(:data:`~trioq.broker._routes.ROUTES`), the WebSocket method table
(:data:`~trioq.broker._websocket.METHODS`) and the wire schema's models.

Request bodies are documented in pydantic's validation mode, answers in its
serialization mode; every error status refers to one :class:`~trioq._wire.ErrorBody`
schema. The WebSocket's methods are listed under ``x-websocket-methods`` of
``GET /v1/ws`` (OpenAPI has no words for them), and osqueue's Connect service under
``x-connect`` at the root (its messages are protobuf's, not JSON schemas). Each operation and WebSocket method
states the token scopes that may call it in ``x-trioq-scopes`` (public routes: none,
and an empty ``security``). The document is built once per app.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from pydantic import TypeAdapter

from .. import _connect
from .._tokens import Scope
from .._wire import SCHEDULE_NAME_PATTERN, ErrorBody, JobId
from ._connect import METHODS as CONNECT_METHODS
from ._routes import JSON, ROUTES, Route
from ._websocket import METHODS

_REF = "#/components/schemas/{model}"
_RULE_VARIABLE = re.compile(r"<(?:[a-z_]+:)?job_id>")

_ERRORS = {
    400: "BrokerProtocolError: malformed JSON, or a field that breaks its rule (the "
    "message names it)",
    401: "Unauthorized: a token is configured and the request lacks it",
    403: "Forbidden: the token is valid but its scope does not allow this operation",
    404: "JobNotFound: no such job (or it left the dedup window)",
    413: "PayloadTooLarge: the request or a payload is over its limit",
    503: "NotLeader (``leader`` names the leader, ``role`` this broker's role), QueueFull, "
    "Overloaded (too many connections or waiting long-polls: retry after Retry-After) or "
    "StorageUnavailable",
}


def openapi_path(rule: str) -> str:
    """A route's rule as an OpenAPI path: ``/v1/jobs/<job_id>`` is ``/v1/jobs/{id}``,
    ``/v1/schedules/<name>`` is ``/v1/schedules/{name}``."""
    return _RULE_VARIABLE.sub("{id}", rule).replace("<name>", "{name}")


class _Schemas:
    """Every schema the document uses, generated in one go so they share definitions."""

    def __init__(self, requests: Iterable[Any], answers: Iterable[Any]) -> None:
        inputs: list[tuple[Any, Any, TypeAdapter[Any]]] = []
        for kind, mode in ((requests, "validation"), (answers, "serialization")):
            for schema_type in dict.fromkeys(t for t in kind if t is not None):
                inputs.append((schema_type, mode, TypeAdapter(schema_type)))
        found, definitions = TypeAdapter.json_schemas(inputs, ref_template=_REF)
        self._found = {key: value for (key, _), value in found.items()}
        self.definitions: dict[str, Any] = definitions.get("$defs", {})

    def __getitem__(self, schema_type: Any) -> dict[str, Any]:
        schema: dict[str, Any] = self._found[schema_type]
        return schema

    def example(self, schema_type: Any) -> Any:
        schema = self[schema_type]
        ref = schema.get("$ref", "")
        examples = self.definitions.get(ref.rsplit("/", 1)[-1], schema).get("examples")
        return examples[0] if examples else None


def build_openapi(version: str) -> dict[str, Any]:
    """The whole document."""
    schemas = _Schemas(
        requests=[
            *(r.body for r in ROUTES),
            *(m.params for m in METHODS),
            *(r.query for r in ROUTES if r.query is not None),
            JobId,
        ],
        answers=[
            *(r.answer for r in ROUTES if r.answer is not str),
            *(m.result for m in METHODS),
            ErrorBody,
        ],
    )
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(openapi_path(route.path), {})[route.method.lower()] = _operation(
            route, schemas
        )
    paths["/v1/ws"] = {"get": _websocket(schemas)}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "trioq broker",
            "version": version,
            "description": "osqueue's REST contract, with additive extensions. A token, "
            "when the broker has one, goes in 'Authorization: Bearer <token>'; "
            "/healthz, /readyz and /openapi.json need none. Each token has a scope "
            "(producer, worker or admin); x-trioq-scopes on each operation lists the "
            "scopes that may call it (admin may call everything).",
        },
        "paths": paths,
        "components": {
            "schemas": schemas.definitions,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearerAuth": []}],
        "x-connect": _connect_service(),
    }


def _connect_service() -> dict[str, Any]:
    return {
        "service": _connect.SERVICE,
        "path": f"{_connect.PATH_PREFIX}{{method}}",
        "description": "osqueue's Connect service (unary POSTs, application/proto or "
        "application/json; errors are Connect's JSON with _tag beside code). "
        "Definitions: osqueue/v1/queue.proto in the trioq package; see docs/connect.md.",
        "methods": {
            name: {
                "input": method.rpc.input.DESCRIPTOR.full_name,
                "output": method.rpc.output.DESCRIPTOR.full_name,
                "x-trioq-scopes": sorted(str(s) for s in method.scopes),
            }
            for name, method in CONNECT_METHODS.items()
        },
    }


def _operation(route: Route, schemas: _Schemas) -> dict[str, Any]:
    operation: dict[str, Any] = {"operationId": route.name, "summary": route.summary}
    parameters = _parameters(route, schemas)
    if parameters:
        operation["parameters"] = parameters
    if route.body is not None:
        media: dict[str, Any] = {"schema": schemas[route.body]}
        example = schemas.example(route.body)
        if example is not None:
            media["example"] = example
        operation["requestBody"] = {"required": not route.body_optional, "content": {JSON: media}}
    operation["responses"] = _responses(route, schemas)
    if route.public:
        operation["security"] = []
    else:
        operation["x-trioq-scopes"] = scope_names(route.scopes)
    return operation


def scope_names(scopes: frozenset[Scope]) -> list[str]:
    """Scopes as the document lists them: in the order producer, worker, admin."""
    return [scope.value for scope in Scope if scope in scopes]


def _parameters(route: Route, schemas: _Schemas) -> list[dict[str, Any]]:
    parameters: list[dict[str, Any]] = []
    if "{id}" in openapi_path(route.path):
        parameters.append({"name": "id", "in": "path", "required": True, "schema": schemas[JobId]})
    if "{name}" in openapi_path(route.path):
        parameters.append(
            {
                "name": "name",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "pattern": SCHEDULE_NAME_PATTERN},
            }
        )
    if route.query is not None:
        name = schemas[route.query]["$ref"].rsplit("/", 1)[-1]
        for field, schema in schemas.definitions[name]["properties"].items():
            options = [s for s in schema.get("anyOf", [schema]) if s.get("type") != "null"]
            parameters.append({"name": field, "in": "query", "schema": options[0]})
    return parameters


def _responses(route: Route, schemas: _Schemas) -> dict[str, Any]:
    responses: dict[str, Any]
    if route.answer is None:
        responses = {"204": {"description": "Done (no content)"}}
    else:
        schema = {"type": "string"} if route.answer is str else schemas[route.answer]
        responses = {
            "200": {"description": "OK", "content": {route.content_type: {"schema": schema}}}
        }
    error = {JSON: {"schema": schemas[ErrorBody]}}
    statuses = {
        400: route.body is not None
        or route.query is not None
        or "{id}" in openapi_path(route.path),
        401: not route.public,
        403: not route.public and route.scopes != frozenset(Scope),
        404: "{id}" in openapi_path(route.path) or route.name == "delete_schedule",
        409: bool(route.conflicts),
        413: route.body is not None,
        503: route.leader_only or route.name == "readyz",
    }
    for status, applies in statuses.items():
        if applies:
            text = route.conflicts if status == 409 else _ERRORS[status]
            responses[str(status)] = {"description": text, "content": error}
    return responses


def _websocket(schemas: _Schemas) -> dict[str, Any]:
    methods = {
        m.name: {
            "summary": m.summary,
            "params": None if m.params is None else schemas[m.params],
            "result": None if m.result is None else schemas[m.result],
            "x-trioq-scopes": scope_names(m.scopes),
        }
        for m in METHODS
    }
    return {
        "operationId": "websocket",
        "summary": "WebSocket: JSON-RPC messages {id, method, params}",
        "description": "Each message is answered by {id, ok: true, result} or "
        "{id, ok: false, error: {_tag, message}}; calls run concurrently (up to 64 in "
        "flight). The methods are listed in x-websocket-methods. The handshake takes "
        "any valid token; a call its scope does not allow (x-trioq-scopes) is answered "
        "with a Forbidden error.",
        "x-trioq-scopes": [scope.value for scope in Scope],
        "responses": {
            "101": {"description": "Switching Protocols: the WebSocket is open"},
            "400": {"description": _ERRORS[400], "content": {JSON: {"schema": schemas[ErrorBody]}}},
            "401": {"description": _ERRORS[401], "content": {JSON: {"schema": schemas[ErrorBody]}}},
        },
        "x-websocket-methods": methods,
    }
