"""Structured logs of `hearth serve`: JSON lines when stderr is not a terminal, readable lines on request."""

from __future__ import annotations

import json
import logging
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from core.logging import JsonFormatter, TextFormatter
from tests.test_storage import ServeProcess, clean_env

TEXT_LINE = re.compile(r"^\d\d:\d\d:\d\d (debug|info|warning|error|critical)\s+[\w.]+: .+")


@pytest.fixture
def serve_processes() -> Iterator[list[ServeProcess]]:
    started: list[ServeProcess] = []
    yield started
    for process in started:
        process.kill()


def run_serve_briefly(data_dir: Path, started: list[ServeProcess], **env: str) -> list[str]:
    """Start serve with stderr a pipe, wait until it listens, stop it with SIGTERM; its stderr lines."""
    process = ServeProcess(data_dir, env=clean_env(**env))
    started.append(process)
    process.wait_listening()
    assert process.stop() == 0
    return process.stderr_lines


def test_serve_logs_one_json_object_per_line_when_stderr_is_a_pipe(
    tmp_path: Path, serve_processes: list[ServeProcess]
) -> None:
    lines = run_serve_briefly(tmp_path / "data", serve_processes)
    records = [json.loads(line) for line in lines]
    assert len(records) >= 3
    assert all(isinstance(r, dict) and {"ts", "level", "logger", "msg"} <= set(r) for r in records)
    listening = [r for r in records if r["msg"].startswith("listening on http://127.0.0.1:")]
    assert listening[0]["urls"] == [listening[0]["msg"].removeprefix("listening on ")]
    assert records[-1]["msg"] == "stopped"
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r["ts"]) for r in records)


def test_serve_logs_readable_lines_with_log_format_text(tmp_path: Path, serve_processes: list[ServeProcess]) -> None:
    lines = run_serve_briefly(tmp_path / "data", serve_processes, HEARTH_LOG_FORMAT="text")
    assert lines
    assert all(TEXT_LINE.match(line) for line in lines), lines
    assert not any(line.startswith("{") for line in lines)
    assert any(" hearth.server: listening on http://127.0.0.1:" in line for line in lines)


def test_serve_log_level_warning_hides_info(tmp_path: Path, serve_processes: list[ServeProcess]) -> None:
    port = free_port()
    process = ServeProcess(tmp_path / "data", "--port", str(port), env=clean_env(HEARTH_LOG_LEVEL="warning"))
    serve_processes.append(process)
    wait_healthy(process, f"http://127.0.0.1:{port}/healthz")
    assert process.stop() == 0
    assert process.stderr_lines == []
    assert any("API key:" in line for line in process.stdout_lines)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_healthy(process: ServeProcess, url: str) -> None:
    for _ in range(200):
        assert process.proc.poll() is None, "serve exited before it answered"
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.05)
    raise AssertionError(f"{url} never answered 200")


def record(**extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("hearth.test", logging.WARNING, __file__, 1, "hello %s", ("world",), None)
    rec.__dict__.update(extra)
    return rec


def test_json_formatter_keeps_extras_and_encodes_what_json_cannot() -> None:
    line = JsonFormatter().format(record(path=Path("/data/hearth.db"), count=3))
    decoded = json.loads(line)
    assert decoded["msg"] == "hello world" and decoded["level"] == "warning"
    assert decoded["count"] == 3
    assert decoded["path"] == "/data/hearth.db"


def test_text_formatter_puts_extras_after_the_message() -> None:
    line = TextFormatter().format(record(count=3))
    assert TEXT_LINE.match(line)
    assert line.endswith("hearth.test: hello world count=3")
