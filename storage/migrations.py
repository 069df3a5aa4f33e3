"""Numbered schema migrations, applied in order at start; PRAGMA user_version records the last one applied."""

from __future__ import annotations

from collections.abc import Callable

import sqlite_utils

Migration = Callable[[sqlite_utils.Database], None]


def _m001_principals(db: sqlite_utils.Database) -> None:
    db.execute(
        """CREATE TABLE users (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            role TEXT NOT NULL CHECK (role IN ('admin', 'member', 'viewer')),
            password_hash TEXT NOT NULL,
            disabled INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL
        )"""
    )
    db.execute(
        """CREATE TABLE api_keys (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            hash_prefix TEXT NOT NULL UNIQUE,
            token_hash TEXT NOT NULL,
            namespace TEXT NOT NULL DEFAULT '',
            user_name TEXT NOT NULL DEFAULT '',
            team TEXT NOT NULL DEFAULT '',
            role TEXT NOT NULL,
            quota_url TEXT NOT NULL DEFAULT '',
            description TEXT NOT NULL DEFAULT '',
            issued_at TEXT NOT NULL,
            expires_at TEXT,
            revoked_at TEXT,
            source TEXT NOT NULL DEFAULT 'local'
        )"""
    )
    db.execute(
        """CREATE TABLE refresh_tokens (
            id INTEGER PRIMARY KEY,
            token_hash TEXT NOT NULL UNIQUE,
            user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            issued_at TEXT NOT NULL,
            expires_at TEXT NOT NULL,
            revoked_at TEXT
        )"""
    )
    db.execute("CREATE INDEX api_keys_user ON api_keys(user_name)")
    db.execute("CREATE INDEX refresh_tokens_user ON refresh_tokens(user_id)")


def _m002_process_groups(db: sqlite_utils.Database) -> None:
    db.execute(
        """CREATE TABLE process_groups (
            pgid INTEGER PRIMARY KEY,
            action_id TEXT NOT NULL,
            argv TEXT NOT NULL,
            started_at TEXT NOT NULL,
            boot_id TEXT NOT NULL
        )"""
    )


def _m003_audit(db: sqlite_utils.Database) -> None:
    db.execute(
        """CREATE TABLE audit_log (
            id INTEGER PRIMARY KEY,
            at TEXT NOT NULL,
            principal TEXT NOT NULL,
            action TEXT NOT NULL,
            resource TEXT NOT NULL DEFAULT '',
            outcome TEXT NOT NULL DEFAULT '',
            detail TEXT NOT NULL DEFAULT ''
        )"""
    )
    db.execute("CREATE INDEX audit_log_at ON audit_log(at)")


def _m004_process_group_start_ticks(db: sqlite_utils.Database) -> None:
    """The leader's start time (clock ticks since boot), so a restart never kills a recycled pgid."""
    db.execute("ALTER TABLE process_groups ADD COLUMN start_ticks INTEGER NOT NULL DEFAULT 0")


def _m005_distillery(db: sqlite_utils.Database) -> None:
    db.execute(
        """CREATE TABLE news (
            id INTEGER PRIMARY KEY,
            title TEXT NOT NULL,
            body TEXT NOT NULL,
            date TEXT NOT NULL,
            author TEXT NOT NULL DEFAULT ''
        )"""
    )
    db.execute("CREATE INDEX news_date ON news(date)")
    db.execute(
        """CREATE TABLE call_history (
            id INTEGER PRIMARY KEY,
            principal TEXT NOT NULL,
            user_name TEXT NOT NULL DEFAULT '',
            call TEXT NOT NULL,
            params TEXT NOT NULL,
            started_at TEXT NOT NULL,
            ended_at TEXT,
            outcome TEXT NOT NULL DEFAULT 'running',
            message TEXT NOT NULL DEFAULT '',
            bytes_in INTEGER NOT NULL DEFAULT 0,
            bytes_out INTEGER NOT NULL DEFAULT 0
        )"""
    )
    db.execute("CREATE INDEX call_history_user ON call_history(user_name, id)")


MIGRATIONS: list[Migration] = [
    _m001_principals,
    _m002_process_groups,
    _m003_audit,
    _m004_process_group_start_ticks,
    _m005_distillery,
]


def apply_migrations(db: sqlite_utils.Database) -> int:
    """Apply every migration newer than the file's user_version, each in its own transaction. The version is
    read inside that transaction (BEGIN IMMEDIATE holds the write lock), so two processes opening a fresh file
    at once (a server and a ``hearth users`` command) never run the same migration twice."""
    for number, migration in enumerate(MIGRATIONS, start=1):
        db.conn.execute("BEGIN IMMEDIATE")
        try:
            if db.execute("PRAGMA user_version").fetchone()[0] >= number:
                db.conn.execute("ROLLBACK")
                continue
            migration(db)
            db.conn.execute(f"PRAGMA user_version = {number}")
        except BaseException:
            db.conn.execute("ROLLBACK")
            raise
        db.conn.execute("COMMIT")
    return len(MIGRATIONS)
