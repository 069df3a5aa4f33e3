"""The end of a supervised process: its exit seen while a reader is stuck; output read while the group empties."""

from __future__ import annotations

from pathlib import Path

import trio

from core.processes import ProcessGroup, ProcessSpec, is_alive
from tests.test_actions import alive, open_harness


class Blocked:
    """A publish that takes the first ``room`` chunks and then waits until ``release`` (a full lossless reader)."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.data = b""
        self.release = trio.Event()

    async def publish(self, stream: str, data: bytes) -> None:
        if self.room <= 0:
            await self.release.wait()
        self.room -= 1
        self.data += data


async def test_leftover_member_output_is_pumped_while_the_group_is_emptied() -> None:
    """After the leader exits, a member that ignores SIGTERM still gets its output read during the grace
    period (the old code pumped concurrently with empty_group): 1 MB, not only what fits in the pipe."""
    script = "(trap '' TERM; sleep 0.2; head -c 1000000 /dev/zero) & exit 0"
    group = await ProcessGroup.spawn(ProcessSpec(argv=["sh", "-c", script], merge_stderr=True))
    out = b""

    async def publish(stream: str, data: bytes) -> None:
        nonlocal out
        out += data

    try:
        with trio.fail_after(20):
            code, cancelled = await group.supervise(publish, chunk_bytes=65536, grace=2.0, cancel=trio.Event())
    finally:
        await group.aclose()
    assert (code, cancelled) == (0, False)
    assert len(out) == 1000000


async def test_leader_exit_is_seen_while_publish_waits_on_a_full_reader() -> None:
    """The leader exits while the pump waits on a full reader: the old code still emptied the group, reaped
    the leader and gave the pipes ``grace``; a stuck reader must not keep the group (and the result) forever."""
    script = "sleep 60 & echo $! >&2; head -c 30000 /dev/zero; sleep 0.3; exit 3"
    group = await ProcessGroup.spawn(ProcessSpec(argv=["sh", "-c", script]))
    blocked = Blocked(room=1)
    err = b""

    async def publish(stream: str, data: bytes) -> None:
        nonlocal err
        if stream == "stderr":
            err += data
            return
        await blocked.publish(stream, data)

    outcome = None
    try:
        with trio.move_on_after(10):
            outcome = await group.supervise(publish, chunk_bytes=4096, grace=0.5, cancel=trio.Event())
        grandchild = int(err)
        still_there = is_alive(grandchild)
    finally:
        blocked.release.set()
        await group.aclose()
    assert outcome == (3, False), "supervise never noticed the leader's exit"
    assert not still_there


async def test_action_with_a_stuck_lossless_reader_finishes_when_its_leader_exits(tmp_path: Path) -> None:
    """Docs (actions.md): when the leader exits, what is left of its group is terminated, and the pipes get the
    grace period to drain. A lossless reader that never reads must not keep the action running for ever."""
    chunk, queue = 4096, 2
    pid_file = tmp_path / "pid"
    script = f"sleep 60 & echo $! > {pid_file}; head -c 40000 /dev/zero; sleep 0.3; exit 3"
    async with open_harness(tmp_path / "d", read_chunk_bytes=chunk, reader_queue_chunks=queue) as h:
        action = await h.manager.start_process(["sh", "-c", script], owner="a")
        async with action.open_output(replay=False):  # lossless, never read
            result = None
            with trio.move_on_after(10):
                result = await action.wait_result()
            grandchild_alive = alive(int(pid_file.read_text()))
            action.cancel()
            await action.wait_result()
    assert result is not None and result.exit_code == 3, "the action never finished"
    assert not grandchild_alive
