"""Hot websocket routes served below ASGI (DESIGN.md convention 10): action output, and exec ("websocketd").

``WS /api/v1/actions/{id}/output?framing=lines|chunks`` attaches to an action (replaying the ring first);
``WS /api/v1/actions/exec?argv=CMD&argv=ARG...&framing=lines|chunks`` (admins) starts a process action owned
by the caller and streams it; client messages go to its stdin, and the socket closing cancels it.
Both close with 1000 and the result as compact JSON in the reason. docs/streaming.md describes them.
"""

from __future__ import annotations

import http
import json
import logging
import re
import shlex
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from typing import Generic, TypeVar
from urllib.parse import parse_qs

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection
from wsproto.events import AcceptConnection, Request
from wsproto.utilities import RemoteProtocolError

from core import audit
from core.actions import Action
from core.authz import Resource, Rule, authorize, register_action
from core.errors import BadRequest, HearthError, Unauthenticated
from core.principals import Credential, CredentialKind, Principal
from core.services import Services
from handlers.hot_socket import ChunkFramer, Framer, HotSocket, LineFramer, OpenSockets, StdinLimits
from handlers.origin import check_origin
from storage import audit as audit_log

log = logging.getLogger("hearth.hot")

EXEC_PATH = b"/api/v1/actions/exec"
HOT_CALL_PATHS = (b"/api/v1/ws/", b"/api/v1/ws")  # handlers/hot_calls.py serves them
_OUTPUT_PATH = re.compile(rb"/api/v1/actions/([A-Za-z0-9_.-]{1,128})/output")
ACCESS_COOKIE = "hearth_access"
MAX_ARGV = 1024
FACE = "actions"
STDIN_STALLED = "stdin stalled: the process did not read its input"
T = TypeVar("T")

register_action("actions.exec", Rule("admin"))


@dataclass(frozen=True)
class Plan:
    """What an accepted socket streams: ``owned`` actions were started for it and die with it."""

    action: Action
    framing: str
    owned: bool

    def framer(self) -> Framer:
        return ChunkFramer() if self.framing == "chunks" else LineFramer()


class HotRouteSet:
    """A set of hot routes of one face: ``wants`` picks them by path, ``handle`` serves one connection; their
    open sockets are counted under the face and told when the server is going away."""

    def __init__(self, svc: Services, face: str) -> None:
        self._svc = svc
        self._sockets = OpenSockets(svc.metrics.websockets_open.labels(face=face))

    def going_away(self) -> None:
        self._sockets.going_away()


class HotWebsockets(HotRouteSet):
    """The action routes: exec and output."""

    def __init__(self, svc: Services) -> None:
        super().__init__(svc, FACE)

    def wants(self, method: bytes, path: bytes) -> bool:
        return method == b"GET" and (path == EXEC_PATH or _OUTPUT_PATH.fullmatch(path) is not None)

    async def handle(self, stream: trio.SocketStream, data: bytes) -> None:
        """Serve one connection whose first bytes (a complete request head, maybe more) are ``data``."""
        upgrade = await read_upgrade(stream, data, self._prepare)
        if upgrade is None:
            return
        plan = upgrade.prepared
        try:
            await self._serve(stream, await upgrade.accept(stream), plan)
        finally:
            if plan.owned:
                plan.action.cancel("the websocket closed")

    async def _serve(self, stream: trio.SocketStream, conn: Connection, plan: Plan) -> None:
        settings = self._svc.settings
        stdin = StdinLimits(settings.actions.stdin_buffer_bytes, settings.actions.stdin_stall_seconds, STDIN_STALLED)
        sock = HotSocket(stream, conn, max_message_bytes=settings.server.max_ws_message_bytes, stdin=stdin)
        with self._sockets.tracking(sock):
            owner_input = plan.action if plan.owned else None
            await sock.run(plan.action, plan.framer(), stdin=owner_input, lossless=plan.owned)  # spectators: lossy

    async def _prepare(self, request: Request) -> Plan:
        """Authenticate, authorize and find (or start) the action; a HearthError refuses the upgrade."""
        principal = await self._authenticate(request)
        path, _, query = request.target.partition("?")
        params = parse_qs(query, keep_blank_values=True)
        framing = _framing(params)
        if path.encode() == EXEC_PATH:
            return Plan(await self._start(principal, params), framing, owned=True)
        action = self._svc.actions.get(path.split("/")[-2])
        authorize(principal, "actions.read", Resource(kind="action", owner=action.owner, id=action.id))
        return Plan(action, framing, owned=False)

    async def _start(self, principal: Principal, params: dict[str, list[str]]) -> Action:
        authorize(principal, "actions.start")
        authorize(principal, "actions.exec")
        argv = params.get("argv", [])
        if not argv or not argv[0]:
            raise BadRequest("argv is required: ?argv=PROGRAM&argv=ARG...")
        if len(argv) > MAX_ARGV:
            raise BadRequest(f"at most {MAX_ARGV} argv values")
        action = await self._svc.actions.start_process(argv, owner=principal.name, hold_output=True)
        note = audit.entry(principal, "actions.exec", resource=f"action:{action.id}", detail=shlex.join(argv)[:2000])
        try:
            await audit_log.record(self._svc.db, note)
        except BaseException:
            action.cancel("the exec could not be audited")  # refused upgrade: nobody would own the process
            raise
        audit.emit(note)
        return action

    async def _authenticate(self, request: Request) -> Principal:
        headers = {name.lower(): value.decode("latin-1") for name, value in request.extra_headers}
        credential = credential_from_headers(headers)
        if credential is None:
            raise Unauthenticated("authentication required")
        if credential.kind is CredentialKind.COOKIE:
            check_origin(self._svc.settings.auth.allowed_origins, headers.get(b"origin"), request.host)
        return await self._svc.auth.authenticate(credential)


def is_hot_websocket_path(path: bytes) -> bool:
    """Whether ``path`` is served on the hot path (these routes and the call API's)."""
    return path in HOT_CALL_PATHS or path == EXEC_PATH or _OUTPUT_PATH.fullmatch(path) is not None


def credential_from_headers(headers: dict[bytes, str]) -> Credential | None:
    """Authorization: Bearer, then X-API-Key, then the ``hearth_access`` cookie (header names lower-case)."""
    scheme, _, value = headers.get(b"authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return Credential(CredentialKind.BEARER, value.strip())
    if key := headers.get(b"x-api-key", "").strip():
        return Credential(CredentialKind.API_KEY, key)
    if cookie := _cookie(headers.get(b"cookie", ""), ACCESS_COOKIE):
        return Credential(CredentialKind.COOKIE, cookie)
    return None


def _cookie(header: str, name: str) -> str:
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(header)
    except CookieError:
        return ""
    morsel = jar.get(name)
    return morsel.value if morsel is not None else ""


def _framing(params: dict[str, list[str]]) -> str:
    framing = params.get("framing", ["lines"])[-1]
    if framing not in ("lines", "chunks"):
        raise BadRequest("framing must be lines or chunks")
    return framing


class Upgrade(Generic[T]):
    """A websocket upgrade request that checked out: what ``prepare`` made of it, and the 101 answer to send.
    ``accept`` lets go of the handshake's HTTP parser (an idle socket keeps only wsproto's connection)."""

    def __init__(self, ws: WSConnection, prepared: T) -> None:
        self._ws: WSConnection | None = ws
        self.prepared = prepared

    async def accept(self, stream: trio.SocketStream, subprotocol: str | None = None) -> Connection:
        ws, self._ws = self._ws, None
        assert ws is not None, "accepted twice"
        await stream.send_all(ws.send(AcceptConnection(subprotocol=subprotocol)))
        assert ws.connection is not None
        return ws.connection


async def read_upgrade(
    stream: trio.SocketStream, data: bytes, prepare: Callable[[Request], Awaitable[T]]
) -> Upgrade[T] | None:
    """The upgrade request in ``data`` and what ``prepare`` makes of it; None when the upgrade was refused
    (a HearthError gives its status, any other exception 500, with a JSON body either way)."""
    ws = WSConnection(ConnectionType.SERVER)
    try:
        request = handshake(ws, data)
        return Upgrade(ws, await prepare(request))
    except HearthError as e:
        await refuse(stream, e.status, e.detail)
    except Exception:
        log.exception("websocket upgrade failed")
        await refuse(stream, 500, "internal error")
    return None


def handshake(ws: WSConnection, data: bytes) -> Request:
    """The upgrade request in ``data``; a malformed upgrade is refused with 400 (426 for a wrong version)."""
    try:
        ws.receive_data(data)
        events = list(ws.events())
    except RemoteProtocolError as e:
        hint = getattr(e.event_hint, "status_code", 400)
        raise _UpgradeRefused(hint, str(e)) from None
    except ValueError:  # UnicodeError and kin: e.g. a Host header that is not a valid host name
        raise _UpgradeRefused(400, "malformed websocket upgrade request") from None
    if not events or not isinstance(events[0], Request):
        raise _UpgradeRefused(400, "not a websocket upgrade")
    return events[0]


class _UpgradeRefused(HearthError):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


async def refuse(stream: trio.SocketStream, status: int, detail: str) -> None:
    """A plain HTTP error instead of the upgrade, JSON ``{"detail": ...}`` like every REST error."""
    body = json.dumps({"detail": detail}).encode()
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    extra = "sec-websocket-version: 13\r\n" if status == 426 else ""
    head = (
        f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        f"{extra}connection: close\r\n\r\n"
    )
    with trio.move_on_after(5):
        await stream.send_all(head.encode() + body)
