"""/openapi.json from a real server: a valid OpenAPI 3.1 document describing every REST route there is."""

from __future__ import annotations

from typing import Any

from openapi_spec_validator import validate
from werkzeug.routing import Rule

from handlers.app import create_app
from handlers.openapi import _openapi_path
from tests.conftest import RunningServer

UNDOCUMENTED_METHODS = {"HEAD", "OPTIONS"}


async def fetch_document(server: RunningServer) -> dict[str, Any]:
    async with server.client() as client:
        response = await client.get("/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


def http_routes(server: RunningServer) -> set[tuple[str, str]]:
    """(OpenAPI path, method) of every HTTP (not websocket) rule the app serves."""
    app = create_app(server.services)
    out: set[tuple[str, str]] = set()
    for rule in app.url_map.iter_rules():
        assert isinstance(rule, Rule)
        if not getattr(rule, "websocket", False):
            methods = (rule.methods or set()) - UNDOCUMENTED_METHODS
            out |= {(_openapi_path(rule.rule), m.lower()) for m in methods}
    return out


def rest_routes(server: RunningServer) -> set[tuple[str, str]]:
    """The HTTP rules that must be documented: everything under /api/, plus /healthz and /metrics."""
    return {(p, m) for p, m in http_routes(server) if p.startswith("/api/") or p in ("/healthz", "/metrics")}


async def test_openapi_document_is_valid_openapi_3_1(server: RunningServer) -> None:
    document = await fetch_document(server)
    assert document["openapi"] == "3.1.0"
    validate(document)


async def test_openapi_documents_every_rest_route(server: RunningServer) -> None:
    document = await fetch_document(server)
    documented = {(path, method) for path, ops in document["paths"].items() for method in ops}
    served = rest_routes(server)
    assert {("/healthz", "get"), ("/metrics", "get")} <= served
    assert served - documented == set(), "routes added without handlers.common.api_route"


async def test_openapi_documents_only_routes_that_exist(server: RunningServer) -> None:
    document = await fetch_document(server)
    documented = {(path, method) for path, ops in document["paths"].items() for method in ops}
    assert documented - http_routes(server) == set()


async def test_openapi_operation_ids_are_unique_and_errors_are_json(server: RunningServer) -> None:
    document = await fetch_document(server)
    operations = [op for ops in document["paths"].values() for op in ops.values()]
    ids = [op["operationId"] for op in operations]
    assert len(ids) == len(set(ids))
    for op in operations:
        for status, response in op["responses"].items():
            if int(status) >= 400:
                assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}


async def test_openapi_health_routes_are_public(server: RunningServer) -> None:
    document = await fetch_document(server)
    healthz = document["paths"]["/healthz"]["get"]
    assert "security" not in healthz
    assert set(healthz["responses"]) == {"200", "503"}
    assert "security" not in document["paths"]["/metrics"]["get"]
