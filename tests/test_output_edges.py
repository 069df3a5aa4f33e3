"""Action output on disk and through lossless readers, against real processes and a real server."""

from __future__ import annotations

import socket
from pathlib import Path

import trio

from core.actions import OutputChunk
from tests.conftest import RunningServer
from tests.test_actions import open_harness
from tests.test_hot_ws import api_key, bearer, upgrade_request


async def test_log_while_running_has_the_output_already_produced(server: RunningServer) -> None:
    """GET .../log is the disk log as it is now: a running action's first line is there while it runs."""
    key = await api_key(server)
    headers = {"Authorization": f"Bearer {key}"}
    async with server.client(headers=headers) as client:
        started = await client.post("/api/v1/actions", json={"argv": ["sh", "-c", "echo hello; sleep 30"]})
        assert started.status_code == 201
        action_id = started.json()["id"]
        body = b""
        try:
            for _ in range(100):  # bounded: up to ~5 s for the line to reach the log
                body = (await client.get(f"/api/v1/actions/{action_id}/log")).content
                if body:
                    break
                await trio.sleep(0.05)
        finally:
            await client.post(f"/api/v1/actions/{action_id}/cancel")
    assert body == b"hello\n"


async def test_a_stuck_lossless_reader_does_not_cut_the_disk_log_after_the_leader_exits(tmp_path: Path) -> None:
    """After the leader exits, a lossless reader that does not read is made lossy (it gets a gap) once the grace
    period is over, so what is left in the pipe still reaches the ring, ``output_bytes`` and the disk log."""
    total = 60000  # fits in a 64 KiB pipe, so the leader can exit while the pump waits on the reader
    async with open_harness(tmp_path / "d", read_chunk_bytes=4096, reader_queue_chunks=1) as h:
        action = await h.manager.start_process(["sh", "-c", f"read x; head -c {total} /dev/zero; exit 0"], owner="a")
        async with action.open_output(replay=False) as reader:  # lossless, not read until the action ends
            await action.send_stdin(b"go\n")
            with trio.fail_after(20):
                result = await action.wait_result()
            got = 0
            async for item in reader:
                got += len(item.data) if isinstance(item, OutputChunk) else 0
        log_size = action.log_path.stat().st_size if action.log_path.exists() else 0
    assert result.exit_code == 0
    assert action.info().output_bytes == total, f"output_bytes {action.info().output_bytes} of {total}"
    assert log_size == total, f"disk log holds {log_size} of {total} bytes"
    assert got <= total


async def test_an_output_spectator_that_does_not_read_cannot_stall_the_action(server: RunningServer) -> None:
    """WS .../output attaches without owning, as a lossy reader: a viewer that does not read (a frozen tab, a
    stalled link) cannot make the process wait."""
    key = await api_key(server)
    async with server.client(headers={"Authorization": f"Bearer {key}"}) as client:
        script = "read x; head -c 67108864 /dev/zero"
        started = await client.post("/api/v1/actions", json={"argv": ["sh", "-c", script]})
        action_id = started.json()["id"]
        raw = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await raw.connect(("127.0.0.1", server.port))
        stream = trio.SocketStream(raw)
        state = "running"
        try:
            await stream.send_all(upgrade_request(f"/api/v1/actions/{action_id}/output?framing=chunks", bearer(key)))
            with trio.fail_after(10):
                assert (await stream.receive_some(4096)).startswith(b"HTTP/1.1 101 ")
            await client.post(f"/api/v1/actions/{action_id}/stdin?close=true", content=b"go\n")
            for _ in range(150):  # bounded: ~15 s; alone, 64 MiB of zeros take well under a second
                state = (await client.get(f"/api/v1/actions/{action_id}")).json()["state"]
                if state == "finished":
                    break
                await trio.sleep(0.1)
        finally:
            await client.post(f"/api/v1/actions/{action_id}/cancel")
            await stream.aclose()
    assert state == "finished", "a spectator that does not read kept the action from ever finishing"
