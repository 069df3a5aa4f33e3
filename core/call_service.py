"""Running one Distillery call: look it up, check params, permission and limits, start it, audit it.

The socket face (handlers/hot_calls.py) only frames what this decides; every failure is a ``CallResult`` with
one of the fixed messages of specs/calls.md §2.
"""

from __future__ import annotations

import logging
import secrets
import signal
import sys
from collections import Counter
from dataclasses import dataclass, field

from core.actions import Action, ActionResult
from core.audit import now_utc, rfc3339
from core.call_catalogue import CallRequest, CallSpec, check_params
from core.errors import ActionManagerStopped, TooManyActions
from core.principals import Principal, PrincipalKind
from core.protocols import calls as proto
from core.services import Services
from storage import call_history

log = logging.getLogger("hearth.calls")

MAX_AUDITED_NAME = 200  # characters of an unknown call's name kept in the audit


@dataclass
class CallLimits:
    """Calls running now, per principal and in all; ``try_acquire`` never waits."""

    per_principal: int
    total: int
    _running: Counter[str] = field(default_factory=Counter)

    def try_acquire(self, key: str) -> bool:
        if self._running[key] >= self.per_principal or sum(self._running.values()) >= self.total:
            return False
        self._running[key] += 1
        return True

    def release(self, key: str) -> None:
        self._running[key] -= 1
        if self._running[key] <= 0:
            del self._running[key]


@dataclass
class RunningCall:
    """A call that passed every check and holds a place in the limits; ``record_id`` is its audit row."""

    spec: CallSpec
    principal: Principal
    params: list[str]
    record_id: int = 0
    action: Action | None = None
    bytes_in: int = 0
    bytes_out: int = 0


def limit_key(principal: Principal) -> str:
    """Whose calls count together for ``calls.max_per_principal``: a person's, whichever of their credentials
    (password session, any of their API keys) each call came with."""
    if principal.kind in (PrincipalKind.USER, PrincipalKind.API_KEY) and principal.name:
        return f"user:{principal.name}"
    return principal.describe()


def failure(message: str) -> proto.CallResult:
    return proto.CallResult(success=False, message=message)


class CallService:
    """The calls of one server: the catalogue in ``svc.calls``, the limits, the audit."""

    def __init__(self, svc: Services) -> None:
        self._svc = svc
        settings = svc.settings.calls
        self.limits = CallLimits(settings.max_per_principal, settings.max_total)

    async def admit(self, principal: Principal, message: proto.CallMessage) -> RunningCall | proto.CallResult:
        """The checks of specs/calls.md §2 in order; a RunningCall holds a place in the limits until ``finish``.
        A refused call is audited too (no params: they were not checked), so attempts show in the history;
        an anonymous caller's refusals are logged only."""
        admitted = await self._check(principal, message)
        if isinstance(admitted, proto.CallResult):
            await self._audit_refusal(principal, message.call, admitted.message)
        return admitted

    async def _audit_refusal(self, principal: Principal, call: str, reason: str) -> None:
        """An authenticated caller's refusal is a history row; an anonymous one only a log line (it costs the
        database nothing: anyone can open sockets)."""
        if not principal.is_authenticated:
            log.info("anonymous call refused", extra={"call": call[:MAX_AUDITED_NAME], "reason": reason})
            return
        try:
            await call_history.refused(
                self._svc.db,
                principal=principal.describe(),
                user=principal.name,
                call=call[:MAX_AUDITED_NAME],
                at=rfc3339(now_utc()),
                message=reason,
            )
        except Exception:
            log.exception("cannot audit a refused call", extra={"call": call[:MAX_AUDITED_NAME]})

    async def _check(self, principal: Principal, message: proto.CallMessage) -> RunningCall | proto.CallResult:
        spec = self._svc.calls.get(message.call)
        if spec is None:
            return failure(proto.MSG_UNKNOWN_CALL)
        if not self._svc.calls.may_try(principal, spec):
            return failure(proto.MSG_PERMISSION_DENIED)
        if (problem := check_params(spec, message.params)) is not None:
            return failure(problem)  # first, so that an ownership rule may read its params safely
        if not await self._svc.calls.may_run(principal, spec, message.params):
            return failure(proto.MSG_PERMISSION_DENIED)
        if not self.limits.try_acquire(limit_key(principal)):
            return failure(proto.MSG_TOO_MANY)
        return RunningCall(spec, principal, list(message.params))

    async def start(self, call: RunningCall) -> Action | proto.CallResult:
        """Audit the call as running, then start its action; a failure to start is an internal error."""
        try:
            call.record_id = await call_history.begin(
                self._svc.db,
                principal=call.principal.describe(),
                user=call.principal.name,
                call=call.spec.name,
                params=call.spec.redacted(call.params),
                started_at=rfc3339(now_utc()),
            )
            call.action = await call.spec.start(CallRequest(call.principal, call.params, self._svc))
        except ActionManagerStopped:
            return failure(proto.MSG_SHUTTING_DOWN)
        except TooManyActions:
            return failure(proto.MSG_TOO_MANY)
        except Exception:
            return internal_error("call failed to start", call=call.spec.name)
        return call.action

    async def finish(self, call: RunningCall, result: proto.CallResult) -> None:
        """Release the call's place and record its outcome (also when nobody was left to tell)."""
        self.limits.release(limit_key(call.principal))
        if call.record_id:
            await call_history.finish(
                self._svc.db,
                call.record_id,
                ended_at=rfc3339(now_utc()),
                success=result.success,
                message=result.message,
                bytes_in=call.bytes_in,
                bytes_out=call.bytes_out,
            )


def call_result(result: ActionResult) -> proto.CallResult:
    """An action's one result in the call protocol's words."""
    if result.cancelled:  # only the spec's fixed texts: a cancel from elsewhere (the REST API) is "cancelled"
        reason = result.error
        return failure(reason if reason is not None and proto.is_call_cancel_reason(reason) else proto.MSG_CANCELLED)
    if result.error is not None:
        return internal_error(result.error)
    if result.signal is not None:
        return failure(proto.msg_killed_by(_signal_name(result.signal)))
    if result.exit_code != 0:
        return failure(proto.msg_exit_status(result.exit_code if result.exit_code is not None else -1))
    return proto.CallResult(success=True)


def internal_error(what: str, **context: str) -> proto.CallResult:
    """``internal error (ref ID)``; the same reference goes to the log with the details."""
    ref = secrets.token_hex(4)
    log.error(
        "call internal error", extra={"ref": ref, "error": what, **context}, exc_info=sys.exc_info()[0] is not None
    )
    return failure(proto.msg_internal(ref))


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
