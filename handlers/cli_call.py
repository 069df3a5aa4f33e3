"""`hearth call`: the command-line client of the Distillery call protocol (specs/calls.md §2, §2a, §4)."""

from __future__ import annotations

import argparse
import codecs
import http
import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO, TextIO
from urllib.parse import urlsplit, urlunsplit

import msgspec
import trio
from trio_websocket import (
    CloseReason,
    ConnectionClosed,
    ConnectionRejected,
    ConnectionTimeout,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)

from core.config import Settings
from core.errors import ConfigError

WS_PATH = "/api/v1/ws/"
POW_PROTOCOL = "pow-1"
TOKEN_ENV = "HEARTH_TOKEN"
CLOSE_FRAME = b'{"signal":"close"}'
CANCEL_FRAME = b'{"signal":"cancel"}'
INPUT_FRAME_CHARS = 64 * 1024  # a longer stdin line goes out as several frames, like the server's output
READ_BYTES = 64 * 1024
OUTBOX_FRAMES = 16  # frames waiting for the writer; stdin is not read further ahead than this
CONNECT_TIMEOUT = 10.0
DISCONNECT_TIMEOUT = 2.0
EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130
_WS_SCHEMES = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}
_DETAIL_KEYS = ("detail", "message", "error", "reason")

Frame = str | bytes


@dataclass(frozen=True)
class CallRequest:
    """What to run and where: the websocket URL, the bearer token ("" = none), the subprotocol choice."""

    url: str
    token: str
    pow: bool
    name: str
    params: list[str]

    def call_frame(self) -> bytes:
        return msgspec.json.encode({"call": self.name, "params": self.params})

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"authorization", b"Bearer " + self.token.encode("ascii"))] if self.token else []

    def subprotocols(self) -> list[str]:
        return [POW_PROTOCOL] if self.pow else []


@dataclass(frozen=True)
class Outcome:
    """How the call ended: the exit status, the message for stderr, and a pow-1 ``value``."""

    status: int
    message: str = ""
    value: Any = None


@dataclass
class Streams:
    """The process's standard streams: stdin as a file descriptor, stdout as bytes, stderr as text."""

    stdin_fd: int
    out: BinaryIO
    err: TextIO

    @classmethod
    def standard(cls) -> Streams:
        """The process's own streams; a closed stdin reads as empty, a closed stdout writes to nowhere."""
        stdin = sys.stdin.fileno() if sys.stdin is not None else os.open(os.devnull, os.O_RDONLY)
        stdout = sys.stdout.buffer if sys.stdout is not None else open(os.devnull, "wb")  # noqa: SIM115 - for life
        return cls(stdin, stdout, sys.stderr)

    def write_line(self, text: str) -> bool:
        """One output line, flushed at once; False when stdout is gone (it is then pointed at /dev/null)."""
        try:
            self.out.write(text.encode("utf-8", "replace") + b"\n")
            self.out.flush()
        except OSError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), self.out.fileno())
            return False
        return True


def call_command(settings: Settings, args: argparse.Namespace) -> int:
    """`hearth call [--url URL] [--token T] [--pow] NAME [PARAM...]`: run one call, return the exit status."""
    request = request_from_args(settings, args, os.environ)
    return trio.run(run_call, request, Streams.standard())


def request_from_args(settings: Settings, args: argparse.Namespace, environ: Mapping[str, str]) -> CallRequest:
    token = args.token if args.token is not None else environ.get(TOKEN_ENV, "")
    check_token(token)
    return CallRequest(call_url(args.url, settings.port), token, bool(args.pow), args.name, list(args.params))


def call_url(url: str | None, port: int) -> str:
    """http(s) becomes ws(s), ws(s) stays; a URL without a path gets /api/v1/ws/; bad URLs are usage errors."""
    if url is None:
        if port == 0:
            raise ConfigError("--url", "the configured port is 0, so name the server with --url")
        url = f"http://127.0.0.1:{port}"
    parts = urlsplit(url)
    scheme = _WS_SCHEMES.get(parts.scheme.lower())
    if scheme is None or not parts.hostname or not _port_is_valid(url):
        raise ConfigError("--url", f"{url!r} is not a valid http://, https://, ws:// or wss:// URL")
    path = WS_PATH if parts.path in ("", "/") else parts.path
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


def _port_is_valid(url: str) -> bool:
    try:
        urlsplit(url).port  # noqa: B018 - the property raises ValueError on a bad port
    except ValueError:
        return False
    return True


def check_token(token: str) -> None:
    """A bearer token is visible ASCII: anything else could not travel in a header (or would split it)."""
    if not all(0x21 <= ord(c) <= 0x7E for c in token):
        raise ConfigError("--token", "contains characters that an HTTP header cannot carry")


async def run_call(request: CallRequest, streams: Streams) -> int:
    """Connect, run the call while watching Ctrl-C, then report the outcome; returns the exit status."""
    run = CallRun(request, streams)
    with trio.open_signal_receiver(signal.SIGINT) as interrupts:
        async with trio.open_nursery() as nursery:
            run.outer_scope = nursery.cancel_scope
            nursery.start_soon(watch_interrupts, interrupts, run)
            await run.connect_and_call()
            nursery.cancel_scope.cancel()
    return run.report()


async def watch_interrupts(interrupts: Any, run: CallRun) -> None:
    async for _ in interrupts:
        run.on_interrupt()


class CallRun:
    """The state of one `hearth call`: the first outcome settled wins (a result beats a failed close)."""

    def __init__(self, request: CallRequest, streams: Streams) -> None:
        self.request = request
        self.streams = streams
        self.outcome: Outcome | None = None
        self.session: CallSession | None = None
        self.session_scope = trio.CancelScope()
        self.outer_scope: trio.CancelScope | None = None

    def settle(self, outcome: Outcome) -> None:
        if self.outcome is None:
            self.outcome = outcome

    async def connect_and_call(self) -> None:
        with self.session_scope:
            try:
                await self._call()
            except ConnectionRejected as e:
                self.settle(Outcome(EXIT_FAILED, rejected_message(e)))
            except HandshakeError as e:
                self.settle(Outcome(EXIT_FAILED, handshake_message(e, self.request.url)))
            except (OSError, trio.BrokenResourceError) as e:
                self.settle(Outcome(EXIT_FAILED, f"connection to {self.request.url} failed: {e}"))

    async def _call(self) -> None:
        async with open_websocket_url(
            self.request.url,
            subprotocols=self.request.subprotocols(),
            extra_headers=self.request.headers(),
            connect_timeout=CONNECT_TIMEOUT,
            disconnect_timeout=DISCONNECT_TIMEOUT,
        ) as ws:
            self.session = CallSession(self.request, self.streams)
            self.settle(await self.session.run(ws))

    def on_interrupt(self) -> None:
        """First Ctrl-C cancels the call; the next closes the connection (130); one more stops waiting for that."""
        if self.session is not None and self.session.interrupt():
            return
        self.settle(Outcome(EXIT_INTERRUPTED, "interrupted"))
        if self.session_scope.cancel_called and self.outer_scope is not None:
            self.outer_scope.cancel()
        self.session_scope.cancel()

    def report(self) -> int:
        outcome = self.outcome or Outcome(EXIT_FAILED, "connection closed without a result")
        if outcome.value is not None:
            self.streams.write_line(msgspec.json.encode(outcome.value).decode())
        if outcome.status != EXIT_OK:
            print(f"hearth: {one_line(outcome.message)}", file=self.streams.err, flush=True)
        return outcome.status


class CallSession:
    """One call on an open websocket: the reader (here), the writer and the stdin pump in one nursery."""

    def __init__(self, request: CallRequest, streams: Streams) -> None:
        self._request = request
        self._streams = streams
        self._outbox, self._outbox_recv = trio.open_memory_channel[Frame](OUTBOX_FRAMES)
        self._input_scope = trio.CancelScope()
        self._nursery: trio.Nursery | None = None
        self._cancel_sent = False

    async def run(self, ws: WebSocketConnection) -> Outcome:
        """Send the call, stream both ways until the result (or the end of the connection) and return it."""
        lines = InputLines(keep_ends=ws.subprotocol == POW_PROTOCOL)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(write_frames, ws, self._request.call_frame(), self._outbox_recv)
                nursery.start_soon(self._pump_input, lines)
                outcome = await read_frames(ws, self._streams)
                nursery.cancel_scope.cancel()
        finally:
            self._nursery = None
        return outcome

    def interrupt(self) -> bool:
        """Stop reading stdin and send cancel; False when cancel was already sent or there is no call."""
        if self._cancel_sent or self._nursery is None:
            return False
        self._cancel_sent = True
        self._input_scope.cancel()
        self._nursery.start_soon(self._outbox.send, CANCEL_FRAME)
        return True

    async def _pump_input(self, lines: InputLines) -> None:
        with self._input_scope:
            await pump_stdin(self._streams.stdin_fd, lines, self._outbox.clone())


async def write_frames(ws: WebSocketConnection, first: bytes, outbox: trio.MemoryReceiveChannel[Frame]) -> None:
    """The one writer: the CallMessage first, then whatever the pump and Ctrl-C queue."""
    try:
        await ws.send_message(first)
        async for frame in outbox:
            await ws.send_message(frame)
    except ConnectionClosed:
        return  # the reader tells how the connection ended


async def read_frames(ws: WebSocketConnection, streams: Streams) -> Outcome:
    """The one reader: text frames to stdout, until the binary result frame or the end of the connection."""
    while True:
        try:
            message = await ws.get_message()
        except ConnectionClosed as e:
            return Outcome(EXIT_FAILED, closed_message(e.reason))
        if isinstance(message, str):
            if not streams.write_line(message):
                return Outcome(EXIT_FAILED, "standard output was closed")
        elif (outcome := parse_result(message)) is not None:
            return outcome


async def pump_stdin(fd: int, lines: InputLines, outbox: trio.MemorySendChannel[Frame]) -> None:
    """stdin lines become text frames; at EOF the close signal follows."""
    async with outbox:
        while data := await read_stdin(fd):
            for frame in lines.feed(data):
                await outbox.send(frame)
        for frame in lines.finish():
            await outbox.send(frame)
        await outbox.send(CLOSE_FRAME)


async def read_stdin(fd: int) -> bytes:
    """One read in a worker thread, abandoned on cancel (a terminal may never answer); b"" at EOF or error."""
    try:
        return await trio.to_thread.run_sync(os.read, fd, READ_BYTES, abandon_on_cancel=True)
    except OSError:
        return b""


class InputLines:
    """Splits stdin bytes into text frames: UTF-8 (bad bytes become U+FFFD), one per line, bounded in size.

    v1 frames carry the line without its terminator (the server adds one); pow-1 frames keep it, since the
    server writes them to stdin exactly as received.
    """

    def __init__(self, *, keep_ends: bool) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._pending = ""
        self._keep_ends = keep_ends

    def feed(self, data: bytes) -> list[str]:
        self._pending += self._decoder.decode(data)
        return self._take(final=False)

    def finish(self) -> list[str]:
        self._pending += self._decoder.decode(b"", final=True)
        return self._take(final=True)

    def _take(self, *, final: bool) -> list[str]:
        *lines, rest = self._pending.split("\n")
        frames = [piece for line in lines for piece in self._pieces(line + "\n")]
        while len(rest) > INPUT_FRAME_CHARS or (final and rest):
            frames.append(rest[:INPUT_FRAME_CHARS])
            rest = rest[INPUT_FRAME_CHARS:]
        self._pending = rest
        return frames

    def _pieces(self, line: str) -> list[str]:
        if not self._keep_ends:
            line = line.removesuffix("\n").removesuffix("\r")
        return [line[i : i + INPUT_FRAME_CHARS] for i in range(0, len(line), INPUT_FRAME_CHARS)] or [""]


def parse_result(data: bytes) -> Outcome | None:
    """The result frame of v1 (``success``) or pow-1 (``status``); None for other JSON objects (ignored)."""
    try:
        obj = msgspec.json.decode(data)
    except (msgspec.DecodeError, RecursionError):
        return Outcome(EXIT_FAILED, "the server sent a control frame that is not JSON")
    if not isinstance(obj, dict):
        return None
    if "success" in obj:
        return Outcome(EXIT_OK) if obj["success"] is True else Outcome(EXIT_FAILED, _text(obj.get("message")))
    if obj.get("status") == "fulfilled":
        return Outcome(EXIT_OK, value=obj.get("value"))
    if obj.get("status") == "rejected":
        return Outcome(EXIT_FAILED, _text(obj.get("reason")))
    return None


def _text(value: Any) -> str:
    return value if isinstance(value, str) and value else "the call failed"


def closed_message(reason: CloseReason | None) -> str:
    if reason is None:
        return "connection closed without a result"
    text = f": {reason.reason}" if reason.reason else ""
    return f"connection closed without a result (code {reason.code}{text})"


def rejected_message(e: ConnectionRejected) -> str:
    try:
        phrase = f" {http.HTTPStatus(e.status_code).phrase}"
    except ValueError:
        phrase = ""
    detail = body_detail(e.body)
    return f"the server refused the connection: HTTP {e.status_code}{phrase}" + (f": {detail}" if detail else "")


def body_detail(body: bytes | None) -> str:
    """The ``detail`` (or ``message``, ``error``) of a JSON error body, else ""."""
    try:
        obj = msgspec.json.decode(body or b"")
    except (msgspec.DecodeError, RecursionError):
        return ""
    found = [obj[k] for k in _DETAIL_KEYS if isinstance(obj, dict) and isinstance(obj.get(k), str)]
    return found[0][:200] if found else ""


def handshake_message(e: HandshakeError, url: str) -> str:
    if isinstance(e, ConnectionTimeout):
        return f"timed out connecting to {url}"
    return f"cannot connect to {url}: {os_reason(e.__cause__) or 'handshake failed'}"


def os_reason(exc: BaseException | None) -> str:
    """The most telling words of a connect failure: trio hides "Connection refused" in a group's leaves."""
    if isinstance(exc, BaseExceptionGroup):
        return os_reason(exc.exceptions[0])
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if exc is not None and (exc.__cause__ is not None or exc.__context__ is not None):
        return os_reason(exc.__cause__ or exc.__context__) or str(exc)
    return str(exc) if exc is not None else ""


def one_line(message: str) -> str:
    """A server-chosen message, with control characters (escape sequences, newlines) made harmless."""
    return "".join(c if c.isprintable() else " " for c in message).strip() or "the call failed"
