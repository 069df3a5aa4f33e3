"""Command-line face for ``hearth backup PATH`` and ``hearth restore PATH``."""

from __future__ import annotations

import argparse
from pathlib import Path

from core.config import Settings
from storage.backup import backup_database, restore_database
from storage.database import DB_FILENAME


def backup_command(settings: Settings, args: argparse.Namespace) -> int:
    """Copy the database to PATH; safe while a server runs (it does not take the server lock). Prints the file."""
    written = backup_database(settings.data_path / DB_FILENAME, Path(args.path))
    print(written.resolve(), flush=True)
    return 0


def restore_command(settings: Settings, args: argparse.Namespace) -> int:
    """Replace the database with the backup at PATH; refused while a server runs on the data directory."""
    restored = restore_database(settings.data_path, Path(args.path))
    print(f"restored {Path(args.path).resolve()} into {restored.database.resolve()}", flush=True)
    if restored.previous is not None:
        print(f"previous database kept as {restored.previous.resolve()}", flush=True)
    return 0
