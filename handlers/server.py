"""Serving on one port: our accept loop reads each request head, serves hot websockets itself, hands the rest
to hypercorn's trio ``TCPServer`` (quart-trio) with the bytes already read replayed first."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Protocol, cast

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import LifespanTimeoutError, repr_socket_addr, wrap_app
from quart_trio import QuartTrio

from core.config import Settings
from core.services import Services

log = logging.getLogger("hearth.server")

MAX_HEAD_BYTES = 16 * 1024  # the same limit hypercorn's h11 parser applies to a request head
RECEIVE_BYTES = 64 * 1024
LINGER_SECONDS = 2.0  # after an error answer: how long we read (and drop) what the client still sends
LINGER_BYTES = 1024 * 1024
_UPGRADE_WEBSOCKET = re.compile(rb"\nupgrade:[^\r\n]*websocket", re.IGNORECASE)
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_TOO_LARGE = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class HotRoutes(Protocol):
    """Routes served below ASGI (handlers/hot_ws.py): picked by the first request head of a connection."""

    def wants(self, method: bytes, path: bytes) -> bool: ...

    async def handle(self, stream: trio.SocketStream, data: bytes) -> None: ...

    def going_away(self) -> None: ...


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


H2_PREFACE = b"PRI * HTTP/2.0"  # an HTTP/2 connection with prior knowledge


class HeadDeadline:
    """The slowloris guard for the request heads after the first (which the accept loop times itself): a head
    that starts after a response must end (blank line) within ``timeout`` seconds of its first byte, however
    its bytes trickle in. Off for good after a ``101`` (a websocket) and on HTTP/2 connections."""

    def __init__(self, timeout: float, first: bytes) -> None:
        self._timeout = timeout
        self._on = not first.startswith(H2_PREFACE)
        self._after_response = False  # the next bytes received start a head
        self._deadline = math.inf
        self._tail = b""  # the last bytes of the head so far: a blank line may span two reads

    @property
    def deadline(self) -> float:
        return self._deadline

    def sent(self, data: bytes | bytearray | memoryview) -> None:
        start = bytes(data[:12])
        if start == b"HTTP/1.1 101":
            self._on = False
        elif self._on and start.startswith(b"HTTP/1.") and start[9:12] != b"100":
            self._after_response = True

    def received(self, data: bytes) -> None:
        if not (self._on and data and (self._after_response or self._deadline < math.inf)):
            return
        if self._after_response:
            self._after_response, self._tail = False, b""
            self._deadline = trio.current_time() + self._timeout
        seen = self._tail + data
        if b"\r\n\r\n" in seen or b"\n\n" in seen:
            self._deadline = math.inf
        self._tail = seen[-3:]


class ReplayStream(trio.abc.HalfCloseableStream):
    """A socket stream whose first reads return ``prefix`` (the bytes the accept loop already consumed).

    hypercorn's ``TCPServer`` uses ``socket``, ``receive_some``, ``send_all``, ``send_eof`` and ``aclose``;
    having no ``do_handshake`` tells it the stream is not TLS. Closing is shielded from cancellation. A later
    request head that does not end in time (``HeadDeadline``) reads as the end of the stream: hypercorn closes."""

    def __init__(self, stream: trio.SocketStream, prefix: bytes, head_timeout: float = math.inf) -> None:
        self.transport = stream
        self._prefix = memoryview(prefix)
        self._heads = HeadDeadline(head_timeout, prefix)

    @property
    def socket(self) -> trio.socket.SocketType:
        return self.transport.socket

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if not self._prefix:
            with trio.move_on_at(self._heads.deadline):
                data = await self.transport.receive_some(max_bytes)
                self._heads.received(data)
                return data
            log.info("request head not complete in time: connection closed")
            return b""
        await trio.lowlevel.checkpoint()
        size = len(self._prefix) if max_bytes is None else max_bytes
        data, self._prefix = bytes(self._prefix[:size]), self._prefix[size:]
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self._heads.sent(data)
        await self.transport.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        # Shielded: hypercorn closes a ``Connection: close`` response's connection from a task quart-trio is
        # already cancelling; unshielded, the first checkpoint would skip the close and leave the client waiting.
        with trio.CancelScope(shield=True):
            await self.transport.send_eof()

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await linger_close(self.transport)


class RequestHead:
    """The first request head of a connection: ``data`` is everything read so far (head and what followed)."""

    def __init__(self, data: bytes, end: int) -> None:
        self.data = data
        self.end = end  # index just past the blank line; -1 when the head is incomplete

    @property
    def complete(self) -> bool:
        return self.end >= 0

    @property
    def too_large(self) -> bool:
        return self.end > MAX_HEAD_BYTES + 4 or (not self.complete and len(self.data) > MAX_HEAD_BYTES)

    def method_and_path(self) -> tuple[bytes, bytes]:
        line = self.data[: self.data.find(b"\n")].rstrip(b"\r")
        parts = line.split(b" ")
        if len(parts) != 3:
            return b"", b""
        return parts[0], parts[1].partition(b"?")[0]

    def is_websocket_upgrade(self) -> bool:
        return _UPGRADE_WEBSOCKET.search(self.data, 0, self.end) is not None


async def read_request_head(stream: trio.abc.ReceiveStream, limit: int = MAX_HEAD_BYTES) -> RequestHead:
    """Read until the blank line ending the head, the peer's EOF, or more than ``limit`` bytes of head."""
    data = b""
    while True:
        if found := _HEAD_END.search(data, max(0, len(data) - RECEIVE_BYTES - 4)):
            return RequestHead(data, found.end())
        if len(data) > limit:
            return RequestHead(data, -1)
        chunk = await stream.receive_some(RECEIVE_BYTES)
        if not chunk:
            return RequestHead(data, -1)
        data += chunk


class ConnectionRouter:
    """Per accepted connection: read the head (bounded in size and time), then pick hot route or hypercorn."""

    def __init__(self, settings: Settings, hot: HotRoutes, hypercorn: Callable[[ReplayStream], Awaitable[None]]):
        self._timeout = settings.server.request_head_timeout_seconds
        self._hot = hot
        self._hypercorn = hypercorn

    async def __call__(self, stream: trio.SocketStream) -> None:
        try:
            await self._route(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        except Exception:  # one connection's bug must not take the accept loop (and every other one) down
            log.exception("connection handler failed")
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _route(self, stream: trio.SocketStream) -> None:
        head = None
        with trio.move_on_after(self._timeout):
            head = await read_request_head(stream)
        if head is None:
            await _answer(stream, _TIMEOUT)
        elif head.too_large:
            await _answer(stream, _TOO_LARGE)
        elif head.complete and self._is_hot(head):
            await self._hot.handle(stream, head.data)
        elif head.data:
            await self._hypercorn(ReplayStream(stream, head.data, self._timeout))

    def _is_hot(self, head: RequestHead) -> bool:
        method, path = head.method_and_path()
        return self._hot.wants(method, path) and head.is_websocket_upgrade()


async def _answer(stream: trio.SocketStream, response: bytes) -> None:
    with trio.move_on_after(LINGER_SECONDS):
        await stream.send_all(response)
    await linger_close(stream)


async def linger_close(stream: trio.SocketStream) -> None:
    """Close after reading (and dropping) what the client still sends, for a bounded time and size: closing a
    socket with unread data sends a reset, which can destroy a response the client has not read yet."""
    with trio.move_on_after(LINGER_SECONDS):
        try:
            await stream.send_eof()
            drained = 0
            while drained < LINGER_BYTES and (chunk := await stream.receive_some(RECEIVE_BYTES)):
                drained += len(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
            pass
    await stream.aclose()


def open_listeners(config: HypercornConfig) -> tuple[list[trio.SocketListener], list[str]]:
    """Bind and listen as hypercorn would (IPv6 literals, port 0, TCP_NODELAY); the URLs say the real ports."""
    listeners: list[trio.SocketListener] = []
    binds: list[str] = []
    for sock in config.create_sockets().insecure_sockets:
        sock.listen(config.backlog)
        listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
        binds.append(f"http://{repr_socket_addr(sock.family, sock.getsockname())}")
    return listeners, binds


class AnyOfHotRoutes:
    """Several hot route sets as one: the first that wants a request serves it."""

    def __init__(self, *routes: HotRoutes) -> None:
        self._routes = routes

    def wants(self, method: bytes, path: bytes) -> bool:
        return any(r.wants(method, path) for r in self._routes)

    async def handle(self, stream: trio.SocketStream, data: bytes) -> None:
        method, path = RequestHead(data, len(data)).method_and_path()
        for routes in self._routes:
            if routes.wants(method, path):
                await routes.handle(stream, data)
                return

    def going_away(self) -> None:
        for routes in self._routes:
            routes.going_away()


def _hot_routes(app: QuartTrio) -> HotRoutes:
    from handlers.hot_calls import CallRoutes
    from handlers.hot_ws import HotWebsockets

    svc: Services = app.config["HEARTH_SERVICES"]
    return AnyOfHotRoutes(HotWebsockets(svc), CallRoutes(svc))


async def serve_http(
    app: QuartTrio,
    settings: Settings,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; ``task_status.started`` gets the bound URLs (the real port when 0 was asked).

    On cancel: stop accepting, let open connections finish for ``server.shutdown_grace_seconds``, then run
    the app's lifespan shutdown."""
    stopping = trio.Event()
    async with trio.open_nursery() as nursery:
        try:
            binds: list[str] = await nursery.start(_serve_shielded, app, settings, stopping)
            log.info("listening on %s", " ".join(binds), extra={"urls": binds})
            task_status.started(binds)
            await trio.sleep_forever()
        finally:
            stopping.set()


async def _serve_shielded(
    app: QuartTrio, settings: Settings, stopping: trio.Event, *, task_status: trio.TaskStatus[list[str]]
) -> None:
    """Everything that must outlive the cancel long enough to shut down in order; ``stopping`` starts that."""
    config = hypercorn_config(settings)
    asgi = wrap_app(app, config.wsgi_max_body_size, "asgi")
    lifespan = Lifespan(asgi, config, {})
    with trio.CancelScope(shield=True):
        async with trio.open_nursery() as lifespan_nursery:
            await lifespan_nursery.start(lifespan.handle_lifespan)
            await lifespan.wait_for_startup()
            await _serve_connections(app, settings, config, asgi, lifespan.state, stopping, task_status)
            try:
                await lifespan.wait_for_shutdown()
            except LifespanTimeoutError:
                log.warning("the app's lifespan shutdown timed out")
            lifespan_nursery.cancel_scope.cancel()


async def _serve_connections(
    app: QuartTrio,
    settings: Settings,
    config: HypercornConfig,
    asgi: Any,
    state: Any,
    stopping: trio.Event,
    task_status: trio.TaskStatus[list[str]],
) -> None:
    context = WorkerContext(None)
    hot = _hot_routes(app)
    hypercorn = partial(TCPServer, asgi, config, context, ConnectionState(state.copy()))
    router = ConnectionRouter(settings, hot, lambda s: hypercorn(cast(Any, s)).run())
    listeners, binds = open_listeners(config)
    async with trio.open_nursery() as connections:
        accepting = trio.CancelScope()
        connections.start_soon(_accept, accepting, router, listeners, connections)
        task_status.started(binds)
        await stopping.wait()
        accepting.cancel()
        await context.terminated.set()
        hot.going_away()
        connections.cancel_scope.deadline = trio.current_time() + config.graceful_timeout


async def _accept(
    scope: trio.CancelScope,
    router: ConnectionRouter,
    listeners: list[trio.SocketListener],
    connections: trio.Nursery,
) -> None:
    with scope:
        await trio.serve_listeners(router, listeners, handler_nursery=connections)
