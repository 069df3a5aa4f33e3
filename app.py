"""Hearth's entry point: parse the command line and settings, open storage, build services, serve, shut down."""

from __future__ import annotations

import argparse
import logging
import resource
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

import trio

from core.config import Settings, load_settings
from core.errors import ConfigError, HearthError, StorageError

log = logging.getLogger("hearth")
VERSION = "0.1.0"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hearth", description="Hearth control plane")
    parser.add_argument("--config", help="TOML settings file (also HEARTH_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = _command(sub, "serve", "run the server")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind; 0 picks a free one (default 8080)")
    _add_admin_commands(sub)
    _command(sub, "backup", "copy the database to PATH while the server runs").add_argument("path")
    _command(sub, "restore", "replace the database with the backup at PATH (server must be stopped)").add_argument(
        "path"
    )
    _command(sub, "version", "print the version")
    _add_call_command(sub)
    return parser


def _add_call_command(sub: Any) -> None:
    """`hearth call`: a websocket client of the call API; it needs no data directory (docs/cli_call.md)."""
    call = sub.add_parser("call", help="run a call of WS /api/v1/ws/ on a Hearth server")
    call.add_argument("--url", help="server URL (default http://127.0.0.1:<port>); /api/v1/ws/ added without a path")
    call.add_argument("--token", help="API key or JWT sent as Authorization: Bearer (default: $HEARTH_TOKEN)")
    call.add_argument("--pow", action="store_true", help="offer the pow-1 subprotocol instead of v1")
    call.add_argument("--config", dest="sub_config", help=argparse.SUPPRESS)
    call.add_argument("name", metavar="NAME", help="the call to run")
    call.add_argument("params", metavar="PARAM", nargs=argparse.REMAINDER, help="its params (-- before a -param)")
    call.set_defaults(data_dir=None)


def _command(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    cmd: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
    cmd.add_argument("--data-dir", dest="data_dir", help="data directory (default ./data)")
    cmd.add_argument("--config", dest="sub_config", help=argparse.SUPPRESS)
    return cmd


def _add_admin_commands(sub: Any) -> None:
    users = sub.add_parser("users", help="manage users").add_subparsers(dest="users_command", required=True)
    create = _command(users, "create", "create a user")
    create.add_argument("name")
    create.add_argument("--role", choices=["admin", "member", "viewer"], default="member")
    create.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    _command(users, "list", "list users")
    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(dest="keys_command", required=True)
    kcreate = _command(keys, "create", "create an API key and print it once")
    kcreate.add_argument("--user", required=True)
    kcreate.add_argument("--description", default="")
    kcreate.add_argument("--expires-at", dest="expires_at", help="RFC 3339 expiry time")
    kcreate.add_argument("--role", choices=["admin", "member", "viewer"], help="at most the user's role")
    kcreate.add_argument("--namespace", default="")
    kcreate.add_argument("--team", default="")
    _command(keys, "list", "list API keys (never their secrets)")
    _command(keys, "revoke", "revoke an API key").add_argument("id", type=int)


def settings_from_args(args: argparse.Namespace) -> Settings:
    flags = {
        "host": getattr(args, "host", None),
        "port": getattr(args, "port", None),
        "data_dir": args.data_dir,
    }
    return load_settings(flags, config_file=args.sub_config or args.config)


async def build_services(settings: Settings) -> Any:
    from core.actions import ActionManager
    from core.auth import Authenticator
    from core.bus import Bus
    from core.data_dir import open_database
    from core.metrics import Metrics
    from core.services import Services
    from core.systems import SystemsRegistry

    catalogue = build_call_catalogue(settings)
    db = open_database(settings)
    metrics = Metrics()
    return Services(
        settings=settings,
        db=db,
        auth=Authenticator(db, settings, metrics),
        actions=ActionManager(db, settings, metrics),
        bus=Bus(metrics),
        metrics=metrics,
        calls=catalogue,
        systems=SystemsRegistry(),
    )


def build_call_catalogue(settings: Settings) -> Any:
    """Built-in calls plus the administrator's commands; a command that cannot run stops the start (exit 2)."""
    from core.builtin_calls import register_builtin_calls
    from core.call_catalogue import CallCatalogue, load_commands

    catalogue = CallCatalogue()
    register_builtin_calls(catalogue)
    load_commands(catalogue, settings.calls.commands)
    return catalogue


async def serve(settings: Settings, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
    """Run every service until SIGINT/SIGTERM or cancellation; actions' process groups die with us."""
    from core.data_dir import prepare_data_dir
    from handlers.app import create_app
    from handlers.server import serve_http
    from storage.lock import ServerLock

    lock = ServerLock(prepare_data_dir(settings))
    lock.acquire()
    try:
        svc = await build_services(settings)
    except BaseException:
        lock.release()
        raise
    raise_open_file_limit()
    try:
        await _mark_interrupted_calls(svc)
        first = await svc.auth.ensure_first_admin()
        if first is not None:
            _print_first_credentials(first)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_on_signal, nursery.cancel_scope)
            await nursery.start(svc.actions.serve)
            binds = await nursery.start(serve_http, create_app(svc), settings)
            task_status.started((svc, binds))
    finally:
        svc.db.close()
        lock.release()
        log.info("stopped")


def raise_open_file_limit() -> int:
    """Every websocket, process pipe and database file is a descriptor: lift the soft limit to the hard one
    (an idle call holds 5, an idle exec websocket 6), and return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as e:
            log.warning("cannot raise the open file limit", extra={"soft": soft, "hard": hard, "error": str(e)})
    log.info("open file limit", extra={"nofile": soft})
    return int(soft)


async def _mark_interrupted_calls(svc: Any) -> None:
    """Calls a crash left 'running' in the audit end as failures ('server stopped')."""
    from core.audit import now_utc, rfc3339
    from storage import call_history

    if count := await call_history.mark_interrupted(svc.db, rfc3339(now_utc())):
        log.warning("calls interrupted by the last stop marked as failed", extra={"count": count})


def _print_first_credentials(first: Any) -> None:
    print(
        "\n".join(
            [
                "=" * 64,
                "Hearth: first start, an administrator was created. Shown once; store it now.",
                f"  user:     {first.name}",
                f"  password: {first.password}",
                f"  API key:  {first.api_key}",
                "=" * 64,
            ]
        ),
        flush=True,
    )


async def _cancel_on_signal(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("shutting down", extra={"signal": signal.Signals(signum).name})
            scope.cancel()
            return


def run_command(args: argparse.Namespace) -> int:
    """Dispatch one parsed command; returns the process exit status."""
    if args.command == "version":
        print(VERSION)
        return 0
    settings = settings_from_args(args)
    from core.logging import configure_logging

    configure_logging(settings.log)
    return _COMMANDS[args.command](settings, args)


def _serve_command(settings: Settings, args: argparse.Namespace) -> int:
    trio.run(serve, settings)
    return 0


def _users_command(settings: Settings, args: argparse.Namespace) -> int:
    from handlers import cli_admin

    return cli_admin.users_command(settings, args)


def _keys_command(settings: Settings, args: argparse.Namespace) -> int:
    from handlers import cli_admin

    return cli_admin.keys_command(settings, args)


def _backup_command(settings: Settings, args: argparse.Namespace) -> int:
    from handlers import cli_data

    return cli_data.backup_command(settings, args)


def _restore_command(settings: Settings, args: argparse.Namespace) -> int:
    from handlers import cli_data

    return cli_data.restore_command(settings, args)


def _call_command(settings: Settings, args: argparse.Namespace) -> int:
    from handlers import cli_call

    return cli_call.call_command(settings, args)


_COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], int]] = {
    "serve": _serve_command,
    "users": _users_command,
    "keys": _keys_command,
    "backup": _backup_command,
    "restore": _restore_command,
    "call": _call_command,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run_command(args)
    except ConfigError as e:
        print(f"hearth: {e.detail}", file=sys.stderr)
        return 2
    except (StorageError, HearthError) as e:
        print(f"hearth: {e.detail}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except (OSError, BaseExceptionGroup) as e:  # e.g. the port is taken (raised inside the server's nurseries)
        error = _os_error_in(e)
        if error is None:
            raise
        print(f"hearth: {error.strerror or error}", file=sys.stderr)
        return 1


def _os_error_in(error: BaseException) -> OSError | None:
    """The OSError that ``error`` is or holds (in nested exception groups), else None."""
    if isinstance(error, OSError):
        return error
    if isinstance(error, BaseExceptionGroup):
        found = [_os_error_in(inner) for inner in error.exceptions]
        return next((e for e in found if e is not None), None)
    return None


if __name__ == "__main__":
    sys.exit(main())
