"""`hearth call` (specs/calls.md §4) as a real subprocess against a small in-test call server, and one real Hearth."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

import app
from core.errors import ConfigError
from handlers.cli_call import (
    CANCEL_FRAME,
    CLOSE_FRAME,
    INPUT_FRAME_CHARS,
    InputLines,
    Outcome,
    call_url,
    check_token,
    parse_result,
)
from tests.conftest import RunningServer, api_key_for

ROOT = Path(__file__).resolve().parent.parent
POW = "pow-1"
LIMIT = 20  # seconds any one subprocess exchange may take before the test fails instead of hanging


# -- a tiny call server: just enough of the protocol ---------------------------------------------------------------


def result_frame(pow_: bool, ok: bool, message: str = "", value: Any = None) -> bytes:
    if pow_:
        shape = {"status": "fulfilled", "value": value} if ok else {"status": "rejected", "reason": message}
    else:
        shape = {"success": True} if ok else {"success": False, "message": message}
    return msgspec.json.encode(shape)


@dataclass
class FakeCallServer:
    """Records what clients send; each call name picks a behaviour."""

    port: int = 0
    headers: list[dict[str, str]] = field(default_factory=list)
    offered: list[tuple[str, ...]] = field(default_factory=list)
    calls: list[Any] = field(default_factory=list)
    received: list[str | bytes] = field(default_factory=list)
    got_cancel: trio.Event = field(default_factory=trio.Event)
    gone: trio.Event = field(default_factory=trio.Event)

    def url(self, path: str = "/api/v1/ws/") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    async def handle(self, request: WebSocketRequest) -> None:
        self.headers.append({k.decode().lower(): v.decode() for k, v in request.headers})
        self.offered.append(tuple(request.proposed_subprotocols))
        if request.path == "/reject":
            await request.reject(401, body=b'{"detail": "missing credentials"}')
            return
        pow_ = POW in request.proposed_subprotocols
        ws = await request.accept(subprotocol=POW if pow_ else None)
        try:
            call = msgspec.json.decode(await ws.get_message())
            self.calls.append(call)
            await BEHAVIOURS[call["call"]](self, ws, call.get("params", []), pow_)
        except ConnectionClosed:
            self.gone.set()

    async def next_frame(self, ws: WebSocketConnection) -> str | bytes:
        frame = await ws.get_message()
        self.received.append(frame)
        if frame == CANCEL_FRAME:
            self.got_cancel.set()
        return frame


async def echo(server: FakeCallServer, ws: WebSocketConnection, params: list[str], pow_: bool) -> None:
    """Params as lines, then every input line echoed; close → success, cancel → "cancelled"."""
    for param in params:
        await ws.send_message(f"param: {param}")
    while (frame := await server.next_frame(ws)) not in (CLOSE_FRAME, CANCEL_FRAME):
        if isinstance(frame, str):
            await ws.send_message(f"echo: {frame.rstrip(chr(10))}")
    await ws.send_message(result_frame(pow_, frame == CLOSE_FRAME, "cancelled", value={"n": 1} if pow_ else None))


async def fail(server: FakeCallServer, ws: WebSocketConnection, params: list[str], pow_: bool) -> None:
    await ws.send_message("about to fail")
    await ws.send_message(result_frame(pow_, False, "exit status 3"))


async def drop(server: FakeCallServer, ws: WebSocketConnection, params: list[str], pow_: bool) -> None:
    await ws.send_message("bye")
    await ws.aclose(1011, "boom")


async def wait(server: FakeCallServer, ws: WebSocketConnection, params: list[str], pow_: bool) -> None:
    """Says "ready", then waits for cancel and answers it."""
    await ws.send_message("ready")
    while await server.next_frame(ws) != CANCEL_FRAME:
        pass
    await ws.send_message(result_frame(pow_, False, "cancelled"))


async def stubborn(server: FakeCallServer, ws: WebSocketConnection, params: list[str], pow_: bool) -> None:
    """Says "ready", then never answers: only the client can end this."""
    await ws.send_message("ready")
    while True:
        await server.next_frame(ws)


Behaviour = Callable[[FakeCallServer, WebSocketConnection, list[str], bool], Awaitable[None]]
BEHAVIOURS: dict[str, Behaviour] = {"echo": echo, "fail": fail, "drop": drop, "wait": wait, "stubborn": stubborn}


@pytest.fixture
async def fake(nursery: trio.Nursery) -> FakeCallServer:
    server = FakeCallServer()
    listening = await nursery.start(serve_websocket, server.handle, "127.0.0.1", 0, None)
    server.port = listening.port
    return server


# -- running the client --------------------------------------------------------------------------------------------


def client_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTH_")}
    env.update(extra)
    return env


def call_argv(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "app.py"), "call", *args]


async def hearth_call(
    cwd: Path, *args: str, stdin: bytes = b"", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """`python app.py call ARGS` in ``cwd`` (no data dir there), stdin fed then closed."""
    with trio.fail_after(LIMIT):
        return await trio.run_process(
            call_argv(*args),
            stdin=stdin,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            cwd=cwd,
            env=env or client_env(),
        )


def lines(data: bytes) -> list[str]:
    return data.decode().splitlines()


async def read_until(stream: trio.abc.ReceiveStream, marker: bytes) -> bytes:
    seen = b""
    with trio.fail_after(LIMIT):
        while marker not in seen:
            chunk = await stream.receive_some()
            assert chunk, f"stream ended before {marker!r}: {seen!r}"
            seen += chunk
    return seen


async def read_all(stream: trio.abc.ReceiveStream) -> bytes:
    out = b""
    while chunk := await stream.receive_some():
        out += chunk
    return out


async def interrupted_call(fake: FakeCallServer, cwd: Path, name: str, times: int) -> tuple[int, bytes]:
    """Start a call with stdin left open, wait for "ready", send SIGINT ``times`` times (each once the previous
    one had its effect); return the exit status and stderr."""
    argv = call_argv("--url", fake.url(), name)
    proc = await trio.lowlevel.open_process(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd, env=client_env()
    )
    assert proc.stdout is not None and proc.stderr is not None and proc.stdin is not None
    try:
        await read_until(proc.stdout, b"ready\n")
        proc.send_signal(signal.SIGINT)
        with trio.fail_after(LIMIT):
            await fake.got_cancel.wait()
            for _ in range(times - 1):
                proc.send_signal(signal.SIGINT)
            status = await proc.wait()
            return status, await read_all(proc.stderr)
    finally:
        with trio.CancelScope(shield=True):
            await reap(proc)


async def reap(proc: trio.Process) -> None:
    if proc.returncode is None:
        proc.kill()
    await proc.wait()
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            await stream.aclose()


# -- the pure pieces -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, "ws://127.0.0.1:8123/api/v1/ws/"),
        ("http://example.test:9000", "ws://example.test:9000/api/v1/ws/"),
        ("https://example.test/", "wss://example.test/api/v1/ws/"),
        ("ws://10.0.0.1:81/custom/ws?x=1", "ws://10.0.0.1:81/custom/ws?x=1"),
        ("WSS://h/api/v1/ws/", "wss://h/api/v1/ws/"),
    ],
)
def test_call_url_derives_the_socket_url(given: str | None, expected: str) -> None:
    assert call_url(given, 8123) == expected


@pytest.mark.parametrize("given", ["ftp://h/", "localhost:8080", "http://", "http://h:99999/", "ws:///x"])
def test_call_url_refuses_what_is_not_a_server_url(given: str) -> None:
    with pytest.raises(ConfigError):
        call_url(given, 8080)


def test_call_url_refuses_port_zero_without_url() -> None:
    with pytest.raises(ConfigError):
        call_url(None, 0)


def test_check_token_refuses_header_breaking_characters() -> None:
    check_token("hearth_abc.DEF-123~")
    for bad in ("two words", "line\r\nX-Evil: 1", "caf\u00e9"):
        with pytest.raises(ConfigError):
            check_token(bad)


def test_input_lines_v1_strips_terminators_and_keeps_empty_lines() -> None:
    lines_ = InputLines(keep_ends=False)
    first = lines_.feed(b"one\r\ntwo\n\nla")
    assert first == ["one", "two", ""]
    assert lines_.feed(b"st") == []
    assert lines_.finish() == ["last"]


def test_input_lines_pow_keeps_terminators() -> None:
    lines_ = InputLines(keep_ends=True)
    assert lines_.feed(b"a\nb\r\nc") == ["a\n", "b\r\n"]
    assert lines_.finish() == ["c"]


def test_input_lines_decodes_utf8_across_reads_and_replaces_bad_bytes() -> None:
    lines_ = InputLines(keep_ends=False)
    euro = "\u20ac".encode()
    assert lines_.feed(euro[:2]) == []
    assert lines_.feed(euro[2:] + b"\xff\n") == ["\u20ac\ufffd"]
    assert lines_.finish() == []


def test_input_lines_splits_a_long_line_and_bounds_what_it_holds() -> None:
    lines_ = InputLines(keep_ends=False)
    frames = lines_.feed(b"x" * (2 * INPUT_FRAME_CHARS + 5))
    assert [len(f) for f in frames] == [INPUT_FRAME_CHARS, INPUT_FRAME_CHARS]
    assert lines_.feed(b"\n") == ["xxxxx"]


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (b'{"success": true}', Outcome(0)),
        (b'{"success": false, "message": "exit status 2"}', Outcome(1, "exit status 2")),
        (b'{"success": false}', Outcome(1, "the call failed")),
        (b'{"status": "fulfilled", "value": null}', Outcome(0)),
        (b'{"status": "fulfilled", "value": [1, "a"]}', Outcome(0, value=[1, "a"])),
        (b'{"status": "rejected", "reason": "permission denied"}', Outcome(1, "permission denied")),
        (b'{"something": "else"}', None),
        (b"[1, 2]", None),
        (b"not json", Outcome(1, "the server sent a control frame that is not JSON")),
    ],
)
def test_parse_result_reads_both_generations(frame: bytes, expected: Outcome | None) -> None:
    assert parse_result(frame) == expected


def test_parser_call_options_and_params_after_double_dash() -> None:
    args = app.build_parser().parse_args(["call", "--url", "ws://h/", "--pow", "deploy", "--", "-x", "--", "y"])
    assert (args.url, args.pow, args.name, args.params) == ("ws://h/", True, "deploy", ["-x", "--", "y"])
    plain = app.build_parser().parse_args(["call", "info"])
    assert (plain.url, plain.token, plain.pow, plain.params, plain.data_dir) == (None, None, False, [], None)


# -- the client as a subprocess ------------------------------------------------------------------------------------


async def test_call_streams_params_and_stdin_then_succeeds(fake: FakeCallServer, tmp_path: Path) -> None:
    env = client_env(HEARTH_TOKEN="hearth_secret")
    result = await hearth_call(
        tmp_path, "--url", fake.url(), "echo", "--", "a b", "-x", stdin=b"one\r\ntwo\n\nlast", env=env
    )
    assert result.returncode == 0, result.stderr
    assert lines(result.stdout) == ["param: a b", "param: -x", "echo: one", "echo: two", "echo: ", "echo: last"]
    assert result.stderr == b""
    assert fake.calls == [{"call": "echo", "params": ["a b", "-x"]}]
    assert fake.received == ["one", "two", "", "last", CLOSE_FRAME]
    assert fake.headers[0]["authorization"] == "Bearer hearth_secret"
    assert fake.offered == [()]
    assert not (tmp_path / "data").exists(), "hearth call needs no data directory"


async def test_call_empty_stdin_sends_close_at_once(fake: FakeCallServer, tmp_path: Path) -> None:
    result = await hearth_call(tmp_path, "--url", fake.url(), "echo")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b""
    assert fake.received == [CLOSE_FRAME]
    assert "authorization" not in fake.headers[0]


async def test_call_token_flag_wins_over_environment(fake: FakeCallServer, tmp_path: Path) -> None:
    env = client_env(HEARTH_TOKEN="from_env")
    result = await hearth_call(tmp_path, "--url", fake.url(), "--token", "from_flag", "echo", env=env)
    assert result.returncode == 0, result.stderr
    assert fake.headers[0]["authorization"] == "Bearer from_flag"


async def test_call_pow_offers_subprotocol_keeps_line_ends_and_prints_value(
    fake: FakeCallServer, tmp_path: Path
) -> None:
    result = await hearth_call(tmp_path, "--url", fake.url(), "--pow", "echo", "p", stdin=b"x\ny")
    assert result.returncode == 0, result.stderr
    assert fake.offered == [(POW,)]
    assert fake.received == ["x\n", "y", CLOSE_FRAME]
    assert lines(result.stdout) == ["param: p", "echo: x", "echo: y", '{"n":1}']


@pytest.mark.parametrize("pow_", [False, True])
async def test_call_failure_result_exits_1_with_message(fake: FakeCallServer, tmp_path: Path, pow_: bool) -> None:
    flags = ["--pow"] if pow_ else []
    result = await hearth_call(tmp_path, "--url", fake.url(), *flags, "fail")
    assert result.returncode == 1
    assert lines(result.stdout) == ["about to fail"]
    assert result.stderr == b"hearth: exit status 3\n"


async def test_call_closed_without_result_exits_1(fake: FakeCallServer, tmp_path: Path) -> None:
    result = await hearth_call(tmp_path, "--url", fake.url(), "drop")
    assert result.returncode == 1
    assert lines(result.stdout) == ["bye"]
    assert result.stderr == b"hearth: connection closed without a result (code 1011: boom)\n"


async def test_call_rejected_handshake_exits_1_with_status(fake: FakeCallServer, tmp_path: Path) -> None:
    result = await hearth_call(tmp_path, "--url", fake.url("/reject"), "echo")
    assert result.returncode == 1
    assert result.stderr == b"hearth: the server refused the connection: HTTP 401 Unauthorized: missing credentials\n"


async def test_call_connection_refused_exits_1_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago and has no listener now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = await hearth_call(tmp_path, "--url", f"http://127.0.0.1:{port}", "info")
    assert result.returncode == 1
    assert result.stderr.startswith(f"hearth: cannot connect to ws://127.0.0.1:{port}/api/v1/ws/: ".encode())
    assert result.stderr.count(b"\n") == 1 and b"Connection refused" in result.stderr


@pytest.mark.parametrize(
    "args",
    [["--url", "ftp://h/", "info"], [], ["--token", "two words", "--url", "ws://127.0.0.1:1/", "info"]],
)
async def test_call_bad_usage_exits_2(tmp_path: Path, args: list[str]) -> None:
    result = await hearth_call(tmp_path, *args)
    assert result.returncode == 2
    assert b"Traceback" not in result.stderr and result.stderr


async def test_call_sigint_sends_cancel_and_reports_the_result(fake: FakeCallServer, tmp_path: Path) -> None:
    status, stderr = await interrupted_call(fake, tmp_path, "wait", times=1)
    assert status == 1
    assert stderr == b"hearth: cancelled\n"
    assert fake.received == [CANCEL_FRAME], "stdin was still open: the cancel is the only frame"


async def test_call_second_sigint_closes_the_connection_and_exits_130(fake: FakeCallServer, tmp_path: Path) -> None:
    status, stderr = await interrupted_call(fake, tmp_path, "stubborn", times=2)
    assert status == 130
    assert stderr == b"hearth: interrupted\n"
    with trio.fail_after(LIMIT):
        await fake.gone.wait()
    assert fake.received == [CANCEL_FRAME]


# -- against the real server route (WS /api/v1/ws/, being built by the lead) -----------------------------------------


async def test_call_info_against_the_real_server(server: RunningServer, tmp_path: Path) -> None:
    key = await api_key_for(server, "ada", "admin")
    result = await hearth_call(tmp_path, "--url", server.base_url, "info", env=client_env(HEARTH_TOKEN=key))
    assert result.returncode == 0, result.stderr
    assert any(line.startswith("version: ") for line in lines(result.stdout)), result.stdout
