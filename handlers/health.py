"""Routes: ``GET /healthz`` (is the database answering?) and ``GET /metrics`` (Prometheus text)."""

from __future__ import annotations

import msgspec
import trio
from quart import Blueprint, Response

from core.authz import Rule, authorize, register_action
from core.errors import StorageError
from handlers.common import api_route, current_principal, json_response, services

blueprint = Blueprint("health", __name__)
register_action("metrics.read", Rule("viewer"))

HEALTH_TIMEOUT_SECONDS = 5.0
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Health(msgspec.Struct, kw_only=True, omit_defaults=True):
    """``status`` is ``ok`` (200) or ``unavailable`` (503, with ``detail``)."""

    status: str
    database_ms: float | None = None
    detail: str | None = None


@api_route(
    blueprint, "/healthz", "GET", summary="Health: the database answers", response=Health, auth="none", errors=(503,)
)
async def healthz() -> Response:
    """200 with the time a read of the database took; 503 when the database fails or takes over 5 s."""
    with trio.move_on_after(HEALTH_TIMEOUT_SECONDS):
        try:
            seconds = await services().db.ping()
        except StorageError as e:
            return _unavailable(e.detail)
        return json_response(Health(status="ok", database_ms=round(seconds * 1000, 3)))
    return _unavailable(f"database did not answer within {HEALTH_TIMEOUT_SECONDS:g} s")


def _unavailable(detail: str) -> Response:
    return json_response(Health(status="unavailable", detail=detail), 503)


@api_route(blueprint, "/metrics", "GET", summary="Prometheus metrics", auth="none", errors=(401, 403))
async def metrics() -> Response:
    """Prometheus text format 0.0.4. Public by default; with ``server.metrics_public = false`` it needs a
    user or API key (any role: action ``metrics.read``), and anonymous callers get 401."""
    svc = services()
    if not svc.settings.server.metrics_public:
        authorize(await current_principal(), "metrics.read")
    return Response(svc.metrics.render(), status=200, content_type=PROMETHEUS_CONTENT_TYPE)
