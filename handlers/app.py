"""The quart-trio application: blueprints of every face, JSON errors, /openapi.json."""

from __future__ import annotations

import logging

from quart import Response
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from core.errors import HearthError
from core.services import Services
from handlers import actions, auth, health, keys
from handlers.common import error_response, json_response
from handlers.openapi import build_document

log = logging.getLogger("hearth.http")
VERSION = "0.1.0"


def create_app(svc: Services) -> QuartTrio:
    """Build the app around ``svc``; every route reaches the services through ``handlers.common.services``."""
    app = QuartTrio("hearth", static_folder=None)
    app.config["HEARTH_SERVICES"] = svc
    app.config["MAX_CONTENT_LENGTH"] = svc.settings.server.max_body_bytes
    for module in (health, auth, keys, actions):
        app.register_blueprint(module.blueprint)
    _install_error_handlers(app)
    app.add_url_rule("/openapi.json", view_func=_openapi, methods=["GET"])
    return app


async def _openapi() -> Response:
    return json_response(build_document(VERSION))


def _install_error_handlers(app: QuartTrio) -> None:
    @app.errorhandler(HearthError)
    async def _hearth_error(e: HearthError) -> Response:
        return error_response(e.status, e.detail)

    @app.errorhandler(HTTPException)
    async def _http_error(e: HTTPException) -> Response:
        return error_response(e.code or 500, e.description or e.name)

    @app.errorhandler(Exception)
    async def _internal_error(e: Exception) -> Response:
        log.exception("internal error")
        return error_response(500, "internal error")
