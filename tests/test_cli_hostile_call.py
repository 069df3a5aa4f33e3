"""`hearth call` with a closed stdin or stdout (cron, `<&-`, `>&-`) must not end in a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from tests.conftest import RunningServer, api_key_for

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("redirect", ["<&-", ">&-"])
async def test_call_with_a_closed_standard_stream_fails_in_one_line(server: RunningServer, redirect: str) -> None:
    """handlers/cli_call.py:87 `Streams.standard()` does sys.stdin.fileno() / sys.stdout.buffer, and those are
    None when the descriptor is closed: AttributeError traceback. A closed stdin could be read as empty input;
    a closed stdout is `hearth: standard output was closed` in docs/calls.md."""
    key = await api_key_for(server, "carol", "admin")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTH_")} | {"HEARTH_TOKEN": key}
    command = f'exec "{sys.executable}" app.py call --url {server.base_url} info {redirect}'
    with trio.fail_after(60):
        result = await trio.run_process(
            ["/bin/sh", "-c", command],
            cwd=ROOT,
            env=env,
            capture_stderr=True,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    stderr = result.stderr.decode()
    assert "Traceback" not in stderr, stderr[-400:]
    assert result.returncode in (0, 1)
    assert stderr.count("\n") <= 1
