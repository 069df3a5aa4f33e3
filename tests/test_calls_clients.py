"""`WS /api/v1/ws/` driven by clients nobody on the team wrote: node's `ws` package and the websocat binary."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from core.protocols.calls import MSG_CANCELLED, MSG_PERMISSION_DENIED, MSG_UNKNOWN_CALL
from tests.calls_support import MIB, WS_PATH, wait_gone, wait_history_row
from tests.conftest import RunningServer

NODE_DIR = Path(__file__).parent / "node"
WEBSOCAT = Path(sys.executable).parent / "websocat"


class LineProcess:
    """A client subprocess: commands to its stdin, one line per received event from its stdout."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self._buffer = b""

    async def write_line(self, line: str) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(line.encode() + b"\n")

    async def close_stdin(self) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.aclose()

    async def read_line(self) -> str | None:
        """The next line without its newline; None at the end of the output."""
        assert self.process.stdout is not None
        while b"\n" not in self._buffer:
            chunk = await self.process.stdout.receive_some(65536)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()


@asynccontextmanager
async def open_client(argv: list[str], stderr: int | None = None) -> AsyncIterator[LineProcess]:
    process = await trio.lowlevel.open_process(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr)
    try:
        with trio.fail_after(20):
            yield LineProcess(process)
    finally:
        process.kill()
        await process.wait()
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                await stream.aclose()


# --- node `ws` ----------------------------------------------------------------------------------------------------


def node_argv(server: RunningServer, key: str | None, protocols: tuple[str, ...] = ()) -> list[str]:
    node = shutil.which("node")
    assert node is not None, "node is not installed"
    assert (NODE_DIR / "node_modules" / "ws").is_dir(), "the npm ws package is missing: cd tests/node && npm ci"
    argv = [node, str(NODE_DIR / "calls_client.js"), server.ws_url + WS_PATH]
    argv += ["--header", f"X-API-Key: {key}"] if key is not None else []
    for protocol in protocols:
        argv += ["--protocol", protocol]
    return argv


async def node_events(client: LineProcess, *commands: dict[str, Any]) -> list[dict[str, Any]]:
    """Send ``commands``, then every event up to and including the close."""
    for command in commands:
        await client.write_line(json.dumps(command))
    events: list[dict[str, Any]] = []
    while not events or events[-1]["event"] != "close":
        line = await client.read_line()
        assert line is not None, f"the node client ended without a close event: {events}"
        events.append(json.loads(line))
    return events


def texts(events: list[dict[str, Any]]) -> list[str]:
    return [e["data"] for e in events if e["event"] == "text"]


def only_result(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The one binary event, which must come after every text event and right before the close."""
    kinds = [e["event"] for e in events if e["event"] in ("text", "binary", "close")]
    assert kinds.count("binary") == 1 and kinds[-2:] == ["binary", "close"], events
    result: dict[str, Any] = json.loads(next(e["data"] for e in events if e["event"] == "binary"))
    return result


def close_of(events: list[dict[str, Any]]) -> tuple[int, str]:
    return events[-1]["code"], events[-1]["reason"]


async def test_node_ws_runs_a_call(calls_server: RunningServer, admin: str) -> None:
    async with open_client(node_argv(calls_server, admin)) as client:
        events = await node_events(client, {"binary": {"call": "seq", "params": ["3"]}})
    assert texts(events) == ["1", "2", "3"]
    assert only_result(events) == {"success": True}
    assert close_of(events)[0] == 1000


async def test_node_ws_sends_stdin_and_the_close_signal(calls_server: RunningServer, admin: str) -> None:
    lines = [{"text": "hello"}, {"text": ""}, {"text": "é 中"}]
    async with open_client(node_argv(calls_server, admin)) as client:
        events = await node_events(client, {"binary": {"call": "cat"}}, *lines, {"binary": {"signal": "close"}})
    assert texts(events) == ["hello", "", "é 中"]
    assert only_result(events) == {"success": True}


async def test_node_ws_pow1_result_and_close(calls_server: RunningServer, admin: str) -> None:
    async with open_client(node_argv(calls_server, admin, ("pow-1",))) as client:
        ok = await node_events(client, {"binary": {"call": "exit_with", "params": ["0"]}})
    async with open_client(node_argv(calls_server, admin, ("pow-1",))) as client:
        failed = await node_events(client, {"binary": {"call": "exit_with", "params": ["3"]}})
    assert ok[0] == {"event": "open", "protocol": "pow-1"}
    assert only_result(ok) == {"status": "fulfilled", "value": None}
    assert only_result(failed) == {"status": "rejected", "reason": "exit status 3"}
    assert close_of(ok) == close_of(failed) == (1000, "")


async def test_node_ws_cancel_kills_the_process(calls_server: RunningServer, admin: str) -> None:
    async with open_client(node_argv(calls_server, admin)) as client:
        await client.write_line(json.dumps({"binary": {"call": "pid_cat"}}))
        assert json.loads(await client.read_line() or "{}")["event"] == "open"
        pid = int(json.loads(await client.read_line() or "{}")["data"])
        events = await node_events(client, {"binary": {"signal": "cancel"}})
    assert only_result(events) == {"success": False, "message": MSG_CANCELLED}
    assert await wait_gone([pid]) == []


async def test_node_ws_vanishing_client_cancels_the_call(calls_server: RunningServer, admin: str) -> None:
    async with open_client(node_argv(calls_server, admin)) as client:
        await client.write_line(json.dumps({"binary": {"call": "pid_cat"}}))
        assert json.loads(await client.read_line() or "{}")["event"] == "open"
        pid = int(json.loads(await client.read_line() or "{}")["data"])
        await node_events(client, {"terminate": True})
    assert await wait_gone([pid]) == []
    row = await wait_history_row(calls_server, admin, "pid_cat")
    assert (row["outcome"], row["message"]) == ("failure", MSG_CANCELLED)


async def test_node_ws_anonymous_is_denied(calls_server: RunningServer) -> None:
    async with open_client(node_argv(calls_server, None)) as client:
        events = await node_events(client, {"binary": {"call": "info"}})
    assert only_result(events) == {"success": False, "message": MSG_PERMISSION_DENIED}


async def test_node_ws_huge_frame_closes_with_1009(calls_server: RunningServer, admin: str) -> None:
    async with open_client(node_argv(calls_server, admin)) as client:
        events = await node_events(client, {"binary": {"call": "cat"}}, {"text_repeat": ["x", 10 * MIB]})
    assert only_result(events) == {"success": False, "message": MSG_CANCELLED}
    assert close_of(events)[0] == 1009


async def test_node_ws_output_is_always_valid_utf8(calls_server: RunningServer, admin: str) -> None:
    async with open_client(node_argv(calls_server, admin)) as client:
        events = await node_events(client, {"binary": {"call": "bad_utf8"}})
    assert [e for e in events if e["event"] == "error"] == []
    ok, bad, end = texts(events)
    assert (ok, end, bad.replace("\ufffd", "")) == ("ok", "end", "bad")
    assert close_of(events)[0] == 1000


# --- websocat -----------------------------------------------------------------------------------------------------
# websocat's line mode mishandles several input lines arriving in one read, so each line is sent only after the
# previous one had its effect (an echo, a "ready"); received frames come back as "T:text" and "B:binary" lines.


def websocat_argv(server: RunningServer, key: str, protocol: str | None = None, log: bool = False) -> list[str]:
    """``log``: debug logging on stderr, where websocat names the close code it received."""
    argv = [
        str(WEBSOCAT),
        *(["-vv"] if log else []),
        "-n",
        "--linemode-strip-newlines",
        "--binary-prefix",
        "B:",
        "--text-prefix",
        "T:",
    ]
    argv += ["--protocol", protocol] if protocol else []
    return [*argv, server.ws_url + WS_PATH, f"--header=X-API-Key: {key}"]


async def websocat_until_eof(client: LineProcess) -> list[str]:
    await client.close_stdin()
    lines: list[str] = []
    while (line := await client.read_line()) is not None:
        lines.append(line)
    return lines


async def websocat_close_code(client: LineProcess) -> int | None:
    """The close code websocat logged (``-vv``), read from its stderr once it has exited."""
    await client.process.wait()
    assert client.process.stderr is not None
    log = b""
    while chunk := await client.process.stderr.receive_some(65536):
        log += chunk
    found = re.search(rb"status_code: (\d+)", log)
    return int(found.group(1)) if found else None


async def test_websocat_runs_a_call(calls_server: RunningServer, admin: str) -> None:
    async with open_client(websocat_argv(calls_server, admin, log=True), stderr=subprocess.PIPE) as client:
        await client.write_line('B:{"call": "seq", "params": ["3"]}')
        lines = await websocat_until_eof(client)
        code = await websocat_close_code(client)
    assert lines[:3] == ["T:1", "T:2", "T:3"] and json.loads(lines[3][2:]) == {"success": True}
    assert code == 1000


async def test_websocat_sends_stdin_lines_and_the_close_signal(calls_server: RunningServer, admin: str) -> None:
    async with open_client(websocat_argv(calls_server, admin)) as client:
        await client.write_line('B:{"call": "ready_cat"}')
        assert await client.read_line() == "T:ready"
        for line in ("hello", "é 中"):
            await client.write_line("T:" + line)
            assert await client.read_line() == "T:" + line
        await client.write_line('B:{"signal": "close"}')
        lines = await websocat_until_eof(client)
    assert [json.loads(line[2:]) for line in lines] == [{"success": True}]


async def test_websocat_cancel(calls_server: RunningServer, admin: str) -> None:
    async with open_client(websocat_argv(calls_server, admin)) as client:
        await client.write_line('B:{"call": "ready_cat"}')
        assert await client.read_line() == "T:ready"
        await client.write_line('B:{"signal": "cancel"}')
        lines = await websocat_until_eof(client)
    assert [json.loads(line[2:]) for line in lines] == [{"success": False, "message": MSG_CANCELLED}]


async def test_websocat_text_frame_first_is_unknown_action_call(calls_server: RunningServer, admin: str) -> None:
    async with open_client(websocat_argv(calls_server, admin)) as client:
        await client.write_line("T:hello")
        lines = await websocat_until_eof(client)
    assert [json.loads(line[2:]) for line in lines] == [{"success": False, "message": MSG_UNKNOWN_CALL}]


async def test_websocat_pow1(calls_server: RunningServer, admin: str) -> None:
    async with open_client(websocat_argv(calls_server, admin, "pow-1", log=True), stderr=subprocess.PIPE) as client:
        await client.write_line('B:{"call": "exit_with", "params": ["3"]}')
        lines = await websocat_until_eof(client)
        code = await websocat_close_code(client)
    assert [json.loads(line[2:]) for line in lines] == [{"status": "rejected", "reason": "exit status 3"}]
    assert code == 1000
