"""Output of one call: lines framed for the socket."""

from __future__ import annotations

from core.actions import OutputChunk, OutputGap
from core.call_service import RunningCall
from core.protocols.websocket_frames import LineSplitter, encode_text_lines
from handlers.hot_socket import Buffer

MAX_LINE_BYTES = 64 * 1024


class CallFramer:
    """stdout and stderr merged in arrival order, one TEXT frame a line, lines cut at 64 KiB."""

    def __init__(self, call: RunningCall) -> None:
        self._split = LineSplitter(max_line=MAX_LINE_BYTES)
        self._call = call
        self.missed = 0

    def encode(self, item: OutputChunk | OutputGap) -> list[Buffer]:
        if isinstance(item, OutputGap):
            self.missed += item.missed_bytes
            return self.finish()
        self._call.bytes_out += len(item.data)
        lines = self._split.feed(item.data)
        return [encode_text_lines(lines)] if lines else []

    def finish(self) -> list[Buffer]:
        lines = self._split.flush()
        return [encode_text_lines(lines)] if lines else []
