"""The data directory: created with mode 0700 and checked writable; the database opened inside it."""

from __future__ import annotations

import os
from pathlib import Path

from core.config import Settings
from core.errors import ConfigError
from storage.database import DB_FILENAME, Database


def prepare_data_dir(settings: Settings) -> Path:
    """Create the data directory (mode 0700) and check that we can write to it."""
    path = settings.data_path
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError("data_dir", f"cannot create {path}: {e.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError("data_dir", f"{path} is not writable")
    return path


def open_database(settings: Settings) -> Database:
    """The database of ``settings``' data directory, with its storage settings."""
    return Database(
        prepare_data_dir(settings) / DB_FILENAME,
        readers=settings.storage.reader_connections,
        synchronous=settings.storage.synchronous,
        busy_timeout_ms=settings.storage.busy_timeout_ms,
    )
