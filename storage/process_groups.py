"""Typed queries on process_groups: the live process groups of running actions, reaped after a crash."""

from __future__ import annotations

import msgspec
import sqlite_utils

from storage.database import Database


class ProcessGroupRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One live group: ``start_ticks`` is the leader's start time in clock ticks since boot ``boot_id``."""

    pgid: int
    action_id: str
    argv: list[str]
    started_at: str
    boot_id: str
    start_ticks: int


_NAMES = ("pgid", "action_id", "argv", "started_at", "boot_id", "start_ticks")
_COLUMNS = ", ".join(_NAMES)


async def record_group(db: Database, record: ProcessGroupRecord) -> None:
    """Remember a group that just started (replacing any stale row of the same pgid)."""
    values = [
        record.pgid,
        record.action_id,
        msgspec.json.encode(record.argv).decode(),
        record.started_at,
        record.boot_id,
        record.start_ticks,
    ]
    sql = f"INSERT OR REPLACE INTO process_groups ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
    await db.write(lambda conn: conn.execute(sql, values))


async def forget_group(db: Database, pgid: int, action_id: str) -> None:
    """The group has ended: drop its row (only if it is still this action's)."""
    sql = "DELETE FROM process_groups WHERE pgid = ? AND action_id = ?"
    await db.write(lambda conn: conn.execute(sql, [pgid, action_id]))


async def list_groups(db: Database) -> list[ProcessGroupRecord]:
    """Every recorded group, oldest pgid first."""

    def query(conn: sqlite_utils.Database) -> list[ProcessGroupRecord]:
        rows = conn.execute(f"SELECT {_COLUMNS} FROM process_groups ORDER BY pgid").fetchall()
        return [_record(row) for row in rows]

    return await db.read(query)


async def clear_groups(db: Database) -> None:
    """Forget every recorded group (after a restart has reaped them)."""
    await db.write(lambda conn: conn.execute("DELETE FROM process_groups"))


def _record(row: tuple[object, ...]) -> ProcessGroupRecord:
    fields = dict(zip(_NAMES, row, strict=True))
    fields["argv"] = msgspec.json.decode(str(fields["argv"]))
    return msgspec.convert(fields, ProcessGroupRecord)
