"""Process groups on Linux: new sessions, members, the ownership check before reaping, orphan reaping."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from core.errors import ProcessStartError
from core.processes import (
    ProcessGroup,
    ProcessSpec,
    boot_id,
    group_members,
    is_alive,
    is_ours,
    reap_orphans,
    start_error,
    start_ticks,
)
from storage.process_groups import ProcessGroupRecord


def record_for(pgid: int, *, ticks: int | None = None, boot: str | None = None) -> ProcessGroupRecord:
    return ProcessGroupRecord(
        pgid=pgid,
        action_id="a1",
        argv=["sleep"],
        started_at="2024-01-01T00:00:00+00:00",
        boot_id=boot_id() if boot is None else boot,
        start_ticks=(start_ticks(pgid) or 0) if ticks is None else ticks,
    )


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A `sleep` leading its own session, as a crashed Hearth would have left it."""
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


def wait_for_members(pgid: int, count: int) -> list[int]:
    for _ in range(200):
        members = group_members(pgid)
        if len(members) >= count:
            return members
        time.sleep(0.01)
    raise AssertionError(f"group {pgid} never had {count} members")


def test_spec_refuses_invalid_values() -> None:
    cases: list[dict[str, Any]] = [{"argv": []}, {"argv": [""]}, {"argv": ["a\0"]}, {"argv": ["a"], "cwd": "x\0"}]
    for kwargs in cases:
        with pytest.raises(ProcessStartError):
            ProcessSpec(**kwargs)
    with pytest.raises(ProcessStartError):
        ProcessSpec(argv=["a"], env={"": "1"})
    with pytest.raises(ProcessStartError):
        ProcessSpec(argv=["a"], timeout=-1)
    assert ProcessSpec(argv=["a"], env={"K": "v"}, timeout=1.5).timeout == 1.5


def test_start_error_names_program_and_file() -> None:
    try:
        os.stat("/nonexistent/program")
    except OSError as e:
        message = start_error("prog", e)
    assert message == "cannot start 'prog': No such file or directory (/nonexistent/program)"


def test_boot_id_and_start_ticks_come_from_proc() -> None:
    assert len(boot_id()) == 36
    assert start_ticks(os.getpid()) == start_ticks(os.getpid())
    assert start_ticks(2**22 + 12345) is None


async def test_spawned_process_leads_its_own_session_and_group() -> None:
    group = await ProcessGroup.spawn(ProcessSpec(argv=["sleep", "30"]))
    try:
        assert os.getpgid(group.pgid) == group.pgid
        assert os.getsid(group.pgid) == group.pgid
        assert os.getpgid(0) != group.pgid
        assert group.start_ticks == start_ticks(group.pgid)
    finally:
        await group.aclose()
    assert group.reaped
    assert not is_alive(group.pgid)


async def test_leader_exit_is_seen_before_reaping_so_the_pgid_stays_reserved() -> None:
    group = await ProcessGroup.spawn(ProcessSpec(argv=["true"]))
    await group.wait_leader_exit()
    assert start_ticks(group.pgid) == group.start_ticks  # a zombie, still holding its pid
    assert not is_alive(group.pgid)
    assert await group.reap() == 0
    assert start_ticks(group.pgid) is None
    await group.aclose()


async def test_leader_exit_is_seen_without_a_pidfd_too() -> None:
    group = await ProcessGroup.spawn(ProcessSpec(argv=["sh", "-c", "exit 5"]))
    group.close()  # as on a kernel without pidfd_open: the leader is polled instead
    await group.wait_leader_exit()
    assert start_ticks(group.pgid) == group.start_ticks
    assert await group.reap() == 5
    await group.aclose()


class Collected:
    """What ``supervise`` published, per stream."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {"stdout": b"", "stderr": b""}

    async def publish(self, stream: str, data: bytes) -> None:
        self.data[stream] += data


async def supervised(group: ProcessGroup, *, cancel: trio.Event | None = None) -> tuple[int, bool, Collected]:
    out = Collected()
    cancel = cancel if cancel is not None else trio.Event()
    code, cancelled = await group.supervise(out.publish, chunk_bytes=65536, grace=0.5, cancel=cancel)
    await group.aclose()
    return code, cancelled, out


@pytest.mark.parametrize("merge", [True, False])
async def test_supervise_pumps_output_until_the_end_and_returns_the_status(merge: bool) -> None:
    script = "i=0; while [ $i -lt 2000 ]; do echo out $i; echo err $i >&2; i=$((i+1)); done; exit 3"
    group = await ProcessGroup.spawn(ProcessSpec(argv=["sh", "-c", script], merge_stderr=merge))
    code, cancelled, out = await supervised(group)
    assert (code, cancelled) == (3, False)
    stdout, stderr = out.data["stdout"].decode(), out.data["stderr"].decode()
    outs = [line for line in stdout.splitlines() if line.startswith("out")]
    assert outs == [f"out {i}" for i in range(2000)]
    errs = [line for line in (stdout if merge else stderr).splitlines() if line.startswith("err")]
    assert errs == [f"err {i}" for i in range(2000)]
    assert stderr == "" if merge else "out" not in stderr


async def test_supervise_sees_the_leader_exit_while_a_grandchild_holds_the_pipe() -> None:
    """The leader's exit ends the wait although stdout stays open; the group is then emptied."""
    group = await ProcessGroup.spawn(ProcessSpec(argv=["sh", "-c", "sleep 60 & echo $!; exit 4"], merge_stderr=True))
    code, cancelled, out = await supervised(group)
    assert (code, cancelled) == (4, False)
    assert not is_alive(int(out.data["stdout"]))


async def test_supervise_without_a_pidfd_polls_the_leader() -> None:
    group = await ProcessGroup.spawn(ProcessSpec(argv=["sh", "-c", "sleep 60 & echo hi; exit 6"], merge_stderr=True))
    group.close()  # as on a kernel without pidfd_open
    code, cancelled, out = await supervised(group)
    assert (code, cancelled, out.data["stdout"]) == (6, False, b"hi\n")


async def test_cancel_kills_a_process_that_floods_output_and_ignores_sigterm() -> None:
    """Output always ready must not starve the grace period: SIGKILL comes on time."""
    group = await ProcessGroup.spawn(ProcessSpec(argv=["sh", "-c", "trap '' TERM; yes"], merge_stderr=True))
    cancel = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_cancel_later, cancel, group)
        with trio.fail_after(20):
            code, cancelled, out = await supervised(group, cancel=cancel)
    assert (code, cancelled) == (-signal.SIGKILL, True)
    assert out.data["stdout"].startswith(b"y\ny\n")


async def _cancel_later(cancel: trio.Event, group: ProcessGroup) -> None:
    await trio.sleep(0.2)
    cancel.set()
    group.interrupt()


def open_pipes() -> set[str]:
    """The pipes this process has open (``pipe:[inode]``)."""
    links = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            links.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            continue  # the directory's own fd, closed meanwhile
    return {link for link in links if link.startswith("pipe:")}


async def test_a_program_that_cannot_start_leaves_no_pipe_open() -> None:
    before = open_pipes()
    for _ in range(5):
        with pytest.raises(FileNotFoundError):
            await ProcessGroup.spawn(ProcessSpec(argv=["/nonexistent/program"]))
    assert open_pipes() == before


def test_group_members_lists_children_and_skips_zombies(sleeper: subprocess.Popen[bytes]) -> None:
    assert group_members(sleeper.pid) == [sleeper.pid]
    sleeper.send_signal(signal.SIGKILL)
    for _ in range(200):
        if not group_members(sleeper.pid):
            break
        time.sleep(0.01)
    assert group_members(sleeper.pid) == []  # a zombie until we wait for it, but not a member


def test_is_ours_checks_boot_and_start_time(sleeper: subprocess.Popen[bytes]) -> None:
    assert is_ours(record_for(sleeper.pid), boot_id())
    assert not is_ours(record_for(sleeper.pid), "another-boot")
    assert not is_ours(record_for(sleeper.pid, boot=""), boot_id())
    assert not is_ours(record_for(sleeper.pid, ticks=(start_ticks(sleeper.pid) or 0) + 1), boot_id())


def test_is_ours_with_leader_gone_accepts_members_started_later() -> None:
    with subprocess.Popen(["sh", "-c", "sleep 60 & echo $!"], start_new_session=True, stdout=subprocess.PIPE) as leader:
        assert leader.stdout is not None
        child = int(leader.stdout.readline())
        record = record_for(leader.pid)  # the leader may be a zombie already: its stat is still there
    try:
        assert record.start_ticks > 0
        assert start_ticks(leader.pid) is None
        assert group_members(leader.pid) == [child]
        assert is_ours(record, boot_id())
        assert not is_ours(record_for(leader.pid, ticks=(start_ticks(child) or 0) + 1), boot_id())
    finally:
        os.killpg(leader.pid, signal.SIGKILL)


def test_is_ours_without_any_member_is_false() -> None:
    proc = subprocess.Popen(["true"], start_new_session=True)
    record = record_for(proc.pid)
    proc.wait()
    assert not is_ours(record, boot_id())


def spawn_group_with_term_ignoring_child() -> tuple[subprocess.Popen[bytes], int]:
    script = "(trap '' TERM; exec sleep 61) & echo $!; exec sleep 60"
    leader = subprocess.Popen(["sh", "-c", script], start_new_session=True, stdout=subprocess.PIPE)
    assert leader.stdout is not None
    with leader.stdout:
        return leader, int(leader.stdout.readline())


async def test_reap_orphans_kills_whole_group_including_term_ignoring_members() -> None:
    leader, child = spawn_group_with_term_ignoring_child()
    try:
        wait_for_members(leader.pid, 2)
        reaped = await reap_orphans([record_for(leader.pid)], grace=0.3)
        assert reaped == [leader.pid]
        assert leader.wait(timeout=5) == -signal.SIGTERM
        assert not is_alive(child)
    finally:
        if group_members(leader.pid):
            os.killpg(leader.pid, signal.SIGKILL)
        leader.wait()


async def test_reap_orphans_leaves_a_recycled_pgid_alone(sleeper: subprocess.Popen[bytes]) -> None:
    stale = record_for(sleeper.pid, ticks=(start_ticks(sleeper.pid) or 0) - 10)
    assert await reap_orphans([stale], grace=0.3) == []
    await trio.sleep(0.05)
    assert sleeper.poll() is None
