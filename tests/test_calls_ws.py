"""`WS /api/v1/ws/` (specs/calls.md §2, §2a): output, input, outcomes, cancel, bad input, limits, pow-1, audit."""

from __future__ import annotations

from contextlib import suppress
from pathlib import Path

import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection
from wsproto.events import BytesMessage, TextMessage

from core.errors import ConfigError
from core.protocols.calls import (
    MSG_BAD_PARAM_COUNT,
    MSG_CANCELLED,
    MSG_FIRST_TIMEOUT,
    MSG_PERMISSION_DENIED,
    MSG_PROTOCOL_ERROR,
    MSG_UNKNOWN_CALL,
)
from tests.calls_support import (
    CANCEL,
    CLOSE_STDIN,
    FRAME_LIMIT,
    KIB,
    LONG_YES_LINE,
    MIB,
    POW1_FULFILLED,
    V1_SUCCESS,
    RawSocket,
    Transcript,
    call_frame,
    collect,
    command_settings,
    jwt_for,
    next_text,
    open_call_socket,
    pow1_rejected,
    read_until,
    run_call,
    start_calls_server,
    v1_failure,
    wait_gone,
    wait_history_row,
)
from tests.conftest import RunningServer, api_key_for, make_settings, start_server


def assert_closed_normally(transcript: Transcript) -> None:
    assert transcript.close_code == 1000, transcript


# --- output (§2 "Output") -------------------------------------------------------------------------------------


async def test_output_lines_arrive_in_order_then_success(calls_server: RunningServer, admin: str) -> None:
    out = await run_call(calls_server, admin, "seq", ["2000"])
    assert out.result == V1_SUCCESS
    assert out.texts == [str(i) for i in range(1, 2001)]
    assert_closed_normally(out)


async def test_output_merges_stdout_and_stderr_in_arrival_order(calls_server: RunningServer, admin: str) -> None:
    out = await run_call(calls_server, admin, "merged")
    assert out.texts_before_result() == ["out1", "err1", "out2"]


async def test_output_strips_crlf_and_sends_last_line_without_newline(calls_server: RunningServer, admin: str) -> None:
    out = await run_call(calls_server, admin, "crlf")
    assert out.texts_before_result() == ["a", "b", "", "c"]


async def test_output_splits_lines_longer_than_64k(calls_server: RunningServer, admin: str) -> None:
    out = await run_call(calls_server, admin, "long_lines", ["200000", "0"])
    texts = out.texts_before_result()
    assert texts[-2:] == ["", "end"]
    assert "".join(texts[:-2]) == "x" * 200_000
    assert len(texts[:-2]) >= 4 and all(len(t) <= FRAME_LIMIT for t in texts)


async def test_output_line_of_exactly_64k_is_one_frame(calls_server: RunningServer, admin: str) -> None:
    out = await run_call(calls_server, admin, "long_lines", [str(FRAME_LIMIT), "1"])
    assert out.texts_before_result() == ["x" * FRAME_LIMIT, "é", "end"]


async def test_output_split_keeps_utf8_characters_whole(calls_server: RunningServer, admin: str) -> None:
    out = await run_call(calls_server, admin, "long_lines", ["1", "40000"])
    texts = out.texts_before_result()
    assert texts[0] == "x" and texts[-1] == "end"
    assert "".join(texts[1:-1]) == "é" * 40_000
    assert len(texts) >= 4 and all(len(t.encode()) <= FRAME_LIMIT for t in texts)


async def test_output_invalid_utf8_becomes_replacement_characters(calls_server: RunningServer, admin: str) -> None:
    out = await run_call(calls_server, admin, "bad_utf8")
    first, bad, last = out.texts_before_result()
    assert (first, last) == ("ok", "end")
    assert bad.startswith("\ufffd") and bad.replace("\ufffd", "") == "bad"
    assert out.result == V1_SUCCESS


# --- input (§2 "Input", §2a) -----------------------------------------------------------------------------------


async def test_input_lines_get_a_newline_and_close_ends_stdin(calls_server: RunningServer, admin: str) -> None:
    lines = ["a", "b c", "", "é 中 🔥"]
    out = await run_call(calls_server, admin, "cat", after=[*lines, CLOSE_STDIN])
    assert out.texts_before_result() == lines
    assert out.result == V1_SUCCESS


async def test_input_after_close_signal_is_ignored(calls_server: RunningServer, admin: str) -> None:
    out = await run_call(calls_server, admin, "echo_stdin", after=["a", CLOSE_STDIN, "late"])
    assert out.texts_before_result() == ["a", "eof", "done"]


async def test_pow1_input_is_written_exactly_as_received(calls_server: RunningServer, admin: str) -> None:
    chunks = ["ab", "c\nd", "", "e\n", "tail"]
    out = await run_call(calls_server, admin, "cat", subprotocols=["pow-1"], after=[*chunks, CLOSE_STDIN])
    assert out.texts_before_result() == ["abc", "de", "tail"]
    assert out.result == POW1_FULFILLED


# --- outcomes ---------------------------------------------------------------------------------------------------


async def test_nonzero_exit_reports_exit_status(calls_server: RunningServer, admin: str) -> None:
    for code in (1, 3, 255):
        out = await run_call(calls_server, admin, "exit_with", [str(code)])
        assert out.result == v1_failure(f"exit status {code}")
        assert_closed_normally(out)


async def test_signal_not_from_hearth_is_reported(calls_server: RunningServer, admin: str) -> None:
    for signal in ("KILL", "TERM"):
        out = await run_call(calls_server, admin, "kill_self", [signal])
        assert out.result == v1_failure(f"killed by signal SIG{signal}")


async def test_time_limit_ends_the_call_and_kills_the_process(calls_server: RunningServer, admin: str) -> None:
    out = await run_call(calls_server, admin, "slow")
    assert out.result == v1_failure("timed out after 1 s")
    assert await wait_gone([int(out.texts[0])]) == []


# --- cancel and disconnect (§2 "Cancel") ------------------------------------------------------------------------


async def start_and_read_pids(ws: WebSocketConnection, call: str) -> list[int]:
    await ws.send_message(call_frame(call))
    return [int(line) for line in (await read_until(ws, "ready"))[:-1]]


@pytest.mark.parametrize("call", ["forker", "ignore_term"])
async def test_cancel_kills_the_whole_process_group(calls_server: RunningServer, admin: str, call: str) -> None:
    async with open_call_socket(calls_server, admin) as ws:
        pids = await start_and_read_pids(ws, call)
        await ws.send_message(CANCEL)
        with trio.fail_after(10):
            out = await collect(ws)
    assert out.result == v1_failure(MSG_CANCELLED)
    assert_closed_normally(out)
    assert await wait_gone(pids) == []


async def test_cancel_twice_gives_one_result(calls_server: RunningServer, admin: str) -> None:
    async with open_call_socket(calls_server, admin) as ws:
        await ws.send_message(call_frame("ready_cat"))
        assert await next_text(ws) == "ready"
        await ws.send_message(CANCEL)
        await ws.send_message(CANCEL)
        with trio.fail_after(10):
            out = await collect(ws)
    assert out.result == v1_failure(MSG_CANCELLED)
    assert_closed_normally(out)


async def test_cancel_after_the_result_is_ignored(calls_server: RunningServer, admin: str) -> None:
    async with open_call_socket(calls_server, admin) as ws:
        await ws.send_message(call_frame("exit_with", ["0"]))
        with trio.fail_after(10):
            first = await ws.get_message()
            with suppress(ConnectionClosed):
                await ws.send_message(CANCEL)
            out = await collect(ws, Transcript(frames=[first]))
    assert out.result == V1_SUCCESS
    assert_closed_normally(out)


async def test_cancel_in_the_same_write_as_the_call(calls_server: RunningServer, admin: str) -> None:
    raw = await RawSocket.connect(calls_server, admin)
    await raw.send(call_frame("ready_cat"), CANCEL)
    with trio.fail_after(10):
        out = await raw.read_all(Transcript())
    assert out.result == v1_failure(MSG_CANCELLED)
    assert_closed_normally(out)


async def test_client_close_kills_the_process_and_is_audited(calls_server: RunningServer, admin: str) -> None:
    async with open_call_socket(calls_server, admin) as ws:
        pids = await start_and_read_pids(ws, "forker")
        await ws.aclose()
    assert await wait_gone(pids) == []
    row = await wait_history_row(calls_server, admin, "forker")
    assert (row["outcome"], row["message"]) == ("failure", MSG_CANCELLED)


async def test_client_vanishing_kills_the_process_and_is_audited(calls_server: RunningServer, admin: str) -> None:
    raw = await RawSocket.connect(calls_server, admin)
    await raw.send(call_frame("forker"))
    seen = Transcript()
    with trio.fail_after(10):
        await raw.read_until(seen, lambda t: "ready" in t.texts)
    await raw.abort()
    assert await wait_gone([int(p) for p in seen.texts[:3]]) == []
    row = await wait_history_row(calls_server, admin, "forker")
    assert (row["outcome"], row["message"]) == ("failure", MSG_CANCELLED)


# --- bad input (§2 table) ---------------------------------------------------------------------------------------


async def first_frame_only(server: RunningServer, key: str, first: str | bytes) -> Transcript:
    with trio.fail_after(10):
        async with open_call_socket(server, key) as ws:
            await ws.send_message(first)
            return await collect(ws)


async def test_text_frame_first_is_unknown_action_call(calls_server: RunningServer, admin: str) -> None:
    for first in ("hello", '{"call": "info"}'):
        out = await first_frame_only(calls_server, admin, first)
        assert out.result == v1_failure(MSG_UNKNOWN_CALL), first
        assert_closed_normally(out)


BAD_FIRST_FRAMES = [b"not json", b"\xff\xfe\x00{", b"[1, 2]", b'"info"', b"{}", b'{"params": []}', b'{"call": ""}']


async def test_bad_first_binary_frame_is_unknown_action_call(calls_server: RunningServer, admin: str) -> None:
    for first in BAD_FIRST_FRAMES:
        out = await first_frame_only(calls_server, admin, first)
        assert out.result == v1_failure(MSG_UNKNOWN_CALL), first
        assert_closed_normally(out)


async def test_unknown_call_is_unknown_action_call(calls_server: RunningServer, admin: str) -> None:
    out = await run_call(calls_server, admin, "no-such-call")
    assert out.result == v1_failure(MSG_UNKNOWN_CALL)
    assert_closed_normally(out)


async def test_params_may_be_omitted(calls_server: RunningServer) -> None:
    viewer = await api_key_for(calls_server, "vic", "viewer")
    out = await run_call(calls_server, viewer, "info")
    assert out.result == V1_SUCCESS
    assert out.texts and all(": " in line for line in out.texts)


async def test_second_call_message_is_ignored(calls_server: RunningServer, admin: str) -> None:
    out = await run_call(calls_server, admin, "ready_cat", after=[call_frame("exit_with", ["3"]), "x", CLOSE_STDIN])
    assert out.texts_before_result() == ["ready", "x"]
    assert out.result == V1_SUCCESS


async def test_unknown_signal_and_json_are_ignored_in_v1(calls_server: RunningServer, admin: str) -> None:
    too_deep = b'{"signal":"cancel","x":' + b"[" * 200_000 + b"]" * 200_000 + b"}"  # 400 KB, past msgspec's depth
    ignored = [b'{"signal": "bogus"}', b'{"foo": 1}', b"[]", too_deep]
    out = await run_call(calls_server, admin, "ready_cat", after=[*ignored, "x", CLOSE_STDIN])
    assert out.texts_before_result() == ["ready", "x"]
    assert out.result == V1_SUCCESS


async def test_a_first_message_nested_too_deep_is_an_unknown_call(calls_server: RunningServer, admin: str) -> None:
    with trio.fail_after(20):
        async with open_call_socket(calls_server, admin) as ws:
            await ws.send_message(b'{"call":"cat","x":' + b"[" * 200_000 + b"]" * 200_000 + b"}")
            out = await collect(ws)
    assert out.result == v1_failure(MSG_UNKNOWN_CALL)
    assert_closed_normally(out)


async def test_wrong_number_of_params(calls_server: RunningServer, admin: str) -> None:
    for call, params in [("args", ["one"]), ("args", ["1", "2", "3"]), ("info", ["x"])]:
        out = await run_call(calls_server, admin, call, params)
        assert out.result == v1_failure(MSG_BAD_PARAM_COUNT), (call, params)
        assert_closed_normally(out)


async def test_non_string_params_fail_with_one_result(calls_server: RunningServer, admin: str) -> None:
    out = await run_call(calls_server, admin, "args", [1, 2])
    assert out.result["success"] is False
    assert out.texts == []


async def test_shell_metacharacters_are_passed_literally(
    calls_server: RunningServer, admin: str, tmp_path: Path
) -> None:
    marks = [tmp_path / f"pwned{i}" for i in range(5)]
    params = [f"; touch {marks[0]}", f"$(touch {marks[1]}) `touch {marks[2]}` && touch {marks[3]} | cat > {marks[4]}"]
    out = await run_call(calls_server, admin, "args", params)
    assert out.texts_before_result() == params
    assert [m for m in marks if m.exists()] == []


async def test_viewer_may_not_run_an_admin_command(calls_server: RunningServer) -> None:
    viewer = await api_key_for(calls_server, "vic", "viewer")
    out = await run_call(calls_server, viewer, "args", ["a", "b"])
    assert out.result == v1_failure(MSG_PERMISSION_DENIED)
    assert out.texts == []


async def test_member_command_needs_member(calls_server: RunningServer) -> None:
    viewer = await api_key_for(calls_server, "vic", "viewer")
    member = await api_key_for(calls_server, "meg", "member")
    assert (await run_call(calls_server, viewer, "member_true")).result == v1_failure(MSG_PERMISSION_DENIED)
    assert (await run_call(calls_server, member, "member_true")).result == V1_SUCCESS


async def test_anonymous_upgrade_is_accepted_then_denied(calls_server: RunningServer) -> None:
    out = await run_call(calls_server, None, "info")
    assert out.result == v1_failure(MSG_PERMISSION_DENIED)
    assert_closed_normally(out)


async def test_credentials_are_read_at_the_upgrade(calls_server: RunningServer) -> None:
    key = await api_key_for(calls_server, "vic", "viewer")
    jwt = await jwt_for(calls_server, "vic")
    origin = (b"Origin", calls_server.base_url.encode())  # browsers, the cookie's users, always send it
    ways = {
        "x-api-key": [(b"X-API-Key", key.encode())],
        "bearer-key": [(b"Authorization", f"Bearer {key}".encode())],
        "bearer-jwt": [(b"Authorization", f"Bearer {jwt}".encode())],
        "cookie": [(b"Cookie", f"hearth_access={jwt}".encode()), origin],
    }
    for how, headers in ways.items():
        with trio.fail_after(10):
            async with open_call_socket(calls_server, None, headers=headers) as ws:
                await ws.send_message(call_frame("info"))
                out = await collect(ws)
        assert out.result == V1_SUCCESS, how


async def test_no_call_message_within_the_timeout(calls_server: RunningServer, admin: str) -> None:
    with trio.fail_after(10):
        async with open_call_socket(calls_server, admin) as ws:
            out = await collect(ws)
    assert out.result == v1_failure(MSG_FIRST_TIMEOUT)
    assert_closed_normally(out)


async def test_a_command_that_cannot_run_refuses_start(nursery: trio.Nursery, data_dir: Path) -> None:
    commands = {**command_settings(), "broken": {"argv": ["/nonexistent/program"]}}
    with pytest.raises(ConfigError, match="broken"):
        await start_server(nursery, make_settings(data_dir, calls={"commands": commands}))


# --- pow-1 (§2a) ------------------------------------------------------------------------------------------------


async def test_pow1_is_chosen_when_offered(calls_server: RunningServer, admin: str) -> None:
    for offered in (["pow-1"], ["chat", "pow-1"]):
        with trio.fail_after(10):
            async with open_call_socket(calls_server, admin, subprotocols=offered) as ws:
                assert ws.subprotocol == "pow-1"
                await ws.send_message(call_frame("seq", ["3"]))
                out = await collect(ws)
        assert out.texts_before_result() == ["1", "2", "3"]
        assert out.result == POW1_FULFILLED
        assert (out.close_code, out.close_reason or "") == (1000, "")


async def test_pow1_failure_is_rejected_with_the_reason(calls_server: RunningServer, admin: str) -> None:
    out = await run_call(calls_server, admin, "exit_with", ["3"], subprotocols=["pow-1"])
    assert out.result == pow1_rejected("exit status 3")
    assert (out.close_code, out.close_reason or "") == (1000, "")


async def test_other_subprotocols_get_v1(calls_server: RunningServer, admin: str) -> None:
    with trio.fail_after(10):
        async with open_call_socket(calls_server, admin, subprotocols=["chat"]) as ws:
            assert ws.subprotocol is None
            await ws.send_message(call_frame("exit_with", ["0"]))
            out = await collect(ws)
    assert out.result == V1_SUCCESS


async def test_pow1_bad_control_frame_is_protocol_error(calls_server: RunningServer, admin: str) -> None:
    for frame in (b'{"signal": "bogus"}', b"not json"):
        out = await run_call(calls_server, admin, "ready_cat", subprotocols=["pow-1"], after=[frame])
        assert out.result == pow1_rejected(MSG_PROTOCOL_ERROR), frame
        assert_closed_normally(out)


async def test_pow1_second_cancel_closes_stdin(calls_server: RunningServer, admin: str, tmp_path: Path) -> None:
    marker = tmp_path / "stdin-closed"
    async with open_call_socket(calls_server, admin, subprotocols=["pow-1"]) as ws:
        await ws.send_message(call_frame("term_stdin", [str(marker)]))
        assert await next_text(ws) == "ready"
        await ws.send_message(CANCEL)
        await ws.send_message(CANCEL)
        with trio.fail_after(10):
            out = await collect(ws)
    assert out.result == pow1_rejected(MSG_CANCELLED)
    assert marker.exists()


async def test_no_text_frame_after_the_result(calls_server: RunningServer, admin: str) -> None:
    for subprotocols in (None, ["pow-1"]):
        async with open_call_socket(calls_server, admin, subprotocols=subprotocols) as ws:
            await ws.send_message(call_frame("yes_pid"))
            pid = int(await next_text(ws))
            for _ in range(100):
                assert await next_text(ws) == LONG_YES_LINE
            await ws.send_message(CANCEL)
            with trio.fail_after(10):
                out = await collect(ws)
        assert out.result in (v1_failure(MSG_CANCELLED), pow1_rejected(MSG_CANCELLED))
        assert_closed_normally(out)
        assert await wait_gone([pid]) == []


# --- audit ------------------------------------------------------------------------------------------------------


async def test_history_records_outcome_and_hides_secret_params(calls_server: RunningServer, admin: str) -> None:
    assert (await run_call(calls_server, admin, "secret", ["alice", "hunter2"])).result == V1_SUCCESS
    row = await wait_history_row(calls_server, admin, "secret")
    assert (row["user"], row["params"], row["outcome"]) == ("ada", ["alice", "***"], "success")
    assert row["ended_at"] is not None
    await run_call(calls_server, admin, "exit_with", ["3"])
    failed = await wait_history_row(calls_server, admin, "exit_with")
    assert (failed["outcome"], failed["message"]) == ("failure", "exit status 3")


async def test_history_counts_bytes_in_and_out(calls_server: RunningServer, admin: str) -> None:
    await run_call(calls_server, admin, "cat", after=["abc", "de", CLOSE_STDIN])
    row = await wait_history_row(calls_server, admin, "cat")
    assert row["bytes_in"] >= 5 and row["bytes_out"] >= 5


async def test_a_line_sent_in_frames_under_the_limit_is_not_too_big(nursery: trio.Nursery, data_dir: Path) -> None:
    server = await start_calls_server(nursery, data_dir)
    admin = await api_key_for(server, "ada", "admin")
    raw = await RawSocket.connect(server, admin)
    await raw.send(call_frame("cat"))
    piece = "z" * (512 * KIB)  # three frames of 512 KiB: one 1.5 MiB message, no frame over 1 MiB
    frames = [raw.conn.send(TextMessage(data=piece, message_finished=i == 2)) for i in range(3)]
    await raw.stream.send_all(b"".join(frames) + raw.conn.send(BytesMessage(data=CLOSE_STDIN)))
    out = Transcript()
    with trio.fail_after(30):
        await raw.read_all(out)
    assert (out.result, out.close_code) == ({"success": True}, 1000)
    assert sum(len(t) for t in out.texts) == 3 * 512 * KIB > MIB
    server.cancel_scope.cancel()
