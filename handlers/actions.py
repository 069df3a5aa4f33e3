"""Routes under /api/v1/actions: start a process (admins), list, read, cancel, feed stdin, replay the log."""

from __future__ import annotations

import shlex
from typing import Annotated

import msgspec
import trio
from quart import Blueprint, Response, request

from core import audit
from core.actions import Action, ActionInfo
from core.authz import Resource, allowed, authorize
from core.errors import Conflict
from core.output import iter_log
from core.principals import Principal
from handlers.common import api_route, decode_json, json_response, read_body, require_principal, services
from storage import audit as audit_log

blueprint = Blueprint("actions", __name__, url_prefix="/api/v1/actions")

MAX_ARGS = 1024
MAX_ARG_CHARS = 32 * 1024
MAX_ENV_VARS = 256
MAX_PATH_CHARS = 4096
MAX_TIMEOUT_SECONDS = 7 * 86400.0
STDIN_WRITE_SECONDS = 10.0  # a process that does not read its stdin for this long gets 409

Arg = Annotated[str, msgspec.Meta(max_length=MAX_ARG_CHARS)]
EnvName = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class StartActionRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``argv[0]`` is looked up on PATH; ``env`` is added to the server's environment; ``timeout`` in seconds."""

    argv: Annotated[list[Arg], msgspec.Meta(min_length=1, max_length=MAX_ARGS)]
    cwd: Annotated[str, msgspec.Meta(max_length=MAX_PATH_CHARS)] | None = None
    env: Annotated[dict[EnvName, Arg], msgspec.Meta(max_length=MAX_ENV_VARS)] | None = None
    timeout: Annotated[float, msgspec.Meta(gt=0, le=MAX_TIMEOUT_SECONDS)] | None = None
    name: Annotated[str, msgspec.Meta(max_length=200)] = ""


class ActionList(msgspec.Struct, kw_only=True):
    actions: list[ActionInfo]


def owner_of(principal: Principal) -> str:
    """The owner recorded on actions a principal starts: its user name (authz compares owners to it)."""
    return principal.name or principal.describe()


def check(principal: Principal, verb: str, action: Action | None = None) -> None:
    """``core.authz.authorize`` on an action (its owner decides ``Ownership.OWNER`` rules)."""
    authorize(principal, verb, _resource(action) if action is not None else None)


def _resource(action: Action) -> Resource:
    return Resource(kind="action", owner=action.owner, id=action.id)


async def _find(verb: str, action_id: str) -> tuple[Principal, Action]:
    principal = await require_principal()
    action = services().actions.get(action_id)
    check(principal, verb, action)
    return principal, action


@api_route(
    blueprint,
    "",
    "POST",
    summary="Start a process action",
    request_body=StartActionRequest,
    response=ActionInfo,
    status=201,
    auth="admin",
    errors=(429,),
)
async def start_action() -> Response:
    """Run ``argv`` in its own process group (admins only: it runs as the server's user). A program or ``cwd``
    that cannot be started still answers 201: the action is finished and ``result.error`` says why."""
    principal = await require_principal()
    check(principal, "actions.start")
    check(principal, "system.admin")
    body = await decode_json(StartActionRequest)
    action = await services().actions.start_process(
        body.argv, owner=owner_of(principal), name=body.name, cwd=body.cwd, env=body.env, timeout=body.timeout
    )
    note = audit.entry(principal, "actions.start", resource=f"action:{action.id}", detail=shlex.join(body.argv)[:2000])
    await audit_log.record(services().db, note)
    audit.emit(note)
    return json_response(action.info(), status=201)


@api_route(blueprint, "", "GET", summary="List actions", response=ActionList)
async def list_actions() -> Response:
    """Running actions and recently finished ones: your own; an admin sees every action."""
    principal = await require_principal()
    visible = [a.info() for a in services().actions.list() if allowed(principal, "actions.read", _resource(a))]
    return json_response(ActionList(actions=visible))


@api_route(blueprint, "/<action_id>", "GET", summary="Read an action", response=ActionInfo, errors=(403, 404))
async def get_action(action_id: str) -> Response:
    """State, result (once finished) and output size of one action."""
    _, action = await _find("actions.read", action_id)
    return json_response(action.info())


@api_route(
    blueprint,
    "/<action_id>/cancel",
    "POST",
    summary="Cancel an action",
    response=ActionInfo,
    status=202,
    errors=(403, 404),
)
async def cancel_action(action_id: str) -> Response:
    """SIGTERM to the action's process group, SIGKILL after ``actions.kill_grace_seconds``; answers at once
    (the action may still be ``running``). Cancelling a finished action changes nothing."""
    principal, action = await _find("actions.cancel", action_id)
    action.cancel(f"cancelled by {principal.describe()}")
    audit.emit(audit.entry(principal, "actions.cancel", resource=f"action:{action.id}"))
    return json_response(action.info(), status=202)


@api_route(
    blueprint,
    "/<action_id>/stdin",
    "POST",
    summary="Write to an action's stdin",
    status=204,
    errors=(403, 404, 409, 413),
)
async def write_stdin(action_id: str) -> Response:
    """The raw request body (any content type, at most ``server.max_body_bytes``) is written to the action's
    stdin; ``?close=true`` closes stdin afterwards (an empty body with it just closes). 409 when stdin is
    closed, or when the process does not read it within 10 s (part of the body may then have been written)."""
    _, action = await _find("actions.cancel", action_id)
    data = await read_body()
    try:
        with trio.fail_after(STDIN_WRITE_SECONDS):
            if data:
                await action.send_stdin(data)
            if request.args.get("close", "").lower() in ("1", "true", "yes"):
                await action.close_stdin()
    except trio.ClosedResourceError:
        raise Conflict("stdin is closed") from None
    except trio.BrokenResourceError:
        raise Conflict("the process closed its stdin") from None
    except trio.TooSlowError:
        raise Conflict(f"the process did not read its stdin within {STDIN_WRITE_SECONDS:g} s") from None
    return Response(b"", status=204)  # not Response(status=204): quart would iterate [] through asyncio


@api_route(blueprint, "/<action_id>/log", "GET", summary="Replay an action's output log", errors=(403, 404))
async def read_log(action_id: str) -> Response:
    """The action's stdout and stderr as written so far, interleaved as they arrived, streamed as
    ``application/octet-stream``. The log keeps the first ``actions.log_max_bytes`` and then a note
    saying how much was cut."""
    _, action = await _find("actions.read", action_id)
    return Response(iter_log(action.log_path), content_type="application/octet-stream")
