"""Command-line face for backup and restore. (stub)"""

from __future__ import annotations

import argparse

from core.config import Settings


def backup_command(settings: Settings, args: argparse.Namespace) -> int:
    raise NotImplementedError


def restore_command(settings: Settings, args: argparse.Namespace) -> int:
    raise NotImplementedError
