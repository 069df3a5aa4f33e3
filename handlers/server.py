"""Serving the app on one port with hypercorn's trio worker."""

from __future__ import annotations

import logging

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from quart_trio import QuartTrio

from core.config import Settings

log = logging.getLogger("hearth.server")


def hypercorn_config(settings: Settings) -> HypercornConfig:
    config = HypercornConfig()
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    config.bind = [f"{host}:{settings.port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hearth.hypercorn")
    config.graceful_timeout = settings.server.shutdown_grace_seconds
    config.websocket_max_message_size = settings.server.max_ws_message_bytes
    config.include_server_header = False
    return config


async def serve_http(
    app: QuartTrio,
    settings: Settings,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; ``task_status.started`` gets the bound URLs (the real port when 0 was asked)."""
    config = hypercorn_config(settings)

    async def started(binds: list[str]) -> None:
        log.info("listening", extra={"urls": binds})

    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(hypercorn_serve, app, config)
        log.info("listening on %s", " ".join(binds), extra={"urls": binds})
        task_status.started(binds)
