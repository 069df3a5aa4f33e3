"""Typed queries on the audit_log table: who did what to which resource, when, with what outcome."""

from __future__ import annotations

import msgspec
import sqlite_utils

from storage.database import Database


class AuditEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One audit row; ``at`` is RFC 3339 UTC, ``principal`` a label such as ``user:alice``."""

    at: str
    principal: str
    action: str
    resource: str = ""
    outcome: str = "ok"
    detail: str = ""
    id: int = 0


_COLUMNS = "id, at, principal, action, resource, outcome, detail"


def insert_entry(conn: sqlite_utils.Database, entry: AuditEntry) -> None:
    """Insert ``entry`` on a connection already inside a write transaction (so it commits with the change)."""
    conn.execute(
        "INSERT INTO audit_log (at, principal, action, resource, outcome, detail) VALUES (?, ?, ?, ?, ?, ?)",
        [entry.at, entry.principal, entry.action, entry.resource, entry.outcome, entry.detail],
    )


async def record(db: Database, entry: AuditEntry) -> None:
    """Insert ``entry`` in a transaction of its own."""
    await db.write(lambda conn: insert_entry(conn, entry))


async def delete_before(db: Database, cutoff: str) -> int:
    """Forget audit rows older than ``cutoff`` (RFC 3339)."""
    return await db.write(lambda conn: conn.execute("DELETE FROM audit_log WHERE at < ?", [cutoff]).rowcount)


async def recent(db: Database, *, action: str | None = None, limit: int = 100) -> list[AuditEntry]:
    """The newest entries first, optionally only those of one ``action``."""

    def query(conn: sqlite_utils.Database) -> list[AuditEntry]:
        where, params = ("WHERE action = ?", [action]) if action else ("", [])
        cursor = conn.execute(f"SELECT {_COLUMNS} FROM audit_log {where} ORDER BY id DESC LIMIT ?", [*params, limit])
        names = [d[0] for d in cursor.description]
        return [msgspec.convert(dict(zip(names, row, strict=True)), AuditEntry) for row in cursor.fetchall()]

    return await db.read(query)
