"""The Distillery call protocol (specs/calls.md §2, §2a): control messages in binary frames, decoded once here."""

from __future__ import annotations

from typing import Literal

import msgspec

POW1 = "pow-1"

# The fixed result messages of specs/calls.md §2; clients and tests match on them.
MSG_FIRST_TIMEOUT = "timeout reading the first message"
MSG_UNKNOWN_CALL = "unknown action call"
MSG_BAD_PARAM_COUNT = "invalid number of parameters"
MSG_PERMISSION_DENIED = "permission denied"
MSG_CANCELLED = "cancelled"
MSG_TOO_MANY = "too many concurrent calls"
MSG_SHUTTING_DOWN = "server shutting down"
MSG_PROTOCOL_ERROR = "protocol error"


def msg_invalid_param(name: str, why: str) -> str:
    return f"invalid parameter {name}: {why}"


def msg_exit_status(code: int) -> str:
    return f"exit status {code}"


def msg_killed_by(signame: str) -> str:
    return f"killed by signal {signame}"


def msg_timed_out(seconds: float) -> str:
    return f"timed out after {seconds:g} s"


def msg_internal(ref: str) -> str:
    return f"internal error (ref {ref})"


def is_call_cancel_reason(reason: str) -> bool:
    """Whether an action's cancel reason is one of the fixed messages a call may end with (the call face, the
    time limit, the server stopping); any other (a cancel through the REST API) is reported as ``cancelled``."""
    fixed = reason in (MSG_CANCELLED, MSG_SHUTTING_DOWN, MSG_PROTOCOL_ERROR)
    return fixed or reason.startswith(("timed out after ", "internal error (ref "))


class CallMessage(msgspec.Struct, forbid_unknown_fields=False):
    """``{"call": "name", "params": ["...", ...]}``: exactly once, first."""

    call: str
    params: list[str] = msgspec.field(default_factory=list)


class SignalMessage(msgspec.Struct):
    """``{"signal": "cancel" | "close" | ...}``; unknown signals decode and are ignored (or end a pow-1 call)."""

    signal: str


class CallResult(msgspec.Struct, frozen=True):
    """The one outcome of a call, before it is framed for a generation of the protocol."""

    success: bool
    message: str = ""
    value: object = None


Signal = Literal["cancel", "close"]

_CALL_DECODER = msgspec.json.Decoder(CallMessage)
_SIGNAL_DECODER = msgspec.json.Decoder(SignalMessage)
_ENCODER = msgspec.json.Encoder()


class NotACall(ValueError):
    """The first frame is not a CallMessage (text, not UTF-8, not JSON, not an object, no call name)."""


def decode_call(payload: bytes) -> CallMessage:
    """Decode the first binary frame; any defect is ``NotACall`` (answered with ``unknown action call``)."""
    try:
        message = _CALL_DECODER.decode(payload)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as e:  # RecursionError: nested too deep
        raise NotACall(str(e)) from None
    if not message.call:
        raise NotACall("empty call name")
    return message


def decode_signal(payload: bytes) -> SignalMessage | None:
    """Decode a binary frame after the call; ``None`` when it is not a signal object at all."""
    try:
        return _SIGNAL_DECODER.decode(payload)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deep
        return None


def encode_result_v1(result: CallResult) -> bytes:
    """``{"success": true}`` or ``{"success": false, "message": "..."}`` (Distillery v1)."""
    if result.success:
        return b'{"success":true}'
    return _ENCODER.encode({"success": False, "message": result.message})


def encode_result_pow1(result: CallResult) -> bytes:
    """``{"status": "fulfilled", "value": V}`` or ``{"status": "rejected", "reason": "..."}`` (pow-1)."""
    if result.success:
        return _ENCODER.encode({"status": "fulfilled", "value": result.value})
    return _ENCODER.encode({"status": "rejected", "reason": result.message})


def encode_result(result: CallResult, subprotocol: str | None) -> bytes:
    return encode_result_pow1(result) if subprotocol == POW1 else encode_result_v1(result)


def choose_subprotocol(offered: list[str]) -> str | None:
    """``pow-1`` when the client offers it; otherwise the v1 protocol (no subprotocol)."""
    return POW1 if POW1 in offered else None
