"""Exactly one result under pressure: frame and concurrency limits, backpressure, load, shutdown, and a few
thousand randomized interleavings of output, input, cancel, close and disconnect (specs/calls.md §2, §5).

HEARTH_FUZZ_CASES (default 3000) and HEARTH_FUZZ_SEED choose the interleavings; a failure names both."""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
from trio_websocket import WebSocketConnection

from core.api_keys import NewKey
from core.auth import LOCAL_ADMIN
from core.protocols.calls import MSG_CANCELLED, MSG_SHUTTING_DOWN, MSG_TOO_MANY
from tests.calls_support import (
    CANCEL,
    CLOSE_STDIN,
    FRAME_LIMIT,
    LONG_YES_LINE,
    MIB,
    V1_SUCCESS,
    RawSocket,
    Transcript,
    bytes_written,
    call_frame,
    child_pids,
    collect,
    command_settings,
    history,
    next_text,
    open_call_socket,
    raise_fd_limit,
    read_until,
    rss_bytes,
    run_call,
    start_calls_server,
    v1_failure,
    wait_gone,
)
from tests.conftest import RunningServer, api_key_for, make_settings, start_server

MEMORY_BOUND = 300 * MIB


@pytest.fixture
async def calls_server(nursery: trio.Nursery, data_dir: Path) -> AsyncIterator[RunningServer]:
    raise_fd_limit()
    server = await start_calls_server(
        nursery, data_dir, max_per_principal=300, max_total=300, first_message_timeout=5.0
    )
    yield server
    server.cancel_scope.cancel()


@pytest.fixture
async def admin(calls_server: RunningServer) -> str:
    return await api_key_for(calls_server, "ada", "admin")


# --- frame size (§2 "Input": frames over 1 MiB end the call with 1009) ---------------------------------------


async def test_huge_frame_during_a_call_cancels_it_with_1009(calls_server: RunningServer, admin: str) -> None:
    raw = await RawSocket.connect(calls_server, admin)
    await raw.send(call_frame("pid_cat"))
    out = Transcript()
    with trio.fail_after(15):
        await raw.read_until(out, lambda t: bool(t.texts))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(raw.try_send, "x" * (10 * MIB))
            await raw.read_all(out)
    assert out.close_code == 1009
    assert out.result == v1_failure(MSG_CANCELLED)
    assert await wait_gone([int(out.texts[0])]) == []


async def test_huge_first_frame_closes_with_1009(calls_server: RunningServer, admin: str) -> None:
    raw = await RawSocket.connect(calls_server, admin)
    out = Transcript()
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(raw.try_send, b"x" * (10 * MIB))
            await raw.read_all(out)
    assert out.close_code == 1009
    assert len(out.binaries) <= 1 and out.texts == []


async def test_frame_of_exactly_1mib_is_accepted(calls_server: RunningServer, admin: str) -> None:
    out = await run_call(calls_server, admin, "cat", after=["x" * MIB, CLOSE_STDIN])
    assert out.result == V1_SUCCESS
    assert "".join(out.texts) == "x" * MIB


# --- concurrency limits -------------------------------------------------------------------------------------------


async def test_too_many_calls_per_principal(nursery: trio.Nursery, data_dir: Path) -> None:
    server = await start_calls_server(nursery, data_dir, max_per_principal=2)
    ada, bob = await api_key_for(server, "ada", "admin"), await api_key_for(server, "bob", "admin")
    ada_again = (await server.services.auth.keys.create(LOCAL_ADMIN, NewKey(user="ada"))).raw
    async with open_call_socket(server, ada) as one, open_call_socket(server, ada) as two:
        for ws in (one, two):
            await ws.send_message(call_frame("ready_cat"))
            assert await next_text(ws) == "ready"
        assert (await run_call(server, ada, "info")).result == v1_failure(MSG_TOO_MANY)
        assert (await run_call(server, ada_again, "info")).result == v1_failure(MSG_TOO_MANY)  # a user, all keys
        assert (await run_call(server, bob, "info")).result == V1_SUCCESS
        await one.send_message(CANCEL)
        assert (await collect(one)).result == v1_failure(MSG_CANCELLED)
        assert (await run_call(server, ada, "info")).result == V1_SUCCESS
    server.cancel_scope.cancel()


async def test_too_many_calls_in_all(nursery: trio.Nursery, data_dir: Path) -> None:
    server = await start_calls_server(nursery, data_dir, max_total=2)
    ada, bob = await api_key_for(server, "ada", "admin"), await api_key_for(server, "bob", "admin")
    async with open_call_socket(server, ada) as one, open_call_socket(server, bob) as two:
        for ws in (one, two):
            await ws.send_message(call_frame("ready_cat"))
            assert await next_text(ws) == "ready"
        assert (await run_call(server, bob, "info")).result == v1_failure(MSG_TOO_MANY)
    server.cancel_scope.cancel()


async def test_calls_past_actions_max_running_are_too_many(nursery: trio.Nursery, data_dir: Path) -> None:
    settings = make_settings(
        data_dir, actions={"max_running": 1}, calls={"commands": command_settings(), "first_message_timeout": 1.0}
    )
    server = await start_server(nursery, settings)
    ada = await api_key_for(server, "ada", "admin")
    async with open_call_socket(server, ada) as one:
        await one.send_message(call_frame("ready_cat"))
        assert await next_text(one) == "ready"
        assert (await run_call(server, ada, "info")).result == v1_failure(MSG_TOO_MANY)
        await one.send_message(CANCEL)
        assert (await collect(one)).result == v1_failure(MSG_CANCELLED)
    server.cancel_scope.cancel()


# --- backpressure (§2 "Output": bounded buffer, the process blocks) ----------------------------------------------


async def test_gigabyte_without_newline_streams_in_64k_frames(calls_server: RunningServer, admin: str) -> None:
    baseline, peak, received, frames = rss_bytes(), 0, 0, 0
    async with open_call_socket(calls_server, admin, receive_buffer_size=256 * 1024) as ws:
        await ws.send_message(call_frame("gigabyte"))
        pid = int(await next_text(ws))
        with trio.fail_after(30):
            while received < 128 * MIB:  # a line that never ends still streams; cancel after 128 MiB
                text = await next_text(ws)
                assert 0 < len(text) <= FRAME_LIMIT
                received, frames = received + len(text), frames + 1
                peak = max(peak, rss_bytes()) if frames % 64 == 0 else peak
            await ws.send_message(CANCEL)
            out = await collect(ws)
    assert all(len(t) <= FRAME_LIMIT for t in out.texts)
    assert out.result == v1_failure(MSG_CANCELLED)
    assert peak - baseline < MEMORY_BOUND, f"RSS grew by {(peak - baseline) // MIB} MiB"
    assert await wait_gone([pid]) == []


async def test_client_that_never_reads_blocks_the_process(calls_server: RunningServer, admin: str) -> None:
    baseline = rss_bytes()
    async with open_call_socket(calls_server, admin, message_queue_size=1) as ws:
        await ws.send_message(call_frame("yes_pid"))
        pid = int(await next_text(ws))
        await trio.sleep(2)  # not reading: `yes` must end up blocked on its pipe
        written, grown = bytes_written(pid), rss_bytes() - baseline
        await ws.send_message(CANCEL)
        with trio.fail_after(20):
            out = await collect(ws)
    assert written < 64 * MIB, f"the process wrote {written // MIB} MiB to a client that never read"
    assert grown < MEMORY_BOUND, f"RSS grew by {grown // MIB} MiB"
    assert set(out.texts) <= {LONG_YES_LINE}
    assert out.result == v1_failure(MSG_CANCELLED)
    assert await wait_gone([pid]) == []


# --- load and shutdown --------------------------------------------------------------------------------------------


async def test_200_concurrent_calls_each_get_one_result(calls_server: RunningServer, admin: str) -> None:
    outcomes: dict[int, Transcript] = {}

    async def one(i: int) -> None:
        outcomes[i] = await run_call(calls_server, admin, "args", [str(i), "é"])

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(one, i)
    assert sorted(outcomes) == list(range(200))
    for i, out in outcomes.items():
        assert (out.texts_before_result(), out.result, out.close_code) == ([str(i), "é"], V1_SUCCESS, 1000)


async def test_server_stopped_with_calls_running(nursery: trio.Nursery, data_dir: Path) -> None:
    server = await start_calls_server(nursery, data_dir)
    key = await api_key_for(server, "ada", "admin")
    pids: list[int] = []
    outcomes: list[Transcript] = []

    async def one(call: str, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with open_call_socket(server, key) as ws:
            await ws.send_message(call_frame(call))
            pids.extend(int(line) for line in (await read_pids(ws, call)))
            task_status.started()
            outcomes.append(await collect(ws))

    with trio.fail_after(20):
        async with trio.open_nursery() as clients:
            for call in ("forker", "forker", "ignore_term", "pid_cat", "pid_cat"):
                await clients.start(one, call)
            server.cancel_scope.cancel()
    assert len(outcomes) == 5
    for out in outcomes:
        assert (out.result, out.close_code) == (v1_failure(MSG_SHUTTING_DOWN), 1000)
    assert await wait_gone(pids) == []


async def read_pids(ws: WebSocketConnection, call: str) -> list[str]:
    if call == "pid_cat":
        return [await next_text(ws)]
    return (await read_until(ws, "ready"))[:-1]


# --- randomized interleavings -------------------------------------------------------------------------------------

CASES = int(os.environ.get("HEARTH_FUZZ_CASES", "3000"))
SEED = int(os.environ.get("HEARTH_FUZZ_SEED", "20240604"))
PARALLEL = 40
ALPHABET = "abcxyz 0123456789-_\té中🔥"
BOGUS_SIGNAL = b'{"signal": "bogus"}'


@dataclass
class Case:
    """One connection's script: the call, then groups of frames, each group sent in one write."""

    index: int
    pow1: bool
    call: str
    params: list[str]
    groups: list[tuple[list[str | bytes], float]] = field(default_factory=list)
    disconnect: str | None = None  # "abort" (vanish) or "close" (close frame)

    def frames(self) -> list[str | bytes]:
        return [f for frames, _ in self.groups for f in frames]


def make_case(index: int) -> Case:
    rng = random.Random(SEED * 1_000_003 + index)
    pow1 = rng.random() < 0.3
    if rng.random() < 0.5:
        case = Case(index, pow1, "cat", [])
    else:
        case = Case(index, pow1, "fuzz_lines", [str(rng.randrange(0, 40)), str(rng.choice([0, 0, 1, 3]))])
    current: list[str | bytes] = [call_frame(case.call, case.params)]
    for _ in range(rng.randrange(0, 9)):
        step = rng.random()
        if step < 0.5:
            current.append("".join(rng.choices(ALPHABET + ("\n" if pow1 else ""), k=rng.choice([0, 1, 5, 40]))))
        elif step < 0.6:
            current.append(CANCEL)
        elif step < 0.7:
            current.append(CLOSE_STDIN)
        elif step < 0.75:
            current.append(BOGUS_SIGNAL)
        elif step < 0.8:
            current.append(call_frame("exit_with", ["9"]))
        elif step < 0.94:
            case.groups.append((current, rng.choice([0.0, 0.001, 0.005, 0.02])))
            current = []
        else:
            case.disconnect = rng.choice(["abort", "close"])
            break
    if case.disconnect is None and not any(f in (CANCEL, CLOSE_STDIN) for f in current + case.frames()):
        current.append(CLOSE_STDIN)
    case.groups.append((current, 0.0))
    return case


async def play(server: RunningServer, key: str, case: Case) -> Transcript:
    raw = await RawSocket.connect(server, key, ["pow-1"] if case.pow1 else ())
    out = Transcript()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(raw.read_all, out)
        for frames, pause in case.groups:
            if frames and not await raw.try_send(*frames):
                break
            await trio.sleep(pause)
        if case.disconnect == "abort":
            await raw.abort()
        elif case.disconnect == "close":
            await raw.close(1000)
    return out


def expected_outcomes(case: Case) -> set[str]:
    """The results this script may end with: its natural end, or what its cancel / bad signal causes."""
    if case.call == "cat":
        natural = "success"
    else:
        natural = "success" if case.params[1] == "0" else f"exit status {case.params[1]}"
    allowed = {natural}
    if CANCEL in case.frames():
        allowed.add(MSG_CANCELLED)
    if case.pow1 and any(f == BOGUS_SIGNAL or (isinstance(f, bytes) and b'"call"' in f) for f in case.frames()[1:]):
        allowed.add("protocol error")
    return allowed


def outcome_of(case: Case, result: dict[str, object]) -> str:
    if case.pow1:
        assert set(result) <= {"status", "value", "reason"}, result
        return "success" if result == {"status": "fulfilled", "value": None} else str(result.get("reason"))
    return "success" if result == V1_SUCCESS else str(result.get("message"))


def expected_output(case: Case) -> str:
    """What the process prints when nothing cuts it short (the text frames joined by newlines)."""
    if case.call == "fuzz_lines":
        return "\n".join(f"out{i}" for i in range(int(case.params[0])))
    chunks: list[str] = []
    cancels = 0
    for frame in case.frames()[1:]:
        cancels += frame == CANCEL
        if frame == CLOSE_STDIN or (case.pow1 and cancels == 2):
            break  # stdin is closed: nothing later reaches the process
        if isinstance(frame, str):
            chunks.append(frame if case.pow1 else frame + "\n")
    return "".join(chunks).removesuffix("\n")


def check(case: Case, out: Transcript) -> None:
    if case.disconnect is not None:
        assert len(out.binaries) <= 1 and (not out.binaries or isinstance(out.frames[-1], bytes)), out.frames
        return
    outcome = outcome_of(case, out.result)
    assert out.close_code == 1000, out.close_code
    assert outcome in expected_outcomes(case), outcome
    produced, full = "\n".join(out.texts), expected_output(case)
    if outcome == "success" or outcome.startswith("exit status"):
        assert produced == full, (produced, full)
    else:
        assert full.startswith(produced), (produced, full)


async def test_exactly_one_result_under_random_interleavings(calls_server: RunningServer, admin: str) -> None:
    failures: list[str] = []
    limiter = trio.CapacityLimiter(PARALLEL)

    async def run(case: Case) -> None:
        async with limiter:
            try:
                with trio.fail_after(20):
                    check(case, await play(calls_server, admin, case))
            except (AssertionError, trio.TooSlowError) as e:
                failures.append(f"case {case.index} (HEARTH_FUZZ_SEED={SEED}): {case!r}: {e!r}"[:2000])

    cases = [make_case(i) for i in range(CASES)]
    with trio.fail_after(150):
        async with trio.open_nursery() as nursery:
            for case in cases:
                nursery.start_soon(run, case)
    assert failures == [], f"{len(failures)} of {CASES} cases failed; first: {failures[:3]}"
    await assert_everything_ended(calls_server, admin, sum(c.disconnect is None for c in cases))


async def assert_everything_ended(server: RunningServer, key: str, results: int) -> None:
    """No process outlives its call, and every call that answered is in the audit as ended."""
    for _ in range(200):
        rows = await all_history(server, key)
        if not child_pids() and all(r["outcome"] != "running" for r in rows):
            break
        await trio.sleep(0.05)
    assert child_pids() == set()
    assert [r for r in rows if r["outcome"] == "running"] == []
    assert len(rows) >= results


async def all_history(server: RunningServer, key: str) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    before: int | None = None
    for _ in range(100):
        page = await history(server, key, before=before)
        rows.extend(page)
        if len(page) < 500:
            break
        before = int(page[-1]["id"])
    return rows
