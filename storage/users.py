"""Typed queries on the users table, and the row-to-record helper the principal tables share."""

from __future__ import annotations

import sqlite3
from typing import Any, TypeVar

import msgspec
import sqlite_utils

from core.errors import Conflict
from storage.audit import AuditEntry, insert_entry
from storage.database import Database

R = TypeVar("R")


class UserRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One user; ``password_hash`` is an argon2id PHC string."""

    id: int
    name: str
    role: str
    password_hash: str
    disabled: bool = False
    created_at: str


_COLUMNS = "id, name, role, password_hash, disabled, created_at"


def fetch_records(cursor: Any, kind: type[R]) -> list[R]:
    """Every row of ``cursor`` converted to ``kind`` by column name."""
    names = [d[0] for d in cursor.description]
    return [msgspec.convert(dict(zip(names, row, strict=True)), kind, strict=False) for row in cursor.fetchall()]


def fetch_record(cursor: Any, kind: type[R]) -> R | None:
    found = fetch_records(cursor, kind)
    return found[0] if found else None


def insert_user_row(
    conn: sqlite_utils.Database, *, name: str, role: str, password_hash: str, created_at: str
) -> UserRecord:
    """Insert a user inside the caller's write transaction; 409 when the name is taken."""
    try:
        cursor = conn.execute(
            "INSERT INTO users (name, role, password_hash, created_at) VALUES (?, ?, ?, ?)",
            [name, role, password_hash, created_at],
        )
    except sqlite3.IntegrityError:
        raise Conflict(f"user {name} already exists") from None
    return UserRecord(
        id=row_id(cursor.lastrowid), name=name, role=role, password_hash=password_hash, created_at=created_at
    )


async def insert_user(
    db: Database, *, name: str, role: str, password_hash: str, created_at: str, audit: AuditEntry | None = None
) -> UserRecord:
    """Insert a user (and its audit row, in the same transaction)."""

    def write(conn: sqlite_utils.Database) -> UserRecord:
        user = insert_user_row(conn, name=name, role=role, password_hash=password_hash, created_at=created_at)
        if audit is not None:
            insert_entry(conn, audit)
        return user

    return await db.write(write)


async def get_user_by_name(db: Database, name: str) -> UserRecord | None:
    return await db.read(
        lambda conn: fetch_record(conn.execute(f"SELECT {_COLUMNS} FROM users WHERE name = ?", [name]), UserRecord)
    )


async def get_user(db: Database, user_id: int) -> UserRecord | None:
    return await db.read(
        lambda conn: fetch_record(conn.execute(f"SELECT {_COLUMNS} FROM users WHERE id = ?", [user_id]), UserRecord)
    )


async def list_users(db: Database, *, after_id: int = 0, limit: int = 1000) -> list[UserRecord]:
    return await db.read(
        lambda conn: fetch_records(
            conn.execute(f"SELECT {_COLUMNS} FROM users WHERE id > ? ORDER BY id LIMIT ?", [after_id, limit]),
            UserRecord,
        )
    )


async def count_users(db: Database) -> int:
    return int(await db.read(lambda conn: conn.execute("SELECT count(*) FROM users").fetchone()[0]))


async def set_password_hash(db: Database, user_id: int, password_hash: str) -> None:
    """Replace a user's hash (used to upgrade hashes made with older argon2 parameters)."""
    await db.write(
        lambda conn: conn.execute("UPDATE users SET password_hash = ? WHERE id = ?", [password_hash, user_id])
    )


def row_id(rowid: int | None) -> int:
    if rowid is None:
        raise RuntimeError("INSERT returned no rowid")
    return rowid


async def set_disabled(
    db: Database, name: str, disabled: bool, *, audit: AuditEntry | None = None
) -> UserRecord | None:
    """Set a user's ``disabled`` flag; None when there is no such user."""

    def write(conn: sqlite_utils.Database) -> UserRecord | None:
        conn.execute("UPDATE users SET disabled = ? WHERE name = ?", [int(disabled), name])
        user = fetch_record(conn.execute(f"SELECT {_COLUMNS} FROM users WHERE name = ?", [name]), UserRecord)
        if user is not None and audit is not None:
            insert_entry(conn, audit)
        return user

    return await db.write(write)
