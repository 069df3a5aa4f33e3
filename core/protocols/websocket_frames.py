"""Server-side websocket frames built by hand (RFC 6455 §5.2) and output split into lines; pure, no trio.

The hot output path (DESIGN.md convention 10) encodes every ready frame of a chunk of process output and
writes them in one ``send_all``: a server frame is unmasked, so a frame is a 2, 4 or 10 byte header and the
payload as it is. Incoming (masked) client frames are left to wsproto.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from struct import Struct

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
FIN = 0x80

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011
MAX_CLOSE_REASON_BYTES = 123  # a control frame's payload is at most 125 bytes, 2 of them the code

CHUNK_FRAME_BYTES = 32 * 1024  # framing=chunks: the largest binary message
MAX_LINE_BYTES = 1024 * 1024  # framing=lines: a longer line is sent as several messages
ELLIPSIS = "\u2026"

_U16 = Struct("!BBH")
_U64 = Struct("!BBQ")
_SMALL_TEXT = [bytes((FIN | OP_TEXT, n)) for n in range(126)]
_SMALL_BINARY = [bytes((FIN | OP_BINARY, n)) for n in range(126)]


def frame_header(opcode: int, length: int, *, fin: bool = True) -> bytes:
    """The header of an unmasked frame of ``length`` payload bytes."""
    first = (FIN if fin else 0) | opcode
    if length < 126:
        return bytes((first, length))
    if length < 1 << 16:
        return _U16.pack(first, 126, length)
    return _U64.pack(first, 127, length)


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """One complete unmasked frame."""
    return frame_header(opcode, len(payload)) + payload


def encode_text_lines(lines: Iterable[bytes]) -> bytes:
    """One TEXT frame per line (each already valid UTF-8), all frames concatenated, ready for one write."""
    parts: list[bytes] = []
    append = parts.append
    small = _SMALL_TEXT
    for line in lines:
        n = len(line)
        append(small[n] if n < 126 else frame_header(OP_TEXT, n))
        append(line)
    return b"".join(parts)


def binary_frame_parts(data: bytes, max_frame: int = CHUNK_FRAME_BYTES) -> list[bytes | memoryview]:
    """``data`` as BINARY frames of at most ``max_frame`` bytes: headers and payload views, nothing copied
    (for a vectored write)."""
    n = len(data)
    if n <= max_frame:
        return [_SMALL_BINARY[n] if n < 126 else frame_header(OP_BINARY, n), data]
    view = memoryview(data)
    parts: list[bytes | memoryview] = []
    for start in range(0, n, max_frame):
        piece = view[start : start + max_frame]
        parts.append(frame_header(OP_BINARY, len(piece)))
        parts.append(piece)
    return parts


def encode_binary_chunks(data: bytes, max_frame: int = CHUNK_FRAME_BYTES) -> bytes:
    """``data`` as BINARY frames of at most ``max_frame`` bytes each, concatenated."""
    return b"".join(binary_frame_parts(data, max_frame))


def encode_close(code: int, reason: str = "") -> bytes:
    """A CLOSE frame; the reason is cut (at a character boundary) to the 123 bytes a close frame allows."""
    payload = code.to_bytes(2, "big") + truncate_utf8(reason.encode(), MAX_CLOSE_REASON_BYTES)
    return encode_frame(OP_CLOSE, payload)


def truncate_utf8(data: bytes, limit: int) -> bytes:
    """At most ``limit`` bytes of ``data`` without splitting a UTF-8 sequence."""
    if len(data) <= limit:
        return data
    return data[:limit].decode("utf-8", "ignore").encode()


def compact_reason(fields: Mapping[str, object], limit: int = MAX_CLOSE_REASON_BYTES) -> str:
    """``fields`` as compact JSON of at most ``limit`` bytes: the longest string value is shortened to fit."""
    values = dict(fields)
    text = _compact_json(values)
    while len(text.encode()) > limit:
        strings = [k for k, v in values.items() if isinstance(v, str) and v]
        if not strings:
            return truncate_utf8(text.encode(), limit).decode()
        key = max(strings, key=lambda k: len(str(values[k]).encode()))
        values[key] = _shorten(str(values[key]), len(text.encode()) - limit)
        text = _compact_json(values)
    return text


def _shorten(value: str, excess: int) -> str:
    """``value`` at least ``excess`` bytes shorter, ending in an ellipsis when anything is left."""
    data = value.encode()
    keep = len(data) - excess - len(ELLIPSIS.encode())
    return truncate_utf8(data, keep).decode() + ELLIPSIS if keep > 0 else ""


def _compact_json(values: Mapping[str, object]) -> str:
    return json.dumps(values, separators=(",", ":"), ensure_ascii=False)


class LineSplitter:
    """Turns one stream's output into lines: newline (and a carriage return before it) stripped, invalid
    UTF-8 replaced by U+FFFD, like websocketd. A line longer than ``max_line`` is cut into several lines."""

    def __init__(self, max_line: int = MAX_LINE_BYTES) -> None:
        self._max_line = max_line
        self._partial = b""

    def feed(self, data: bytes) -> list[bytes]:
        """The lines ``data`` completes; what follows the last newline waits for the next call."""
        end = data.rfind(b"\n")
        if end < 0:
            return self._hold(data)
        head = data[:end]
        if self._partial:
            head = self._partial + head
        self._partial = data[end + 1 :]
        cleaned = _clean(head)  # replacing invalid UTF-8 can make it longer than ``head``
        lines = cleaned.split(b"\n")
        return self._cut_long(lines) if len(cleaned) > self._max_line else lines

    def flush(self) -> list[bytes]:
        """The unterminated last line, if any (at the end of the output, or before a gap)."""
        rest, self._partial = self._partial, b""
        return self._cut_long([_clean(rest)]) if rest else []

    def _hold(self, data: bytes) -> list[bytes]:
        """Keep an unterminated line; once it is longer than ``max_line``, send its full pieces (a line of
        exactly ``max_line`` still waits: its newline may be next)."""
        self._partial += data
        out: list[bytes] = []
        while len(self._partial) - self._partial.endswith(b"\r") > self._max_line:  # a \r may precede its \n
            cut = _char_boundary(self._partial, self._max_line)
            out.extend(self._cut_long([_clean(self._partial[:cut])]))
            self._partial = self._partial[cut:]
        return out

    def _cut_long(self, lines: list[bytes]) -> list[bytes]:
        out: list[bytes] = []
        limit = self._max_line
        for line in lines:
            if len(line) <= limit:
                out.append(line)
                continue
            text = line.decode()  # _clean made it valid UTF-8; cut on characters, then re-encode
            out.extend(_cut_text(text, limit))
        return out


def _char_boundary(data: bytes, limit: int) -> int:
    """``limit``, moved back so as not to split a UTF-8 sequence (continuation bytes are 0b10xxxxxx)."""
    cut = limit
    while cut > limit - 3 and cut > 1 and data[cut] & 0xC0 == 0x80:
        cut -= 1
    return cut


def _clean(block: bytes) -> bytes:
    """Valid UTF-8 with no carriage return before a newline; the ASCII case costs one scan."""
    if not block.isascii():
        block = block.decode("utf-8", "replace").encode()
    if b"\r" in block:
        block = block.replace(b"\r\n", b"\n")
        if block.endswith(b"\r"):
            block = block[:-1]
    return block


def _cut_text(text: str, limit: int) -> list[bytes]:
    """Pieces of at most ``limit`` UTF-8 bytes (a character is never split)."""
    out: list[bytes] = []
    data = text.encode()
    while len(data) > limit:
        piece = truncate_utf8(data, limit) or data[:limit]
        out.append(piece)
        data = data[len(piece) :]
    out.append(data)
    return out
