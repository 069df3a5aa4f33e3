"""``WS /api/v1/ws/``: the Distillery call protocol (specs/calls.md §2, §2a) on the hot path below ASGI.

Binary frames carry JSON control messages, text frames one line of input or output. The first message names
the call; exactly one result frame ends every call that a client is still there to receive, then close 1000.
"""

from __future__ import annotations

import contextlib
import logging

import trio
from wsproto.connection import Connection, ConnectionState
from wsproto.events import BytesMessage, CloseConnection, Event, Ping, Request, TextMessage

from core.actions import Action
from core.call_service import CallService, RunningCall, call_result, failure, internal_error
from core.errors import HearthError
from core.principals import ANONYMOUS, CredentialKind, Principal
from core.protocols import calls as proto
from core.protocols.websocket_frames import (
    CLOSE_INTERNAL_ERROR,
    CLOSE_NORMAL,
    CLOSE_TOO_BIG,
    OP_BINARY,
    encode_frame,
)
from core.services import Services
from handlers.call_io import CallFramer
from handlers.hot_socket import HotSocket, StdinLimits
from handlers.hot_ws import HOT_CALL_PATHS, HotRouteSet, credential_from_headers, read_upgrade
from handlers.origin import check_origin

log = logging.getLogger("hearth.calls")

CALL_PATHS = HOT_CALL_PATHS
FACE = "calls"


class CallRoutes(HotRouteSet):
    """The hot route of the call API."""

    def __init__(self, svc: Services) -> None:
        super().__init__(svc, FACE)
        self._calls = CallService(svc)

    def wants(self, method: bytes, path: bytes) -> bool:
        return method == b"GET" and path in CALL_PATHS

    async def handle(self, stream: trio.SocketStream, data: bytes) -> None:
        upgrade = await read_upgrade(stream, data, self._prepare)
        if upgrade is None:
            return
        principal, subprotocol = upgrade.prepared
        conn = await upgrade.accept(stream, subprotocol)
        sock = CallSocket(stream, conn, self._svc, self._calls, principal, subprotocol)
        with self._sockets.tracking(sock):
            await sock.serve()

    async def _prepare(self, request: Request) -> tuple[Principal, str | None]:
        return await self._principal(request), proto.choose_subprotocol(list(request.subprotocols))

    async def _principal(self, request: Request) -> Principal:
        """The caller; no credential, or one that does not check out, is anonymous (told in the result)."""
        headers = {name.lower(): value.decode("latin-1") for name, value in request.extra_headers}
        credential = credential_from_headers(headers)
        if credential is None:
            return ANONYMOUS
        if credential.kind is CredentialKind.COOKIE:
            check_origin(self._svc.settings.auth.allowed_origins, headers.get(b"origin"), request.host)
        try:
            return await self._svc.auth.authenticate(credential)
        except HearthError:
            return ANONYMOUS


class CallSocket(HotSocket):
    """One call connection: the first message, then the action streamed with exactly one result."""

    def __init__(
        self,
        stream: trio.SocketStream,
        ws: Connection,
        svc: Services,
        calls: CallService,
        principal: Principal,
        subprotocol: str | None,
    ) -> None:
        settings = svc.settings.calls
        stdin = StdinLimits(settings.buffer_bytes, settings.stdin_stall_seconds, proto.MSG_CANCELLED)
        super().__init__(stream, ws, max_message_bytes=settings.max_frame_bytes, stdin=stdin)
        self._svc = svc
        self._calls = calls
        self._principal = principal
        self._subprotocol = subprotocol
        self._first_scope = trio.CancelScope()
        self._call: RunningCall | None = None
        self._action: Action | None = None
        self._close_code = CLOSE_NORMAL
        self._discarding = False
        self._cancels = 0
        self._partial_control = b""
        self.result: proto.CallResult | None = None

    # -- life of the connection -------------------------------------------------------------------------

    def going_away(self) -> None:
        """The server is stopping: a running call is cancelled (its result says so); a waiting one is told."""
        self._going_away = True
        if self._action is not None:
            self._action.cancel(proto.MSG_SHUTTING_DOWN)
        self._first_scope.cancel()

    async def serve(self) -> None:
        try:
            admitted = await self._admit()
        except Exception:
            admitted = internal_error("call admission failed")
        if isinstance(admitted, proto.CallResult):
            await self._answer_without_action(admitted)
            return
        try:
            await self._run_call(admitted)
        except Exception:
            await self._fail_unexpectedly("call failed")
        finally:
            with trio.CancelScope(shield=True):
                await self._end_call(admitted)

    async def _admit(self) -> RunningCall | proto.CallResult:
        message = await self._first_message()
        if isinstance(message, proto.CallResult):
            return message
        return await self._calls.admit(self._principal, message)

    async def _run_call(self, call: RunningCall) -> None:
        self._call = call
        started = await self._calls.start(call)
        if isinstance(started, proto.CallResult):
            await self._answer_without_action(started)
            return
        self._action = started
        if self._going_away:
            started.cancel(proto.MSG_SHUTTING_DOWN)
        await self.run(started, CallFramer(call), stdin=started)

    async def _fail_unexpectedly(self, what: str) -> None:
        """An exception of ours: the client still gets its one result, ``internal error (ref ID)``."""
        result = internal_error(what)
        if self._action is not None:
            self._action.cancel(result.message)
        if self.result is None and not self._close_written:
            self.result = result
            with trio.move_on_after(5), contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self._send_result_and_close(result)

    async def _output_failed(self, action: Action) -> tuple[int, str]:
        """As HotSocket, but the call still gets its one result."""
        if self.result is not None:
            return CLOSE_INTERNAL_ERROR, "internal error"
        self.result = internal_error("call output failed")
        action.cancel(self.result.message)
        await self._send([_result_frame(self.result, self._subprotocol)])
        return self._close_code, ""

    async def _end_call(self, call: RunningCall) -> None:
        """The client may be gone: cancel what still runs; the audit gets the outcome either way."""
        if self._action is not None:
            self._action.cancel(proto.MSG_CANCELLED)
            result = self.result or call_result(await self._action.wait_result())
        else:
            result = self.result or failure(proto.MSG_CANCELLED)
        await self._calls.finish(call, result)

    async def _answer_without_action(self, result: proto.CallResult) -> None:
        self.result = result
        with trio.move_on_after(5):
            try:
                await self._send_result_and_close(result)
                await self._wait_close_reply()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    # -- the first message ------------------------------------------------------------------------------

    async def _first_message(self) -> proto.CallMessage | proto.CallResult:
        timeout = self._svc.settings.calls.first_message_timeout
        with self._first_scope, trio.move_on_after(timeout):
            try:
                return await self._read_first()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return failure(proto.MSG_CANCELLED)
        return failure(proto.MSG_SHUTTING_DOWN if self._going_away else proto.MSG_FIRST_TIMEOUT)

    async def _read_first(self) -> proto.CallMessage | proto.CallResult:
        """Read until the first complete message; events behind it wait in ``_pending`` for the reader."""
        payload = bytearray()
        while True:
            data = await self._receive()
            if not data:
                return failure(proto.MSG_CANCELLED)
            self._ws.receive_data(data)
            events = list(self._ws.events())
            for index, event in enumerate(events):
                answer = await self._first_event(event, payload)
                if answer is not None:
                    self._pending = events[index + 1 :]
                    return answer

    async def _first_event(self, event: Event, payload: bytearray) -> proto.CallMessage | proto.CallResult | None:
        if isinstance(event, Ping) and self._ws.state is ConnectionState.OPEN:
            await self._send([self._ws.send(event.response())])
        elif isinstance(event, CloseConnection):
            if self._ws.state is ConnectionState.OPEN:  # a frame wsproto could not parse (bad UTF-8, ...)
                self._close_code = event.code
                return failure(proto.MSG_UNKNOWN_CALL)
            await self._send_close(event.code, event.reason or "")
            return failure(proto.MSG_CANCELLED)
        elif isinstance(event, TextMessage):
            return failure(proto.MSG_UNKNOWN_CALL)
        elif isinstance(event, BytesMessage):
            payload += event.data
            if len(payload) > self._max_message:
                self._close_code = CLOSE_TOO_BIG
                return failure(proto.MSG_CANCELLED)
            if event.message_finished:
                return _decode_first(bytes(payload))
        return None

    # -- the end: one result frame, then close --------------------------------------------------------------

    async def _after_output(self, action: Action, framer: object) -> tuple[int, str]:
        result = call_result(await action.wait_result())
        self.result = result
        await self._send([_result_frame(result, self._subprotocol)])
        return self._close_code, ""

    async def _send_result_and_close(self, result: proto.CallResult) -> None:
        await self._send([_result_frame(result, self._subprotocol)])
        await self._send_close(self._close_code, "")

    async def _wait_close_reply(self) -> None:
        """After our close frame, read until the client's close (or it goes away)."""
        while self._ws.state is not ConnectionState.CLOSED:
            data = await self._receive()
            if not data:
                return
            self._ws.receive_data(data)
            for _ in self._ws.events():
                pass

    # -- client frames during the call ----------------------------------------------------------------------

    async def _on_event(self, event: Event, stdin: Action | None) -> bool:
        """As HotSocket, but a frame wsproto could not parse (it reports a close while still OPEN) ends the call
        with ``cancelled`` and its close code, after the result; the reader stops reading a broken stream."""
        if isinstance(event, CloseConnection) and self._ws.state is ConnectionState.OPEN and self._action is not None:
            self._close_code = event.code
            self._action.cancel(proto.MSG_CANCELLED)
            await trio.sleep_forever()  # the writer sends the result and the close, then ends this task
        return await super()._on_event(event, stdin)

    async def _on_message(self, event: TextMessage | BytesMessage, stdin: Action | None) -> bool:
        data = event.data.encode() if isinstance(event, TextMessage) else bytes(event.data)
        # input is limited per frame (it streams to stdin), a control message as a whole (it is assembled)
        ends_count = event.frame_finished if isinstance(event, TextMessage) else event.message_finished
        if self._too_big(len(data), ends_count) or self._discarding:
            return False
        if self._call is not None:
            self._call.bytes_in += len(data)
        if stdin is None:
            return False
        if isinstance(event, TextMessage):
            await self._input(stdin, data, event.message_finished)
        elif event.message_finished:
            await self._control(stdin, self._assembled(data))
        else:
            self._partial_control += data
        return False

    def _too_big(self, size: int, finished: bool) -> bool:
        """A frame (or control message) over the limit ends the call: ``cancelled``, close 1009; the rest of it
        is read and dropped."""
        self._message_bytes += size
        over = self._message_bytes > self._max_message
        if finished:
            self._message_bytes = 0
        if over and not self._discarding:
            self._discarding = True
            self._close_code = CLOSE_TOO_BIG
            if self._action is not None:
                self._action.cancel(proto.MSG_CANCELLED)
        return over

    def _assembled(self, data: bytes) -> bytes:
        partial, self._partial_control = self._partial_control, b""
        return partial + data

    async def _input(self, stdin: Action, data: bytes, finished: bool) -> None:
        """v1: each text frame is a line (``\\n`` added); pow-1: written exactly as received."""
        if finished and self._subprotocol != proto.POW1:
            data += b"\n"
        if (feeder := self._feeder(stdin)) is not None:
            await feeder.put(data)

    def _close_input(self) -> None:
        if self._action is not None and (feeder := self._feeder(self._action)) is not None:
            feeder.close()

    async def _control(self, action: Action, payload: bytes) -> None:
        message = proto.decode_signal(payload)
        name = message.signal if message is not None else None
        if name == "cancel":
            self._cancels += 1
            if self._cancels > 1 and self._subprotocol == proto.POW1:
                self._close_input()
            action.cancel(proto.MSG_CANCELLED)
        elif name == "close":
            self._close_input()
        elif self._subprotocol == proto.POW1:
            action.cancel(proto.MSG_PROTOCOL_ERROR)
        else:
            self._svc.metrics.calls_ignored_frames.inc()


def _decode_first(payload: bytes) -> proto.CallMessage | proto.CallResult:
    try:
        return proto.decode_call(payload)
    except proto.NotACall:
        return failure(proto.MSG_UNKNOWN_CALL)
    except Exception:
        return internal_error("first message")


def _result_frame(result: proto.CallResult, subprotocol: str | None) -> bytes:
    return encode_frame(OP_BINARY, proto.encode_result(result, subprotocol))
