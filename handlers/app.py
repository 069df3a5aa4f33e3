"""The quart-trio application: blueprints of every face, JSON errors, request metrics, /openapi.json."""

from __future__ import annotations

import logging

from quart import Response, has_request_context, request, websocket
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from core.errors import HearthError, TooManyAttempts
from core.metrics import Metrics
from core.services import Services
from handlers import actions, auth, distillery, health, keys
from handlers.common import error_response, json_response
from handlers.hot_ws import is_hot_websocket_path
from handlers.openapi import build_document

log = logging.getLogger("hearth.http")
VERSION = "0.1.0"
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def create_app(svc: Services) -> QuartTrio:
    """Build the app around ``svc``; every route reaches the services through ``handlers.common.services``."""
    app = QuartTrio("hearth", static_folder=None)
    app.config["HEARTH_SERVICES"] = svc
    app.config["MAX_CONTENT_LENGTH"] = svc.settings.server.max_body_bytes
    for module in (health, auth, keys, actions, distillery):
        app.register_blueprint(module.blueprint)
    _install_error_handlers(app, svc.settings.server.max_body_bytes)
    _refuse_ambiguous_framing(app)
    _install_request_metrics(app, svc.metrics)
    _observe_database(svc)
    app.add_url_rule("/openapi.json", view_func=_openapi, methods=["GET"])
    return app


async def _openapi() -> Response:
    return json_response(build_document(VERSION))


def _observe_database(svc: Services) -> None:
    """Every async read and write of the database lands in ``hearth_database_latency_seconds{op}``."""
    histogram = svc.metrics.db_latency

    def observe(op: str, seconds: float) -> None:
        histogram.labels(op=op).observe(seconds)

    svc.db.set_latency_observer(observe)


def _refuse_ambiguous_framing(app: QuartTrio) -> None:
    """A request with both Content-Length and Transfer-Encoding is answered 400 and its connection closed
    (RFC 9112 §6.3): a front proxy that trusted the Content-Length could otherwise smuggle a request in what it
    took for the body (h11 reads such a body as chunked and would keep the connection)."""

    @app.before_request
    async def _check_framing() -> Response | None:
        if "Content-Length" in request.headers and "Transfer-Encoding" in request.headers:
            response = error_response(400, "Content-Length and Transfer-Encoding together are not allowed")
            response.headers["Connection"] = "close"
            return response
        return None


def _install_request_metrics(app: QuartTrio, metrics: Metrics) -> None:
    """Count every answered request by method, route rule (bounded: never the raw path) and status."""

    @app.after_request
    async def _count(response: Response) -> Response:
        rule = request.url_rule
        method = request.method if request.method in KNOWN_METHODS else "OTHER"
        route = rule.rule if rule is not None else "unmatched"
        metrics.http_requests.labels(method=method, route=route, status=str(response.status_code)).inc()
        return response


def _install_error_handlers(app: QuartTrio, max_body_bytes: int) -> None:
    """Every error leaves as JSON ``{"detail": ...}``: ours, quart's and werkzeug's (404, 405, 413, ...)."""

    @app.errorhandler(HearthError)
    async def _hearth_error(e: HearthError) -> Response:
        response = error_response(e.status, e.detail)
        if isinstance(e, TooManyAttempts):
            response.headers["Retry-After"] = str(e.retry_after)
        return response

    @app.errorhandler(HTTPException)
    async def _http_error(e: HTTPException) -> Response:
        return _http_error_response(e, max_body_bytes)

    @app.errorhandler(Exception)
    async def _internal_error(e: Exception) -> Response:
        method, path = _method_and_path()
        log.exception("internal error", extra={"method": method, "path": path})
        return error_response(500, "internal error")


def _method_and_path() -> tuple[str, str]:
    """The request's method and path; websocket handlers land in the same error handlers."""
    if has_request_context():
        return request.method, request.path
    return "WEBSOCKET", websocket.path


NOT_FIRST_REQUEST = (
    "this websocket is served only as the first request of a connection: open a new connection for it "
    "(docs/streaming.md)"
)


def _http_error_response(e: HTTPException, max_body_bytes: int) -> Response:
    code = e.code or 500
    method, path = _method_and_path()
    if not has_request_context() and is_hot_websocket_path(path.encode()):  # a websocket quart got, not the hot path
        response = error_response(400, NOT_FIRST_REQUEST)
    elif code == 404:
        response = error_response(404, f"no route for {path[:200]}")
    elif code == 413:
        response = error_response(413, f"request body is larger than {max_body_bytes} bytes")
    elif isinstance(e, MethodNotAllowed):
        response = error_response(405, f"method {method} is not allowed on {path[:200]}")
        response.headers["Allow"] = ", ".join(sorted(e.valid_methods or ()))
    else:
        response = error_response(code, e.description or e.name)
    return response
