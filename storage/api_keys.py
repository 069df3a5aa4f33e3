"""Typed queries on the api_keys table: keys are stored only as their SHA-256, found by its 16-character prefix."""

from __future__ import annotations

import sqlite3

import msgspec
import sqlite_utils

from core.errors import Conflict
from storage.audit import AuditEntry, insert_entry
from storage.database import Database
from storage.users import UserRecord, fetch_record, fetch_records, insert_user_row, row_id


class KeyRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One API key as stored (the fields the sync protocol replicates, plus local bookkeeping)."""

    id: int = 0
    name: str
    hash_prefix: str
    token_hash: str
    namespace: str = ""
    user_name: str = ""
    team: str = ""
    role: str
    quota_url: str = ""
    description: str = ""
    issued_at: str
    expires_at: str | None = None
    revoked_at: str | None = None
    source: str = "local"


_COLUMNS = (
    "id, name, hash_prefix, token_hash, namespace, user_name, team, role, quota_url, description, "
    "issued_at, expires_at, revoked_at, source"
)
_INSERT_COLUMNS = [c.strip() for c in _COLUMNS.split(",")][1:]


def _insert_row(conn: sqlite_utils.Database, key: KeyRecord) -> KeyRecord:
    values = [getattr(key, c) for c in _INSERT_COLUMNS]
    marks = ", ".join("?" for _ in values)
    try:
        cursor = conn.execute(f"INSERT INTO api_keys ({', '.join(_INSERT_COLUMNS)}) VALUES ({marks})", values)
    except sqlite3.IntegrityError:
        raise Conflict(f"an API key with prefix {key.hash_prefix} or name {key.name} already exists") from None
    return msgspec.structs.replace(key, id=row_id(cursor.lastrowid))


def _count_active(conn: sqlite_utils.Database, user_name: str, now: str) -> int:
    row = conn.execute(
        "SELECT count(*) FROM api_keys WHERE user_name = ? AND revoked_at IS NULL "
        "AND (expires_at IS NULL OR expires_at > ?)",
        [user_name, now],
    ).fetchone()
    return int(row[0])


async def insert_key(
    db: Database, key: KeyRecord, *, now: str, max_per_user: int = 0, audit: AuditEntry | None = None
) -> KeyRecord:
    """Insert ``key`` unless its user already has ``max_per_user`` active keys (409); 0 means no limit."""

    def write(conn: sqlite_utils.Database) -> KeyRecord:
        if max_per_user and _count_active(conn, key.user_name, now) >= max_per_user:
            raise Conflict(f"exceeded max keys per user ({max_per_user})")
        stored = _insert_row(conn, key)
        if audit is not None:
            insert_entry(conn, msgspec.structs.replace(audit, resource=f"api_key:{stored.id}"))
        return stored

    return await db.write(write)


async def import_key(db: Database, key: KeyRecord, *, audit: AuditEntry | None = None) -> KeyRecord:
    """Store a key made elsewhere (given hash); an existing key with the same prefix is returned as is."""

    def write(conn: sqlite_utils.Database) -> KeyRecord:
        cursor = conn.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE hash_prefix = ?", [key.hash_prefix])
        existing = fetch_record(cursor, KeyRecord)
        if existing is not None:
            return existing
        stored = _insert_row(conn, key)
        if audit is not None:
            insert_entry(conn, msgspec.structs.replace(audit, resource=f"api_key:{stored.id}"))
        return stored

    return await db.write(write)


async def get_key_by_prefix(db: Database, hash_prefix: str) -> KeyRecord | None:
    return await db.read(
        lambda conn: fetch_record(
            conn.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE hash_prefix = ?", [hash_prefix]), KeyRecord
        )
    )


MAX_ROW_ID = 2**63 - 1  # SQLite's largest integer: a larger id names no row (and would not bind)


def _names_no_row(key_id: int) -> bool:
    return not 0 < key_id <= MAX_ROW_ID


async def get_key(db: Database, key_id: int) -> KeyRecord | None:
    if _names_no_row(key_id):
        return None
    return await db.read(
        lambda conn: fetch_record(conn.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE id = ?", [key_id]), KeyRecord)
    )


async def list_keys(
    db: Database, *, user_name: str | None = None, after_id: int = 0, limit: int = 1000
) -> list[KeyRecord]:
    """Keys in id order, all of them or only ``user_name``'s, ``limit`` at a time after ``after_id``."""

    def read(conn: sqlite_utils.Database) -> list[KeyRecord]:
        where, params = ("AND user_name = ?", [user_name]) if user_name is not None else ("", [])
        cursor = conn.execute(
            f"SELECT {_COLUMNS} FROM api_keys WHERE id > ? {where} ORDER BY id LIMIT ?", [after_id, *params, limit]
        )
        return fetch_records(cursor, KeyRecord)

    return await db.read(read)


async def revoke_key(db: Database, key_id: int, *, now: str, audit: AuditEntry | None = None) -> KeyRecord | None:
    """Mark the key revoked (idempotent: the first revocation time is kept); None when there is no such key."""
    if _names_no_row(key_id):
        return None

    def write(conn: sqlite_utils.Database) -> KeyRecord | None:
        conn.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", [now, key_id])
        key = fetch_record(conn.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE id = ?", [key_id]), KeyRecord)
        if key is not None and audit is not None:
            insert_entry(conn, audit)
        return key

    return await db.write(write)


async def insert_first_admin(
    db: Database, *, name: str, password_hash: str, created_at: str, key: KeyRecord, audit: AuditEntry
) -> UserRecord | None:
    """Create the first administrator and its key in one transaction, only when there is no user at all."""

    def write(conn: sqlite_utils.Database) -> UserRecord | None:
        if conn.execute("SELECT count(*) FROM users").fetchone()[0]:
            return None
        user = insert_user_row(conn, name=name, role="admin", password_hash=password_hash, created_at=created_at)
        _insert_row(conn, key)
        insert_entry(conn, audit)
        return user

    return await db.write(write)
