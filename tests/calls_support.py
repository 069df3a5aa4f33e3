"""Shared helpers for the call-socket suites: a server with test commands, clients, and process probes."""

from __future__ import annotations

import json
import os
import resource
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError

from tests.conftest import RunningServer, make_settings, start_server

SCRIPTS = Path(__file__).parent / "scripts"
WS_PATH = "/api/v1/ws/"
KIB = 1024
MIB = 1024 * KIB
FRAME_LIMIT = 64 * KIB  # the largest output frame (specs/calls.md §2)
LONG_YES_LINE = "y" * 1000


def script(name: str) -> str:
    return str(SCRIPTS / name)


def _command(argv: list[str], params: Sequence[str] = (), **extra: Any) -> dict[str, Any]:
    return {"argv": argv, "params": list(params), "role": "admin", **extra}


def command_settings() -> dict[str, dict[str, Any]]:
    """The administrator-defined commands every call-socket test server has (specs/calls.md §3)."""
    return {
        "cat": _command(["cat"]),
        "ready_cat": _command(["sh", "-c", "echo ready; exec cat"]),
        "pid_cat": _command([script("pid_then.sh"), "cat"]),
        "echo_stdin": _command([script("echo_stdin.sh")]),
        "seq": _command(["seq", "1"], ["last"]),
        "merged": _command(["sh", "-c", "echo out1; sleep 0.2; echo err1 >&2; sleep 0.2; echo out2"]),
        "crlf": _command(["printf", "a\\r\\nb\\r\\n\\r\\nc"]),
        "long_lines": _command([script("long_lines.sh")], ["ascii", "accented"]),
        "bad_utf8": _command([script("bad_utf8.sh")]),
        "exit_with": _command(["sh", "-c", 'exit "$1"', "sh"], ["code"]),
        "kill_self": _command(["sh", "-c", 'kill -"$1" $$', "sh"], ["signal"]),
        "slow": _command([script("pid_then.sh"), "sleep", "30"], timeout=1),
        "forker": _command([script("forker.sh")]),
        "ignore_term": _command([script("ignore_term.sh")]),
        "term_stdin": _command([script("term_stdin.sh")], ["marker"]),
        "args": _command([script("print_args.sh")], ["first", "second"]),
        "secret": _command(["true"], ["user", "password"], secret_params=["password"]),
        "member_true": _command(["true"], role="member"),
        "gigabyte": _command([script("pid_then.sh"), script("gigabyte.sh")]),
        "yes_pid": _command([script("pid_then.sh"), "yes", LONG_YES_LINE]),
        "yes": _command(["yes"]),
        "fuzz_lines": _command([script("fuzz_lines.sh")], ["count", "code"]),
    }


def raise_fd_limit(wanted: int = 8192) -> None:
    """Hundreds of calls in one process need sockets and pipes on both sides of each connection."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


async def start_calls_server(nursery: trio.Nursery, data_dir: Path, **calls: Any) -> RunningServer:
    """A real server with the test commands; ``calls`` overrides settings of the ``[calls]`` section."""
    section: dict[str, Any] = {"commands": command_settings(), "first_message_timeout": 1.0}
    section.update(calls)
    return await start_server(nursery, make_settings(data_dir, calls=section))


def key_headers(key: str | None) -> list[tuple[bytes, bytes]]:
    return [] if key is None else [(b"X-API-Key", key.encode())]


@asynccontextmanager
async def open_call_socket(
    server: RunningServer,
    key: str | None,
    *,
    subprotocols: Sequence[str] | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
    **options: Any,
) -> AsyncIterator[WebSocketConnection]:
    """A trio-websocket connection to ``WS /api/v1/ws/`` (credentials sent at the upgrade)."""
    extra = key_headers(key) + (headers or [])
    url = server.ws_url + WS_PATH
    async with open_websocket_url(
        url, subprotocols=subprotocols, extra_headers=extra, connect_timeout=10, disconnect_timeout=5, **options
    ) as ws:
        try:
            yield ws
        finally:
            # trio-websocket 0.12 never closes its TCP stream after a close the server started (its aclose returns
            # early once a close reason is set): close it here so no socket is left to the garbage collector.
            await ws._stream.aclose()


def call_frame(call: str, params: Sequence[Any] | None = None) -> bytes:
    body: dict[str, Any] = {"call": call}
    if params is not None:
        body["params"] = list(params)
    return json.dumps(body).encode()


CANCEL = b'{"signal":"cancel"}'
CLOSE_STDIN = b'{"signal":"close"}'


@dataclass
class Transcript:
    """Everything the server sent on one connection, in order, and how it closed."""

    frames: list[str | bytes] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str | None = None

    @property
    def texts(self) -> list[str]:
        return [f for f in self.frames if isinstance(f, str)]

    @property
    def binaries(self) -> list[bytes]:
        return [f for f in self.frames if isinstance(f, bytes)]

    @property
    def result(self) -> dict[str, Any]:
        """The one result; fails unless there is exactly one binary frame and it is the last frame."""
        assert len(self.binaries) == 1, f"expected exactly one result frame, got {self.binaries!r}"
        assert isinstance(self.frames[-1], bytes), f"text frames after the result: {self.frames[-3:]!r}"
        decoded: dict[str, Any] = json.loads(self.binaries[0])
        assert isinstance(decoded, dict), f"the result is not a JSON object: {self.binaries[0]!r}"
        return decoded

    def texts_before_result(self) -> list[str]:
        _ = self.result
        return self.texts


async def collect(ws: WebSocketConnection, transcript: Transcript | None = None) -> Transcript:
    """Read every frame until the server closes; bounded by the caller's cancel scope."""
    out = transcript or Transcript()
    while True:
        try:
            out.frames.append(await ws.get_message())
        except ConnectionClosed as closed:
            assert closed.reason is not None
            out.close_code = closed.reason.code
            out.close_reason = closed.reason.reason
            return out


async def run_call(
    server: RunningServer,
    key: str | None,
    call: str,
    params: Sequence[Any] | None = None,
    *,
    subprotocols: Sequence[str] | None = None,
    after: Sequence[str | bytes] = (),
) -> Transcript:
    """Send the call and then ``after`` (text = stdin lines, bytes = control), and read until the close."""
    with trio.fail_after(20):
        async with open_call_socket(server, key, subprotocols=subprotocols) as ws:
            await ws.send_message(call_frame(call, params))
            for frame in after:
                with suppress(ConnectionClosed):
                    await ws.send_message(frame)
            return await collect(ws)


async def next_text(ws: WebSocketConnection) -> str:
    message = await ws.get_message()
    assert isinstance(message, str), f"expected a text frame, got {message!r}"
    return message


async def read_until(ws: WebSocketConnection, last: str) -> list[str]:
    """Text frames up to and including ``last`` (e.g. a script's ``ready``)."""
    lines: list[str] = []
    with trio.fail_after(10):
        while not lines or lines[-1] != last:
            lines.append(await next_text(ws))
    return lines


def v1_failure(message: str) -> dict[str, Any]:
    return {"success": False, "message": message}


V1_SUCCESS: dict[str, Any] = {"success": True}
POW1_FULFILLED: dict[str, Any] = {"status": "fulfilled", "value": None}


def pow1_rejected(reason: str) -> dict[str, Any]:
    return {"status": "rejected", "reason": reason}


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (nobody reaps orphans in some containers) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def wait_gone(pids: Sequence[int], seconds: float = 8.0) -> list[int]:
    """Poll (bounded) until every pid is gone; returns the ones still alive."""
    alive = list(pids)
    for _ in range(int(seconds / 0.05)):
        alive = [pid for pid in alive if process_alive(pid)]
        if not alive:
            break
        await trio.sleep(0.05)
    return alive


def rss_bytes() -> int:
    """Resident memory of this process (the in-process server and the test's clients)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * KIB
    raise AssertionError("no VmRSS in /proc/self/status")


def bytes_written(pid: int) -> int:
    """How many bytes ``pid`` has written with write(2) so far (``wchar`` of /proc/PID/io)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise AssertionError(f"no wchar in /proc/{pid}/io")


def child_pids() -> set[int]:
    """Live (non-zombie) direct children of this process: what the in-process server has running."""
    me = str(os.getpid())
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with suppress(OSError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if fields[1] == me and fields[0] != "Z":
                    found.add(int(entry.name))
    return found


async def history(server: RunningServer, key: str, limit: int = 500, before: int | None = None) -> list[Any]:
    query = f"?limit={limit}" + (f"&before={before}" if before is not None else "")
    async with server.client() as client:
        response = await client.get("/api/v1/calls/history" + query, headers={"X-API-Key": key})
    assert response.status_code == 200, response.text
    rows = response.json()
    assert isinstance(rows, list)
    return rows


async def wait_history_row(server: RunningServer, key: str, call: str, seconds: float = 8.0) -> dict[str, Any]:
    """The newest audit row of ``call`` once it has ended (bounded poll)."""
    row: dict[str, Any] | None = None
    for _ in range(int(seconds / 0.1)):
        rows: list[dict[str, Any]] = [r for r in await history(server, key, limit=50) if r["call"] == call]
        row = rows[0] if rows else None
        if row is not None and row["outcome"] != "running":
            return row
        await trio.sleep(0.1)
    raise AssertionError(f"no finished history row for {call}: {row!r}")


async def jwt_for(server: RunningServer, user: str) -> str:
    """A JWT for ``user`` (password set by ``api_key_for``)."""
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
        login = await client.post("/api/v1/auth/login", json={"username": user, "password": "a long enough password"})
    assert login.status_code == 200, login.text
    token = login.json()["access_token"]
    assert isinstance(token, str)
    return token


class RawSocket:
    """A websocket client on bare wsproto: several frames in one write, and a drop without a close frame."""

    def __init__(self, stream: trio.SocketStream, conn: WSConnection) -> None:
        self.stream = stream
        self.conn = conn
        self.subprotocol: str | None = None
        self._partial: list[str | bytes | bytearray] = []

    @classmethod
    async def connect(cls, server: RunningServer, key: str | None, subprotocols: Sequence[str] = ()) -> RawSocket:
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        raw = cls(stream, WSConnection(ConnectionType.CLIENT))
        headers = key_headers(key)
        host = f"127.0.0.1:{server.port}"
        request = Request(host=host, target=WS_PATH, extra_headers=headers, subprotocols=[*subprotocols])
        await stream.send_all(raw.conn.send(request))
        await raw._wait_accept()
        return raw

    async def _wait_accept(self) -> None:
        while True:
            self.conn.receive_data(await self.stream.receive_some(64 * KIB) or None)
            for event in self.conn.events():
                assert isinstance(event, AcceptConnection), f"upgrade refused: {event!r}"
                self.subprotocol = event.subprotocol
                return

    async def send(self, *frames: str | bytes) -> None:
        """All ``frames`` (str = text, bytes = binary) in one ``send_all``."""
        data = b"".join(self.conn.send(_message(f)) for f in frames)
        await self.stream.send_all(data)

    async def try_send(self, *frames: str | bytes) -> bool:
        """``send``, or False once the connection is closing or gone (the server ended the call)."""
        try:
            await self.send(*frames)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError, LocalProtocolError):
            return False
        return True

    async def close(self, code: int = 1000) -> None:
        """Start the closing handshake (best effort: the server may have closed first)."""
        with suppress(trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError, LocalProtocolError):
            await self.stream.send_all(self.conn.send(CloseConnection(code=code)))

    async def abort(self) -> None:
        """Drop the TCP connection: no close frame, the client just vanishes."""
        await self.stream.aclose()

    async def read_all(self, transcript: Transcript) -> Transcript:
        """Frames until the server closes (answering pings and the close handshake)."""
        await self.read_until(transcript, lambda t: False)
        with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.stream.aclose()
        return transcript

    async def read_until(self, transcript: Transcript, done: Callable[[Transcript], bool]) -> None:
        """Frames into ``transcript`` until ``done`` says so or the connection is closed."""
        while transcript.close_code is None and not done(transcript):
            try:
                data = await self.stream.receive_some(256 * KIB)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            self.conn.receive_data(data or None)
            await self._handle(list(self.conn.events()), transcript)

    async def _handle(self, events: list[Any], transcript: Transcript) -> None:
        for event in events:
            if isinstance(event, (TextMessage, BytesMessage)):
                self._partial.append(event.data)
                if event.message_finished:
                    transcript.frames.append(_joined(self._partial))
                    self._partial = []
            elif isinstance(event, Ping):
                await self._reply(self.conn.send(event.response()))
            elif isinstance(event, CloseConnection) and transcript.close_code is None:
                transcript.close_code, transcript.close_reason = event.code, event.reason
                if self.conn.state is ConnectionState.REMOTE_CLOSING:
                    await self._reply(self.conn.send(event.response()))

    async def _reply(self, data: bytes) -> None:
        """Best effort: skipped while another task is in the middle of a send."""
        with suppress(trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
            await self.stream.send_all(data)


def _message(frame: str | bytes) -> TextMessage | BytesMessage:
    return TextMessage(data=frame) if isinstance(frame, str) else BytesMessage(data=frame)


def _joined(parts: list[str | bytes | bytearray]) -> str | bytes:
    if parts and isinstance(parts[0], str):
        return "".join(p for p in parts if isinstance(p, str))
    return b"".join(bytes(p) for p in parts if not isinstance(p, str))
