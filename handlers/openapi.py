"""The OpenAPI 3.1 document, built from the routes as they are registered (``handlers.common.api_route``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

_ROUTES: list[RouteDoc] = []


@dataclass(frozen=True)
class RouteDoc:
    path: str
    method: str
    summary: str
    description: str
    request_body: type | None
    response: type | None
    status: int
    auth: str
    errors: tuple[int, ...]
    form: bool
    tag: str


def register_route_doc(doc: RouteDoc) -> None:
    if not any(r.path == doc.path and r.method == doc.method for r in _ROUTES):
        _ROUTES.append(doc)


def registered_routes() -> list[RouteDoc]:
    return list(_ROUTES)


class ErrorBody(msgspec.Struct):
    detail: str


def build_document(version: str) -> dict[str, Any]:
    """The whole document; component schemas come from msgspec, so they match what the code decodes."""
    types: list[Any] = [ErrorBody]
    for r in _ROUTES:
        types.extend(t for t in (r.request_body, r.response) if t is not None)
    schemas, components = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
    by_type = dict(zip(types, schemas, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for r in _ROUTES:
        paths.setdefault(_openapi_path(r.path), {})[r.method] = _operation(r, by_type)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Hearth", "version": version},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "cookie": {"type": "apiKey", "in": "cookie", "name": "hearth_access"},
            },
        },
    }


def _openapi_path(path: str) -> str:
    """Quart's ``<int:id>`` / ``<name>`` become OpenAPI's ``{id}`` / ``{name}``."""
    out = []
    for part in path.split("/"):
        if part.startswith("<") and part.endswith(">"):
            part = "{" + part[1:-1].split(":")[-1] + "}"
        out.append(part)
    return "/".join(out)


def _path_parameters(path: str) -> list[dict[str, Any]]:
    params = []
    for part in path.split("/"):
        if part.startswith("<") and part.endswith(">"):
            converter, _, name = part[1:-1].rpartition(":")
            schema = {"type": "integer"} if converter == "int" else {"type": "string"}
            params.append({"name": name, "in": "path", "required": True, "schema": schema})
    return params


def _operation(r: RouteDoc, by_type: dict[Any, Any]) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": r.summary,
        "tags": [r.tag],
        "operationId": f"{r.method}_{r.tag}_{r.summary}",
    }
    op["operationId"] = _operation_id(r)
    if r.description:
        op["description"] = r.description.strip()
    if params := _path_parameters(r.path):
        op["parameters"] = params
    if r.request_body is not None:
        content = {"application/json": {"schema": by_type[r.request_body]}}
        if r.form:
            content["application/x-www-form-urlencoded"] = {"schema": by_type[r.request_body]}
        op["requestBody"] = {"required": True, "content": content}
    ok: dict[str, Any] = {"description": "success"}
    if r.response is not None:
        ok["content"] = {"application/json": {"schema": by_type[r.response]}}
    responses: dict[str, Any] = {str(r.status): ok}
    error_ref = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    for code in sorted(set(r.errors) | _implied_errors(r)):
        responses[str(code)] = {"description": _REASONS.get(code, "error"), "content": error_ref}
    op["responses"] = responses
    if r.auth in ("user", "admin"):
        op["security"] = [{"bearer": []}, {"apiKey": []}, {"cookie": []}]
    elif r.auth == "optional":
        op["security"] = [{}, {"bearer": []}, {"apiKey": []}, {"cookie": []}]
    return op


def _operation_id(r: RouteDoc) -> str:
    words = [w for w in r.path.replace("<", "").replace(">", "").replace(":", "_").split("/") if w]
    return r.method + "_" + "_".join(w.replace("-", "_").replace(".", "_") for w in words)


def _implied_errors(r: RouteDoc) -> set[int]:
    codes: set[int] = set()
    if r.request_body is not None:
        codes |= {400, 413, 422}
    if r.auth in ("user", "admin"):
        codes |= {401}
    if r.auth == "admin":
        codes |= {403}
    return codes


_REASONS = {
    400: "malformed request",
    401: "missing or invalid credentials",
    403: "not allowed",
    404: "not found",
    409: "conflict",
    413: "body too large",
    422: "invalid values",
    429: "too many requests",
    503: "unavailable",
}
