"""Typed queries on refresh_tokens: stored only as SHA-256 hex, rotated and revoked in single transactions."""

from __future__ import annotations

from typing import Literal

import msgspec
import sqlite_utils

from storage.database import Database
from storage.users import fetch_record

RotateOutcome = Literal["ok", "unknown", "revoked", "expired", "disabled"]


class RefreshRecord(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    token_hash: str
    user_id: int
    issued_at: str
    expires_at: str
    revoked_at: str | None = None
    user_disabled: bool = False


_SELECT = (
    "SELECT r.id, r.token_hash, r.user_id, r.issued_at, r.expires_at, r.revoked_at, u.disabled AS user_disabled "
    "FROM refresh_tokens r JOIN users u ON u.id = r.user_id WHERE r.token_hash = ?"
)


def _insert_row(conn: sqlite_utils.Database, token_hash: str, user_id: int, issued_at: str, expires_at: str) -> None:
    conn.execute(
        "INSERT INTO refresh_tokens (token_hash, user_id, issued_at, expires_at) VALUES (?, ?, ?, ?)",
        [token_hash, user_id, issued_at, expires_at],
    )


async def insert_token(db: Database, *, token_hash: str, user_id: int, issued_at: str, expires_at: str) -> None:
    """Store a new token and drop the user's tokens that expired (the table stays small)."""

    def write(conn: sqlite_utils.Database) -> None:
        conn.execute("DELETE FROM refresh_tokens WHERE user_id = ? AND expires_at <= ?", [user_id, issued_at])
        _insert_row(conn, token_hash, user_id, issued_at, expires_at)

    await db.write(write)


async def rotate_token(
    db: Database, *, old_hash: str, new_hash: str, now: str, expires_at: str
) -> tuple[RotateOutcome, RefreshRecord | None]:
    """Revoke ``old_hash`` and store ``new_hash`` in one transaction, when the old token is still good.

    Presenting a token that was already revoked is treated as theft: every token of that user is revoked.
    """

    def write(conn: sqlite_utils.Database) -> tuple[RotateOutcome, RefreshRecord | None]:
        old = fetch_record(conn.execute(_SELECT, [old_hash]), RefreshRecord)
        if old is None:
            return "unknown", None
        if old.revoked_at is not None:
            _revoke_all(conn, old.user_id, now)
            return "revoked", old
        if old.expires_at <= now:
            return "expired", old
        if old.user_disabled:
            return "disabled", old
        conn.execute("UPDATE refresh_tokens SET revoked_at = ? WHERE id = ?", [now, old.id])
        _insert_row(conn, new_hash, old.user_id, now, expires_at)
        return "ok", old

    return await db.write(write)


def _revoke_all(conn: sqlite_utils.Database, user_id: int, now: str) -> int:
    cursor = conn.execute(
        "UPDATE refresh_tokens SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL", [now, user_id]
    )
    return int(cursor.rowcount)


async def revoke_token(db: Database, token_hash: str, *, now: str) -> RefreshRecord | None:
    """Revoke one token (idempotent); None when no such token exists."""

    def write(conn: sqlite_utils.Database) -> RefreshRecord | None:
        conn.execute(
            "UPDATE refresh_tokens SET revoked_at = ? WHERE token_hash = ? AND revoked_at IS NULL", [now, token_hash]
        )
        return fetch_record(conn.execute(_SELECT, [token_hash]), RefreshRecord)

    return await db.write(write)


async def revoke_user_tokens(db: Database, user_id: int, *, now: str) -> int:
    """Revoke every live token of a user; returns how many."""
    return await db.write(lambda conn: _revoke_all(conn, user_id, now))
