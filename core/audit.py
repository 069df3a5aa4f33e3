"""Audit trail entries, and the RFC 3339 UTC timestamps they and every principal table carry."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from core.errors import InvalidInput
from core.principals import Principal
from storage.audit import AuditEntry

log = logging.getLogger("hearth.audit")
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def now_utc() -> datetime:
    return datetime.now(UTC)


def rfc3339(moment: datetime) -> str:
    """``2024-05-01T12:00:00Z``: one fixed format, so stored times compare correctly as strings."""
    return moment.astimezone(UTC).strftime(TIME_FORMAT)


def parse_rfc3339(text: str, *, setting: str = "expires_at") -> datetime:
    """An aware datetime from an RFC 3339 string with an explicit offset (``Z`` or ``+02:00``); else 422."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidInput(f"{setting}: {text!r} is not an RFC 3339 time") from None
    if moment.tzinfo is None:
        raise InvalidInput(f"{setting}: {text!r} has no time zone offset (add Z for UTC)")
    return moment.astimezone(UTC)


def entry(actor: Principal | str, action: str, resource: str = "", outcome: str = "ok", detail: str = "") -> AuditEntry:
    """An audit row stamped now; ``actor`` is a Principal or a label like ``cli`` or ``user:alice``."""
    label = actor.describe() if isinstance(actor, Principal) else actor
    return AuditEntry(
        at=rfc3339(now_utc()), principal=label, action=action, resource=resource, outcome=outcome, detail=detail
    )


def emit(note: AuditEntry) -> None:
    """Log an audit entry once what it describes has been committed."""
    log.info(
        "audit",
        extra={"actor": note.principal, "action": note.action, "resource": note.resource, "outcome": note.outcome},
    )
