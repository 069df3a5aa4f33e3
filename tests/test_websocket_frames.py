"""Hand-built server frames decoded by wsproto's client-side parser, and output split into lines."""

from __future__ import annotations

import json

import pytest
from wsproto.frame_protocol import FrameProtocol, Opcode

from core.protocols.websocket_frames import (
    CHUNK_FRAME_BYTES,
    CLOSE_TOO_BIG,
    MAX_CLOSE_REASON_BYTES,
    OP_PING,
    LineSplitter,
    binary_frame_parts,
    compact_reason,
    encode_binary_chunks,
    encode_close,
    encode_frame,
    encode_text_lines,
    frame_header,
    truncate_utf8,
)


def decode(data: bytes) -> list[tuple[Opcode, object]]:
    """Parse ``data`` as a client would (frames from a server are unmasked) into (opcode, payload) pairs."""
    proto = FrameProtocol(client=True, extensions=[])
    proto.receive_bytes(data)
    return [(frame.opcode, frame.payload) for frame in proto.received_frames()]


@pytest.mark.parametrize("length", [0, 1, 125, 126, 65535, 65536, 70000])
def test_frame_header_length_encodings_decode(length: int) -> None:
    payload = b"x" * length
    frames = decode(frame_header(0x2, length) + payload)
    assert frames == [(Opcode.BINARY, payload)]


def test_frame_header_sizes_follow_rfc6455() -> None:
    assert len(frame_header(0x1, 125)) == 2
    assert len(frame_header(0x1, 126)) == 4
    assert len(frame_header(0x1, 65536)) == 10
    assert frame_header(0x1, 5)[0] == 0x81
    assert frame_header(0x1, 5, fin=False)[0] == 0x01


def test_encode_text_lines_one_message_per_line() -> None:
    lines = [b"hello", b"", "h\u00e9llo \u2603".encode(), b"y" * 200, b"z" * 70000]
    frames = decode(encode_text_lines(lines))
    assert frames == [(Opcode.TEXT, line.decode()) for line in lines]


def test_encode_text_lines_of_nothing_is_empty() -> None:
    assert encode_text_lines([]) == b""


def test_encode_binary_chunks_caps_each_message_at_32k() -> None:
    data = bytes(range(256)) * 300  # 76,800 bytes: 32 KiB + 32 KiB + the rest
    frames = decode(encode_binary_chunks(data))
    assert [op for op, _ in frames] == [Opcode.BINARY] * 3
    payloads = [p for _, p in frames if isinstance(p, bytes | bytearray)]
    assert [len(p) for p in payloads] == [CHUNK_FRAME_BYTES, CHUNK_FRAME_BYTES, len(data) - 2 * CHUNK_FRAME_BYTES]
    assert b"".join(payloads) == data


def test_binary_frame_parts_do_not_copy_large_payloads() -> None:
    data = b"a" * (CHUNK_FRAME_BYTES + 1)
    parts = binary_frame_parts(data)
    assert len(parts) == 4
    assert isinstance(parts[1], memoryview)
    assert parts[1].obj is data


def test_small_binary_is_one_frame() -> None:
    assert decode(encode_binary_chunks(b"abc")) == [(Opcode.BINARY, b"abc")]


def test_encode_close_carries_code_and_reason() -> None:
    frames = decode(encode_close(1000, '{"exit_code":0}'))
    assert frames == [(Opcode.CLOSE, (1000, '{"exit_code":0}'))]


def test_encode_close_cuts_long_reason_on_a_character_boundary() -> None:
    frame = encode_close(CLOSE_TOO_BIG, "\u00e9" * 100)  # 200 bytes of two-byte characters
    # 61 characters are 122 bytes: the 62nd would pass the 123 a close reason may have
    assert decode(frame) == [(Opcode.CLOSE, (CLOSE_TOO_BIG, "\u00e9" * 61))]


def test_control_frame_encodes() -> None:
    assert decode(encode_frame(OP_PING, b"hi")) == [(Opcode.PING, b"hi")]


def test_truncate_utf8_never_splits_a_character() -> None:
    assert truncate_utf8("a\u2603b".encode(), 2) == b"a"
    assert truncate_utf8(b"abc", 5) == b"abc"


def test_compact_reason_is_compact_json() -> None:
    assert compact_reason({"exit_code": 0}) == '{"exit_code":0}'


def test_compact_reason_shortens_the_longest_string_to_fit() -> None:
    reason = compact_reason({"exit_code": 1, "error": "boom " * 100})
    assert len(reason.encode()) <= MAX_CLOSE_REASON_BYTES
    decoded = json.loads(reason)
    assert decoded["exit_code"] == 1
    assert decoded["error"].startswith("boom boom") and decoded["error"].endswith("\u2026")


def test_compact_reason_with_escapes_and_unicode_still_fits() -> None:
    reason = compact_reason({"error": '"\n\u2603' * 60, "signal": 9})
    assert len(reason.encode()) <= MAX_CLOSE_REASON_BYTES
    assert json.loads(reason)["signal"] == 9


def test_line_splitter_holds_the_partial_line() -> None:
    split = LineSplitter()
    assert split.feed(b"one\ntw") == [b"one"]
    assert split.feed(b"o\nthree") == [b"two"]
    assert split.flush() == [b"three"]
    assert split.flush() == []


def test_line_splitter_keeps_empty_lines() -> None:
    assert LineSplitter().feed(b"\n\na\n") == [b"", b"", b"a"]


def test_line_splitter_strips_carriage_returns_before_newlines() -> None:
    split = LineSplitter()
    assert split.feed(b"dos\r\nline\r") == [b"dos"]
    assert split.feed(b"\nmid\rdle\n") == [b"line", b"mid\rdle"]


def test_line_splitter_replaces_invalid_utf8() -> None:
    lines = LineSplitter().feed(b"ok\xff\xfe\nfine \xe2\x98\x83\n")
    assert lines == ["ok\ufffd\ufffd".encode(), "fine \u2603".encode()]


def test_line_splitter_joins_a_character_split_across_reads() -> None:
    split = LineSplitter()
    assert split.feed(b"snow \xe2\x98") == []
    assert split.feed(b"\x83\n") == ["snow \u2603".encode()]


def test_line_splitter_cuts_overlong_lines() -> None:
    split = LineSplitter(max_line=10)
    assert split.feed(b"a" * 25) == [b"a" * 10, b"a" * 10]  # the rest of the line may still come
    assert split.feed(b"b" * 12 + b"\nc\n") == [b"a" * 5 + b"b" * 5, b"b" * 7, b"c"]


def test_line_splitter_holds_a_line_of_exactly_the_limit_for_its_newline() -> None:
    split = LineSplitter(max_line=10)
    assert split.feed(b"x" * 10) == []
    assert split.feed(b"\n") == [b"x" * 10]
    assert split.flush() == []


def test_line_splitter_cuts_overlong_lines_between_characters() -> None:
    lines = LineSplitter(max_line=5).feed("\u2603\u2603\u2603\n".encode())  # 9 bytes of three-byte characters
    assert lines == ["\u2603".encode()] * 3  # two would be 6 bytes
