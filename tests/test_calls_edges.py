"""Call socket edge cases found in review: malformed frames, input nobody reads, calls a crash left running."""

from __future__ import annotations

import os
from pathlib import Path

import trio

from core.protocols import calls as proto
from storage import call_history
from tests.calls_support import (
    CANCEL,
    RawSocket,
    Transcript,
    call_frame,
    command_settings,
    start_calls_server,
    wait_history_row,
)
from tests.conftest import api_key_for, make_settings, start_server


def masked_text_frame(payload: bytes) -> bytes:
    """A client TEXT frame carrying ``payload`` as is (wsproto would refuse to build invalid UTF-8)."""
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + mask + body


async def test_first_text_frame_with_invalid_utf8_gets_unknown_call_then_1007(
    nursery: trio.Nursery, data_dir: Path
) -> None:
    server = await start_calls_server(nursery, data_dir)
    raw = await RawSocket.connect(server, await api_key_for(server, "ada", "admin"))
    await raw.stream.send_all(masked_text_frame(b"\xff\xfe"))
    with trio.fail_after(10):
        transcript = await raw.read_all(Transcript())
    assert transcript.frames == [b'{"success":false,"message":"unknown action call"}']
    assert transcript.close_code == 1007


async def test_invalid_utf8_input_during_a_call_ends_it_with_one_result(nursery: trio.Nursery, data_dir: Path) -> None:
    server = await start_calls_server(nursery, data_dir)
    raw = await RawSocket.connect(server, await api_key_for(server, "ada", "admin"))
    await raw.send(call_frame("ready_cat"))
    transcript = Transcript()
    with trio.fail_after(10):
        await raw.read_until(transcript, lambda t: "ready" in t.frames)
        await raw.stream.send_all(masked_text_frame(b"ok\xff"))
        await raw.read_all(transcript)
    assert transcript.frames == ["ready", b'{"success":false,"message":"cancelled"}']
    assert transcript.close_code == 1007


async def test_input_the_process_never_reads_cannot_hide_a_cancel(nursery: trio.Nursery, data_dir: Path) -> None:
    commands = {**command_settings(), "sleeper": {"argv": ["sleep", "60"], "role": "admin"}}
    server = await start_calls_server(
        nursery, data_dir, commands=commands, buffer_bytes=64 * 1024, stdin_stall_seconds=1.0
    )
    key = await api_key_for(server, "ada", "admin")
    raw = await RawSocket.connect(server, key)
    await raw.send(call_frame("sleeper"))
    line = "x" * 16 * 1024
    transcript = Transcript()
    with trio.fail_after(20):

        async def flood_then_cancel() -> None:  # the pipe (64 KiB) and the queue (64 KiB) fill up first
            await raw.try_send(*([line] * 16), CANCEL)

        async with trio.open_nursery() as writers:
            writers.start_soon(flood_then_cancel)
            await raw.read_all(transcript)
            writers.cancel_scope.cancel()
    assert transcript.frames == [b'{"success":false,"message":"cancelled"}']
    row = await wait_history_row(server, key, "sleeper")
    assert (row["outcome"], row["message"]) == ("failure", proto.MSG_CANCELLED)


async def test_calls_a_crash_left_running_are_failed_at_the_next_start(nursery: trio.Nursery, data_dir: Path) -> None:
    first = await start_server(nursery, make_settings(data_dir))
    await call_history.begin(
        first.services.db, principal="user:ada", user="ada", call="info", params=[], started_at="2026-01-01T00:00:00Z"
    )
    first.cancel_scope.cancel()
    await trio.sleep(0.5)  # the first server lets go of the data directory
    second = await start_server(nursery, make_settings(data_dir))
    rows = await call_history.page(second.services.db, user="ada", before_id=None, limit=5)
    assert [(r.outcome, r.message) for r in rows] == [("failure", "server stopped")]
    assert rows[0].ended_at is not None
    second.cancel_scope.cancel()
