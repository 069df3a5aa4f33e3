"""Distillery JSON routes (specs/calls.md §1): auth, systems, news, calls, calls/history — at /api/v1/<name>
and, the same handler, at /api/v1/http/<name>."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

import msgspec
from quart import Blueprint, Response, request

from core.audit import now_utc, parse_rfc3339, rfc3339
from core.authz import Rule, authorize, register_action
from core.call_catalogue import CallSpec
from core.errors import BadRequest, HearthError, NotFound
from core.principals import ANONYMOUS, CredentialKind, Principal, PrincipalKind
from core.systems import SystemInfo
from handlers.common import (
    Handler,
    api_route,
    credential_from_request,
    decode_json,
    json_response,
    require_principal,
    services,
)
from storage import call_history, news

blueprint = Blueprint("distillery", __name__)
PREFIXES = ("/api/v1", "/api/v1/http")

register_action("news.write", Rule("admin"))
register_action("calls.list", Rule("viewer"))
register_action("calls.history.all", Rule("admin"))
register_action("calls.history.own", Rule("viewer"))


class WhoAmI(msgspec.Struct, kw_only=True):
    user: str | None
    role: str | None
    admin: bool
    via: Literal["session", "jwt", "api_key", "anonymous"]


class NewNews(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    title: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    body: Annotated[str, msgspec.Meta(max_length=100_000)]
    date: str | None = None


class ParamInfo(msgspec.Struct, kw_only=True):
    name: str
    description: str


class CallInfo(msgspec.Struct, kw_only=True):
    name: str
    description: str
    params: list[ParamInfo]
    role: str
    kind: str


def _both(path: str, method: str, **doc: Any) -> Callable[[Handler], Handler]:
    """Register one handler at both Distillery prefixes."""

    def decorate(fn: Handler) -> Handler:
        for prefix in PREFIXES:
            api_route(blueprint, prefix + path, method, **doc)(fn)
        return fn

    return decorate


async def _caller() -> tuple[Principal, str]:
    """The principal and how it authenticated; a credential that does not check out counts as anonymous."""
    credential = credential_from_request()
    if credential is None:
        return ANONYMOUS, "anonymous"
    try:
        principal = await services().auth.authenticate(credential)
    except HearthError:
        return ANONYMOUS, "anonymous"
    if principal.kind is PrincipalKind.API_KEY:
        return principal, "api_key"
    return principal, "session" if credential.kind in (CredentialKind.COOKIE, CredentialKind.BASIC) else "jwt"


@_both("/auth", "GET", summary="Who the request is authenticated as", response=WhoAmI, auth="optional")
async def who_am_i() -> Response:
    """Never 401: anonymous callers (and credentials that do not check out) get nulls and ``via: anonymous``."""
    principal, via = await _caller()
    if not principal.is_authenticated:
        return json_response(WhoAmI(user=None, role=None, admin=False, via="anonymous"))
    body = WhoAmI(user=principal.name, role=principal.role, admin=principal.role == "admin", via=via)  # type: ignore[arg-type]
    return json_response(body)


@_both("/systems", "GET", summary="Every system the caller may see", response=list[SystemInfo], auth="optional")
async def systems() -> Response:
    """Workspaces, managed servers and cluster nodes, each filtered by what the caller may see."""
    principal, _ = await _caller()
    return json_response(await services().systems.visible_to(principal))


@_both("/news", "GET", summary="News items, newest first", response=list[news.NewsItem], auth="optional", errors=(400,))
async def list_news() -> Response:
    """``?limit=`` from 1 to 100, default 20."""
    limit = _int_arg("limit", default=20, low=1, high=100)
    return json_response(await news.newest(services().db, limit))


@_both(
    "/news", "POST", summary="Post a news item", request_body=NewNews, response=news.NewsItem, status=201, auth="admin"
)
async def post_news() -> Response:
    """``date`` is RFC 3339 and defaults to now; ``body`` is Markdown."""
    principal = await _require()
    authorize(principal, "news.write")
    item = await decode_json(NewNews)
    date = rfc3339(parse_rfc3339(item.date, setting="date")) if item.date else rfc3339(now_utc())
    added = await news.add(services().db, title=item.title, body=item.body, date=date, author=principal.name)
    return json_response(added, 201)


@_both("/news/<int:news_id>", "DELETE", summary="Delete a news item", status=204, auth="admin", errors=(404,))
async def delete_news(news_id: int) -> Response:
    authorize(await _require(), "news.write")
    if not await news.delete(services().db, news_id):
        raise NotFound(f"news item {news_id} does not exist")
    return Response(b"", status=204)


@_both("/calls", "GET", summary="The calls the caller may run", response=list[CallInfo], auth="user")
async def list_calls() -> Response:
    """The catalogue of ``WS /api/v1/ws/``, filtered to what the caller may run."""
    principal = await _require()
    authorize(principal, "calls.list")
    visible = services().calls.visible_to(principal)
    return json_response([_call_info(c) for c in visible])


@_both(
    "/calls/history",
    "GET",
    summary="The audit of past calls, newest first",
    response=list[call_history.CallRecord],
    auth="user",
    errors=(400,),
)
async def history() -> Response:
    """Admins see every call, others their own. ``?limit=`` (1-500, default 50) and ``?before=ID`` to page;
    secret params appear as ``***``."""
    principal = await _require()
    everyone = principal.has_role("admin")
    authorize(principal, "calls.history.all" if everyone else "calls.history.own")
    limit = _int_arg("limit", default=50, low=1, high=500)
    before = _optional_int_arg("before", low=1, high=2**62)
    user = None if everyone or not principal.name else principal.name
    own = None if everyone or principal.name else principal.describe()  # a key with no user sees its own calls
    rows = await call_history.page(services().db, user=user, principal=own, before_id=before, limit=limit)
    return json_response(rows)


def _call_info(spec: CallSpec) -> CallInfo:
    params = [ParamInfo(name=p.name, description=p.description) for p in spec.params]
    return CallInfo(name=spec.name, description=spec.description, params=params, role=spec.role, kind=spec.kind)


async def _require() -> Principal:
    return await require_principal()


def _int_arg(name: str, *, default: int, low: int, high: int) -> int:
    value = _optional_int_arg(name, low=low, high=high)
    return default if value is None else value


def _optional_int_arg(name: str, *, low: int, high: int) -> int | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer") from None
    if not low <= value <= high:
        raise BadRequest(f"{name} must be between {low} and {high}")
    return value
