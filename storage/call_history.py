"""Typed queries on call_history: the audit of every Distillery call (who, what, when, outcome, bytes)."""

from __future__ import annotations

import msgspec
import sqlite_utils

from storage.database import Database


class CallRecord(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    principal: str
    user: str
    call: str
    params: list[str]
    started_at: str
    ended_at: str | None
    outcome: str  # running | success | failure
    message: str
    bytes_in: int
    bytes_out: int


_COLUMNS = "id, principal, user_name, call, params, started_at, ended_at, outcome, message, bytes_in, bytes_out"


def _record(row: tuple[object, ...]) -> CallRecord:
    values = list(row)
    values[4] = msgspec.json.decode(str(values[4]))
    names = ["id", "principal", "user", "call", "params", "started_at", "ended_at", "outcome", "message"]
    return msgspec.convert(dict(zip([*names, "bytes_in", "bytes_out"], values, strict=True)), CallRecord)


async def begin(db: Database, *, principal: str, user: str, call: str, params: list[str], started_at: str) -> int:
    """Record a call as running (params already redacted); returns its id."""

    def insert(conn: sqlite_utils.Database) -> int:
        cursor = conn.execute(
            "INSERT INTO call_history (principal, user_name, call, params, started_at) VALUES (?, ?, ?, ?, ?)",
            [principal, user, call, msgspec.json.encode(params).decode(), started_at],
        )
        return int(cursor.lastrowid or 0)

    return await db.write(insert)


async def refused(db: Database, *, principal: str, user: str, call: str, at: str, message: str) -> int:
    """Record a call refused before it started (unknown, permission denied, bad params, limits): ended at once."""

    def insert(conn: sqlite_utils.Database) -> int:
        cursor = conn.execute(
            "INSERT INTO call_history (principal, user_name, call, params, started_at, ended_at, outcome, message) "
            "VALUES (?, ?, ?, '[]', ?, ?, 'failure', ?)",
            [principal, user, call, at, at, message],
        )
        return int(cursor.lastrowid or 0)

    return await db.write(insert)


async def finish(
    db: Database, call_id: int, *, ended_at: str, success: bool, message: str, bytes_in: int, bytes_out: int
) -> None:
    outcome = "success" if success else "failure"
    await db.write(
        lambda conn: conn.execute(
            "UPDATE call_history SET ended_at = ?, outcome = ?, message = ?, bytes_in = ?, bytes_out = ? WHERE id = ?",
            [ended_at, outcome, message, bytes_in, bytes_out, call_id],
        )
    )


async def page(
    db: Database, *, user: str | None, before_id: int | None, limit: int, principal: str | None = None
) -> list[CallRecord]:
    """Newest first; ``user`` and ``principal`` None mean everyone's; ``before_id`` continues a previous page."""

    def query(conn: sqlite_utils.Database) -> list[CallRecord]:
        where: list[str] = []
        params: list[object] = []
        for column, value in (("user_name", user), ("principal", principal)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if before_id is not None:
            where.append("id < ?")
            params.append(before_id)
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        sql = f"SELECT {_COLUMNS} FROM call_history {clause} ORDER BY id DESC LIMIT ?"
        return [_record(row) for row in conn.execute(sql, [*params, limit]).fetchall()]

    return await db.read(query)


async def delete_ended_before(db: Database, cutoff: str) -> int:
    """Forget calls that ended before ``cutoff`` (RFC 3339); running ones are kept."""
    return await db.write(
        lambda conn: (
            conn.execute("DELETE FROM call_history WHERE ended_at IS NOT NULL AND ended_at < ?", [cutoff]).rowcount
        )
    )


async def mark_interrupted(db: Database, ended_at: str) -> int:
    """At start: calls left 'running' by a crash end as failures ('server stopped')."""
    return await db.write(
        lambda conn: (
            conn.execute(
                "UPDATE call_history SET outcome = 'failure', message = 'server stopped', ended_at = ? "
                "WHERE outcome = 'running'",
                [ended_at],
            ).rowcount
        )
    )
