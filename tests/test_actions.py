"""Action streams with real processes: results, output, stdin, cancel and process groups, memory bounds, restart."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from core.actions import Action, ActionContext, ActionManager, ActionResult, OutputChunk, OutputGap
from core.errors import ActionNotFound, ProcessStartError, TooManyActions
from core.metrics import Metrics
from core.output import OutputItem
from core.processes import boot_id, start_ticks
from storage import process_groups
from storage.database import Database
from tests.conftest import make_settings

PY = sys.executable
IGNORE_TERM = "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "


@dataclass
class Harness:
    manager: ActionManager
    db: Database
    metrics: Metrics
    data_dir: Path


@asynccontextmanager
async def open_harness(data_dir: Path, **actions: Any) -> AsyncIterator[Harness]:
    """A Database and an ActionManager serving in a nursery of their own; a short kill grace by default."""
    settings = make_settings(data_dir, actions={"kill_grace_seconds": 0.5, **actions})
    db = open_database(data_dir)
    metrics = Metrics()
    try:
        async with trio.open_nursery() as nursery:
            manager = ActionManager(db, settings, metrics)
            await nursery.start(manager.serve)
            yield Harness(manager, db, metrics, data_dir)
            nursery.cancel_scope.cancel()
    finally:
        db.close()


def open_database(data_dir: Path) -> Database:
    data_dir.mkdir(parents=True, exist_ok=True)
    return Database(data_dir / "hearth.db")


def popen_session(*argv: str) -> subprocess.Popen[bytes]:
    """A process leading its own session, as a crashed Hearth would have left one of its actions."""
    return subprocess.Popen(argv, start_new_session=True)


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with open_harness(tmp_path / "data") as h:
        yield h


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (killed grandchildren may wait for init to reap them)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


async def collect(action: Action, **kwargs: bool) -> list[OutputItem]:
    async with action.open_output(**kwargs) as output:
        return [item async for item in output]


def stdout_of(items: list[OutputItem]) -> bytes:
    return b"".join(i.data for i in items if isinstance(i, OutputChunk) and i.stream == "stdout")


async def read_lines(action: Action, count: int) -> list[bytes]:
    """The first ``count`` lines of stdout (the action keeps running)."""
    buffer = b""
    async with action.open_output() as output:
        async for item in output:
            if isinstance(item, OutputChunk):
                buffer += item.data
            if buffer.count(b"\n") >= count:
                break
    return buffer.split(b"\n")[:count]


async def wait_until_stable(action: Action) -> int:
    """Poll output_bytes until it stops growing (bounded); returns it."""
    last = -1
    for _ in range(100):
        await trio.sleep(0.05)
        now = action.info().output_bytes
        if now == last:
            return now
        last = now
    raise AssertionError("output never stopped growing: nothing holds the pump back")


async def test_process_exit_code_is_the_result(harness: Harness) -> None:
    failing = await harness.manager.start_process(["sh", "-c", "exit 3"], owner="alice")
    succeeding = await harness.manager.start_process(["true"], owner="alice")
    assert await failing.wait_result() == ActionResult(exit_code=3)
    assert (await succeeding.wait_result()).ok
    info = failing.info()
    assert (info.state, info.owner, info.kind, info.name, info.argv) == (
        "finished",
        "alice",
        "process",
        "sh",
        ["sh", "-c", "exit 3"],
    )
    assert info.ended_at is not None and info.ended_at >= info.started_at


async def test_process_output_has_both_streams_with_contiguous_offsets(harness: Harness) -> None:
    action = await harness.manager.start_process(["sh", "-c", "echo out; echo err >&2; echo more"], owner="a")
    items = await collect(action)
    await action.wait_result()
    chunks = [i for i in items if isinstance(i, OutputChunk)]
    assert len(chunks) == len(items)
    assert b"".join(c.data for c in chunks if c.stream == "stderr") == b"err\n"
    assert stdout_of(items) == b"out\nmore\n"
    offsets = [c.offset for c in chunks]
    assert offsets == [sum(len(c.data) for c in chunks[:i]) for i in range(len(chunks))]
    assert action.info().output_bytes == 13


async def test_process_killed_by_signal_reports_the_signal(harness: Harness) -> None:
    action = await harness.manager.start_process(["sh", "-c", "kill -KILL $$"], owner="a")
    result = await action.wait_result()
    assert result == ActionResult(signal=signal.SIGKILL)
    assert not result.ok


async def test_missing_executable_is_a_failed_result_not_an_exception(harness: Harness) -> None:
    action = await harness.manager.start_process(["/nonexistent/program"], owner="a")
    result = await action.wait_result()
    assert result.exit_code is None
    assert result.error is not None and "No such file or directory" in result.error
    assert action.info().state == "finished"
    with pytest.raises(trio.ClosedResourceError):
        await action.send_stdin(b"x")


async def test_missing_cwd_is_a_failed_result(harness: Harness, tmp_path: Path) -> None:
    action = await harness.manager.start_process(["true"], owner="a", cwd=str(tmp_path / "nowhere"))
    result = await action.wait_result()
    assert result.error is not None and "nowhere" in result.error


@pytest.mark.parametrize(
    "kwargs",
    [{"argv": []}, {"argv": ["ec\0ho"]}, {"argv": ["true"], "timeout": 0}, {"argv": ["true"], "env": {"A=B": "1"}}],
)
async def test_invalid_arguments_raise_process_start_error(harness: Harness, kwargs: dict[str, Any]) -> None:
    argv = kwargs.pop("argv")
    with pytest.raises(ProcessStartError):
        await harness.manager.start_process(argv, owner="a", **kwargs)
    assert harness.manager.list() == []


async def test_cwd_and_env_reach_the_process(harness: Harness, tmp_path: Path) -> None:
    action = await harness.manager.start_process(
        ["sh", "-c", 'pwd; echo "$HEARTH_TEST_VAR"'], owner="a", cwd=str(tmp_path), env={"HEARTH_TEST_VAR": "v1"}
    )
    assert stdout_of(await collect(action)) == f"{tmp_path}\nv1\n".encode()


async def test_stdin_round_trip_with_cat(harness: Harness) -> None:
    action = await harness.manager.start_process(["cat"], owner="a")
    async with action.open_output() as output:
        await action.send_stdin(b"hello ")
        await action.send_stdin(b"world")
        await action.close_stdin()
        items = [item async for item in output]
    assert stdout_of(items) == b"hello world"
    assert (await action.wait_result()).ok
    with pytest.raises(trio.ClosedResourceError):
        await action.send_stdin(b"late")


async def test_large_stdin_waits_for_pipe_capacity(harness: Harness) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB: far more than a pipe holds
    action = await harness.manager.start_process(["cat"], owner="a")
    async with action.open_output() as output, trio.open_nursery() as nursery:

        async def feed() -> None:
            await action.send_stdin(payload)
            await action.close_stdin()

        nursery.start_soon(feed)
        items = [item async for item in output]
    assert stdout_of(items) == payload


async def test_cancel_sends_sigterm_to_the_group(harness: Harness) -> None:
    action = await harness.manager.start_process(["sleep", "30"], owner="a")
    action.cancel("stop it")
    result = await action.wait_result()
    assert result == ActionResult(signal=signal.SIGTERM, error="stop it", cancelled=True)
    action.cancel()  # after the end: nothing happens
    assert await action.wait_result() is result


async def test_process_ignoring_sigterm_is_killed_at_grace_period(harness: Harness) -> None:
    action = await harness.manager.start_process([PY, "-c", IGNORE_TERM + "time.sleep(60)"], owner="a")
    assert await read_lines(action, 1) == [b"ready"]
    action.cancel()
    result = await action.wait_result()
    assert result.signal == signal.SIGKILL
    assert result.cancelled


async def test_cancel_kills_grandchildren_even_those_ignoring_sigterm(harness: Harness) -> None:
    script = (
        "sleep 60 & echo $!; "
        "(trap '' TERM; exec sleep 61) & echo $!; "
        "(sleep 62 & echo $!) ; "  # double fork: its parent is gone, it still belongs to the group
        "wait"
    )
    action = await harness.manager.start_process(["sh", "-c", script], owner="a")
    pids = [int(line) for line in await read_lines(action, 3)]
    assert all(alive(pid) for pid in pids)
    action.cancel()
    assert (await action.wait_result()).cancelled
    assert [pid for pid in pids if alive(pid)] == []


async def test_children_left_behind_by_an_exited_leader_are_terminated(harness: Harness) -> None:
    action = await harness.manager.start_process(["sh", "-c", "sleep 60 & echo $!"], owner="a")
    items = await collect(action)
    result = await action.wait_result()
    assert result == ActionResult(exit_code=0)  # the leader's own status: not a cancel
    assert not alive(int(stdout_of(items)))


async def test_timeout_cancels_the_action(harness: Harness) -> None:
    action = await harness.manager.start_process(["sleep", "30"], owner="a", timeout=0.2)
    assert await action.wait_result() == ActionResult(
        signal=signal.SIGTERM, error="timed out after 0.2 s", cancelled=True
    )


async def test_reader_that_never_reads_blocks_the_process(tmp_path: Path) -> None:
    chunk, queue = 4096, 4
    async with open_harness(tmp_path / "d", read_chunk_bytes=chunk, reader_queue_chunks=queue) as h:
        action = await h.manager.start_process(["sh", "-c", "read go; exec yes"], owner="a")
        async with action.open_output(replay=False):
            await action.send_stdin(b"go\n")
            held = await wait_until_stable(action)
            assert held <= (queue + 1) * chunk  # queued + one waiting in send; `yes` itself waits on its pipe
            assert action.info().state == "running"
            action.cancel()  # a stuck reader cannot stop the action from ending
            result = await action.wait_result()
    assert result.cancelled


async def test_lossy_reader_that_never_reads_gets_a_gap(tmp_path: Path) -> None:
    chunk, queue = 4096, 4
    async with open_harness(tmp_path / "d", read_chunk_bytes=chunk, reader_queue_chunks=queue) as h:
        action = await h.manager.start_process(["sh", "-c", "read go; exec yes"], owner="a")
        async with action.open_output(replay=False, lossless=False) as output:
            await action.send_stdin(b"go\n")
            for _ in range(200):
                if action.info().output_bytes > 50 * queue * chunk:
                    break
                await trio.sleep(0.02)
            action.cancel()
            await action.wait_result()
            items = [item async for item in output]
    chunks = [i for i in items if isinstance(i, OutputChunk)]
    gaps = [i for i in items if isinstance(i, OutputGap)]
    assert len(chunks) <= queue
    assert gaps and gaps[0].missed_bytes > 0
    delivered = sum(len(c.data) for c in chunks) + sum(g.missed_bytes for g in gaps)
    assert delivered == action.info().output_bytes


async def test_late_attacher_replays_the_ring_after_a_gap(tmp_path: Path) -> None:
    payload = bytes(range(256)) * 1000
    script = "import sys; sys.stdout.buffer.write(bytes(range(256)) * 1000)"
    async with open_harness(tmp_path / "d", ring_bytes=65536, read_chunk_bytes=4096) as h:
        action = await h.manager.start_process([PY, "-c", script], owner="a")
        await action.wait_result()
        items = await collect(action)
    assert isinstance(items[0], OutputGap)
    missed = items[0].missed_bytes
    replayed = b"".join(i.data for i in items[1:] if isinstance(i, OutputChunk))
    assert 0 < len(replayed) <= 65536
    assert missed + len(replayed) == len(payload)
    assert replayed == payload[missed:]


async def test_disk_log_holds_the_whole_output(harness: Harness) -> None:
    action = await harness.manager.start_process(["sh", "-c", "seq 1 20000"], owner="a")
    await action.wait_result()
    expected = b"".join(b"%d\n" % i for i in range(1, 20001))
    assert (harness.data_dir / "actions" / f"{action.id}.log").read_bytes() == expected


async def test_disk_log_is_capped(tmp_path: Path) -> None:
    async with open_harness(tmp_path / "d", log_max_bytes=100) as h:
        action = await h.manager.start_process(["sh", "-c", "seq 1 1000"], owner="a")
        await action.wait_result()
        content = action.log_path.read_bytes()
    assert content.startswith(b"1\n2\n3\n")
    assert content.endswith(b"more not kept]\n")
    assert len(content) < 200


async def test_coroutine_action_reads_stdin_writes_output_returns_exit_code(harness: Harness) -> None:
    async def shout(context: ActionContext) -> int:
        while data := await context.read_stdin():
            await context.write(data.upper())
        await context.write(b"done", stream="stderr")
        return 7

    action = await harness.manager.start_coroutine(shout, owner="bob", name="shout")
    async with action.open_output() as output:
        await action.send_stdin(b"abc")
        await action.close_stdin()
        items = [item async for item in output]
    assert stdout_of(items) == b"ABC"
    assert [i.data for i in items if isinstance(i, OutputChunk) and i.stream == "stderr"] == [b"done"]
    assert await action.wait_result() == ActionResult(exit_code=7)
    assert action.info().kind == "coroutine"
    with pytest.raises(trio.ClosedResourceError):
        await action.send_stdin(b"late")


async def test_coroutine_exception_becomes_a_failure(harness: Harness) -> None:
    async def broken(context: ActionContext) -> int:
        raise ValueError("boom")

    action = await harness.manager.start_coroutine(broken, owner="a", name="broken")
    assert await action.wait_result() == ActionResult(error="ValueError: boom")


async def test_coroutine_cancel_ends_it(harness: Harness) -> None:
    async def forever(context: ActionContext) -> int:
        await trio.sleep_forever()

    action = await harness.manager.start_coroutine(forever, owner="a", name="forever")
    action.cancel("enough")
    assert await action.wait_result() == ActionResult(error="enough", cancelled=True)


async def test_exactly_one_result_when_cancel_races_exit(harness: Harness) -> None:
    actions = []
    for delay in range(12):
        action = await harness.manager.start_process(["true"], owner="a")
        for _ in range(delay):
            await trio.lowlevel.checkpoint()
        action.cancel()
        actions.append(action)
    for action in actions:
        result = await action.wait_result()
        assert result is await action.wait_result()
        assert result.cancelled or result == ActionResult(exit_code=0)
        assert result.cancelled == (result.error == "cancelled")
    assert sum(outcome_totals(harness).values()) == len(actions)
    assert running(harness) == 0


def outcome_totals(harness: Harness) -> dict[str, float]:
    return {
        s.labels["outcome"]: s.value
        for metric in harness.metrics.actions_total.collect()
        for s in metric.samples
        if s.name == "hearth_actions_total"
    }


def running(harness: Harness) -> float | None:
    return harness.metrics.registry.get_sample_value("hearth_actions_running")


async def test_metrics_count_outcomes(harness: Harness) -> None:
    await (await harness.manager.start_process(["true"], owner="a")).wait_result()
    await (await harness.manager.start_process(["false"], owner="a")).wait_result()
    sleeper = await harness.manager.start_process(["sleep", "30"], owner="a")
    assert running(harness) == 1
    sleeper.cancel()
    await sleeper.wait_result()
    assert outcome_totals(harness) == {"ok": 1.0, "failed": 1.0, "cancelled": 1.0}
    assert running(harness) == 0


async def test_get_and_list_and_retention(tmp_path: Path) -> None:
    async with open_harness(tmp_path / "d", retain_finished=2) as h:
        actions = []
        for _ in range(4):  # one after the other, so that they also end in this order
            actions.append(await h.manager.start_process(["echo", "x"], owner="a"))
            await actions[-1].wait_result()
        assert h.manager.get(actions[3].id) is actions[3]
        assert [a.id for a in h.manager.list()] == [a.id for a in actions[2:]]
        with pytest.raises(ActionNotFound):
            h.manager.get(actions[0].id)
        assert not actions[0].log_path.exists()
        assert actions[3].log_path.exists()


async def test_stopping_the_manager_kills_running_actions(tmp_path: Path) -> None:
    async with open_harness(tmp_path / "d") as h:
        action = await h.manager.start_process(["sh", "-c", "sleep 60 & echo $!; wait"], owner="a")
        pid = int((await read_lines(action, 1))[0])
    assert await action.wait_result() == ActionResult(
        signal=signal.SIGTERM, error="server shutting down", cancelled=True
    )
    assert not alive(pid)


async def test_process_groups_are_recorded_while_running(harness: Harness) -> None:
    action = await harness.manager.start_process(["sleep", "30"], owner="a")
    records = await process_groups.list_groups(harness.db)
    assert [(r.action_id, r.argv, r.boot_id) for r in records] == [(action.id, ["sleep", "30"], boot_id())]
    assert records[0].start_ticks == start_ticks(records[0].pgid)
    action.cancel()
    await action.wait_result()
    assert await process_groups.list_groups(harness.db) == []


async def test_restart_reaps_orphaned_process_groups(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    orphan = popen_session("sleep", "60")
    stranger = popen_session("sleep", "60")
    try:
        async with open_harness(data_dir) as h:
            for proc, ticks in ((orphan, start_ticks(orphan.pid)), (stranger, (start_ticks(stranger.pid) or 0) - 1)):
                record = process_groups.ProcessGroupRecord(
                    pgid=proc.pid,
                    action_id="old",
                    argv=["sleep", "60"],
                    started_at="2024-01-01T00:00:00+00:00",
                    boot_id=boot_id(),
                    start_ticks=ticks or 0,
                )
                await process_groups.record_group(h.db, record)
        async with open_harness(data_dir) as h:  # the "restart": serve reaps before it is ready
            assert orphan.poll() == -signal.SIGTERM
            assert stranger.poll() is None  # its start time does not match: a recycled pgid is left alone
            assert await process_groups.list_groups(h.db) == []
    finally:
        for proc in (orphan, stranger):
            proc.kill()
            proc.wait()


async def test_start_after_stop_is_refused(tmp_path: Path) -> None:
    async with open_harness(tmp_path / "d") as h:
        manager = h.manager
    with pytest.raises(Exception, match="not running"):
        await manager.start_process(["true"], owner="a")


async def read_everything(action: Action) -> tuple[int, int]:
    """(bytes of output, bytes reported missing) seen by a lossless reader attached now."""
    size = missed = 0
    async with action.open_output(replay=True, lossless=True) as reader:
        async for item in reader:
            if isinstance(item, OutputGap):
                missed += item.missed_bytes
            else:
                size += len(item.data)
    return size, missed


async def test_held_output_waits_for_the_first_reader(data_dir: Path) -> None:
    """A face that starts an action and attaches a moment later must lose nothing past the ring."""
    total = 3 * 1024 * 1024  # far more than the ring (256 KiB)
    async with open_harness(data_dir, ring_bytes=256 * 1024) as h:
        held = await h.manager.start_process(["head", "-c", str(total), "/dev/zero"], owner="t", hold_output=True)
        plain = await h.manager.start_process(["head", "-c", str(total), "/dev/zero"], owner="t")
        await trio.sleep(0.5)
        assert held.result is None  # still waiting for its reader
        with trio.fail_after(20):
            assert await read_everything(held) == (total, 0)
            size, missed = await read_everything(plain)
    assert missed > 0 and size + missed == total  # without the hold, the ring kept only its tail


async def test_an_action_without_output_writes_no_log_file(data_dir: Path) -> None:
    async with open_harness(data_dir) as h:
        silent = await h.manager.start_process(["true"], owner="a")
        talking = await h.manager.start_process(["echo", "hello"], owner="a")
        await silent.wait_result()
        await talking.wait_result()
    assert not silent.log_path.exists()
    assert talking.log_path.read_bytes() == b"hello\n"


async def test_actions_past_max_running_are_refused_until_one_ends(tmp_path: Path) -> None:
    async with open_harness(tmp_path / "d", max_running=2) as h:
        first = await h.manager.start_process(["sleep", "30"], owner="a")
        await h.manager.start_process(["sleep", "30"], owner="a")
        with pytest.raises(TooManyActions):
            await h.manager.start_process(["true"], owner="a")
        first.cancel()
        await first.wait_result()
        third = await h.manager.start_process(["true"], owner="a")
        assert (await third.wait_result()).exit_code == 0
