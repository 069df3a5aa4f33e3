"""The call protocol codec, tested with bytes."""

from __future__ import annotations

import pytest

from core.protocols.calls import (
    CallResult,
    NotACall,
    choose_subprotocol,
    decode_call,
    decode_signal,
    encode_result,
    msg_timed_out,
)


def test_decode_call_with_params() -> None:
    message = decode_call(b'{"call": "deploy", "params": ["a b", ";rm -rf /"]}')
    assert message.call == "deploy"
    assert message.params == ["a b", ";rm -rf /"]


def test_decode_call_params_default_to_empty() -> None:
    assert decode_call(b'{"call": "info"}').params == []


@pytest.mark.parametrize(
    "payload",
    [b"not json", b"\xff\xfe", b"[1,2]", b'{"call": ""}', b'{"params": []}', b'{"call": "x", "params": [1]}', b'"x"'],
)
def test_decode_call_refuses_what_is_not_a_call(payload: bytes) -> None:
    with pytest.raises(NotACall):
        decode_call(payload)


def test_decode_signal_known_and_unknown() -> None:
    assert decode_signal(b'{"signal": "cancel"}') is not None
    unknown = decode_signal(b'{"signal": "wave"}')
    assert unknown is not None and unknown.signal == "wave"
    assert decode_signal(b'{"other": 1}') is None
    assert decode_signal(b"\xff") is None


def test_results_of_both_generations() -> None:
    ok = CallResult(success=True)
    failed = CallResult(success=False, message="exit status 3")
    assert encode_result(ok, None) == b'{"success":true}'
    assert encode_result(failed, None) == b'{"success":false,"message":"exit status 3"}'
    assert encode_result(ok, "pow-1") == b'{"status":"fulfilled","value":null}'
    assert encode_result(failed, "pow-1") == b'{"status":"rejected","reason":"exit status 3"}'


def test_subprotocol_choice() -> None:
    assert choose_subprotocol(["chat", "pow-1"]) == "pow-1"
    assert choose_subprotocol(["chat"]) is None
    assert choose_subprotocol([]) is None


def test_timeout_message_has_no_trailing_zero() -> None:
    assert msg_timed_out(600) == "timed out after 600 s"
    assert msg_timed_out(0.5) == "timed out after 0.5 s"
