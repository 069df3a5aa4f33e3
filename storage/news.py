"""Typed queries on the news table (Distillery ``/api/v1/news``)."""

from __future__ import annotations

import sqlite3

import msgspec
import sqlite_utils

from storage.database import Database


class NewsItem(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    title: str
    date: str
    body: str


def _rows(cursor: sqlite3.Cursor) -> list[NewsItem]:
    rows = cursor.fetchall()
    return [NewsItem(id=r[0], title=r[1], date=r[2], body=r[3]) for r in rows]


async def newest(db: Database, limit: int) -> list[NewsItem]:
    """Newest first (by date, then id)."""

    def query(conn: sqlite_utils.Database) -> list[NewsItem]:
        sql = "SELECT id, title, date, body FROM news ORDER BY date DESC, id DESC LIMIT ?"
        return _rows(conn.execute(sql, [limit]))

    return await db.read(query)


async def add(db: Database, *, title: str, body: str, date: str, author: str) -> NewsItem:
    def insert(conn: sqlite_utils.Database) -> NewsItem:
        cursor = conn.execute(
            "INSERT INTO news (title, body, date, author) VALUES (?, ?, ?, ?)", [title, body, date, author]
        )
        return NewsItem(id=int(cursor.lastrowid or 0), title=title, date=date, body=body)

    return await db.write(insert)


async def delete(db: Database, news_id: int) -> bool:
    """True when an item was removed."""
    return await db.write(lambda conn: conn.execute("DELETE FROM news WHERE id = ?", [news_id]).rowcount > 0)
