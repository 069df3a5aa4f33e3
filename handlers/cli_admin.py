"""Command-line face for users and API keys. (stub)"""

from __future__ import annotations

import argparse

from core.config import Settings


def users_command(settings: Settings, args: argparse.Namespace) -> int:
    raise NotImplementedError


def keys_command(settings: Settings, args: argparse.Namespace) -> int:
    raise NotImplementedError
