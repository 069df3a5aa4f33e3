"""Command-line face for users and API keys: ``hearth users create|list`` and ``hearth keys create|list|revoke``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable, Sequence

import trio

from core.api_keys import NewKey
from core.auth import LOCAL_ADMIN, Authenticator
from core.config import Settings
from core.data_dir import open_database
from core.errors import BadRequest, ConfigError, HearthError, InvalidInput
from core.metrics import Metrics
from core.passwords import generate_password

Command = Callable[[Authenticator, argparse.Namespace], Awaitable[None]]
PAGE = 1000


def users_command(settings: Settings, args: argparse.Namespace) -> int:
    if args.users_command == "create" and args.password_stdin:
        try:
            args.password = sys.stdin.buffer.readline().decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            return _fail("the password on standard input is not UTF-8", 2)
        if not args.password:
            return _fail("no password on standard input", 2)
    return _run(settings, _USERS[args.users_command], args)


def keys_command(settings: Settings, args: argparse.Namespace) -> int:
    return _run(settings, _KEYS[args.keys_command], args)


def _run(settings: Settings, command: Command, args: argparse.Namespace) -> int:
    """Open the database, run ``command`` under trio, and turn errors into one line: bad input 2, others 1."""
    try:
        db = open_database(settings)
        try:
            trio.run(command, Authenticator(db, settings, Metrics()), args)
        finally:
            db.close()
    except (InvalidInput, BadRequest, ConfigError) as e:
        return _fail(e.detail, 2)
    except HearthError as e:
        return _fail(e.detail, 1)
    return 0


def _fail(message: str, status: int) -> int:
    print(f"hearth: {message}", file=sys.stderr)
    return status


async def _users_create(auth: Authenticator, args: argparse.Namespace) -> None:
    password = args.password if args.password_stdin else generate_password()
    user = await auth.create_user(LOCAL_ADMIN, args.name, password, args.role)
    if args.password_stdin:
        print(f"created user {user.name} ({user.role}), id {user.id}")
        return
    print(f"created user {user.name} ({user.role}), id {user.id}; its password follows on stdout", file=sys.stderr)
    print(password)


async def _users_list(auth: Authenticator, args: argparse.Namespace) -> None:
    rows: list[Sequence[object]] = []
    after = 0
    while batch := await auth.list_users(LOCAL_ADMIN, after_id=after, limit=PAGE):
        rows.extend((u.id, u.name, u.role, "yes" if u.disabled else "no", u.created_at) for u in batch)
        after = batch[-1].id
    _print_table(("ID", "NAME", "ROLE", "DISABLED", "CREATED"), rows)


async def _keys_create(auth: Authenticator, args: argparse.Namespace) -> None:
    new = NewKey(
        user=args.user,
        role=args.role,
        namespace=args.namespace,
        team=args.team,
        description=args.description,
        expires_at=args.expires_at,
    )
    created = await auth.keys.create(LOCAL_ADMIN, new)
    print(created.raw)


async def _keys_list(auth: Authenticator, args: argparse.Namespace) -> None:
    rows: list[Sequence[object]] = []
    after = 0
    while batch := await auth.keys.list(LOCAL_ADMIN, after_id=after, limit=PAGE):
        rows.extend(
            (
                k.id,
                k.name,
                k.user_name,
                k.role,
                k.namespace,
                k.team,
                k.expires_at or "-",
                k.revoked_at or "-",
                k.description,
            )
            for k in batch
        )
        after = batch[-1].id
    _print_table(("ID", "NAME", "USER", "ROLE", "NAMESPACE", "TEAM", "EXPIRES", "REVOKED", "DESCRIPTION"), rows)


async def _keys_revoke(auth: Authenticator, args: argparse.Namespace) -> None:
    key = await auth.keys.revoke(LOCAL_ADMIN, args.id)
    print(f"revoked key {key.id} ({key.name})")


def _print_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(c) for c in header], *([str(c) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


_USERS: dict[str, Command] = {"create": _users_create, "list": _users_list}
_KEYS: dict[str, Command] = {"create": _keys_create, "list": _keys_list, "revoke": _keys_revoke}
