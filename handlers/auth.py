"""Routes under /api/v1/auth: register, login (JSON or form), refresh, logout, me."""

from __future__ import annotations

from typing import Annotated

import msgspec
from quart import Blueprint, Response, request

from core.auth import TokenPair
from core.errors import TooManyAttempts
from core.passwords import PASSWORD_MAX, PASSWORD_MIN, USERNAME_MAX, USERNAME_PATTERN
from core.principals import Principal, Role
from handlers.common import (
    ACCESS_COOKIE,
    api_route,
    current_principal,
    decode_form_or_json,
    json_response,
    require_principal,
    services,
)

blueprint = Blueprint("auth", __name__, url_prefix="/api/v1/auth")

Username = Annotated[str, msgspec.Meta(min_length=1, max_length=USERNAME_MAX, pattern=USERNAME_PATTERN)]
NewPassword = Annotated[str, msgspec.Meta(min_length=PASSWORD_MIN, max_length=PASSWORD_MAX)]


class LoginRequest(msgspec.Struct, kw_only=True):
    username: Annotated[str, msgspec.Meta(min_length=1, max_length=USERNAME_MAX)]
    password: Annotated[str, msgspec.Meta(max_length=PASSWORD_MAX)]


class RefreshRequest(msgspec.Struct, kw_only=True):
    refresh_token: Annotated[str, msgspec.Meta(min_length=1, max_length=512)]


class LogoutRequest(msgspec.Struct, kw_only=True):
    refresh_token: Annotated[str, msgspec.Meta(max_length=512)] = ""
    all: bool = False


class RegisterRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    username: Username
    password: NewPassword
    role: Role = "member"


class UserInfo(msgspec.Struct, kw_only=True):
    id: int
    username: str
    role: str
    disabled: bool
    created_at: str


class Me(msgspec.Struct, kw_only=True):
    kind: str
    name: str
    role: str
    user_id: int | None
    key_id: int | None
    namespace: str
    team: str


def _with_cookie(pair: TokenPair) -> Response:
    response = json_response(pair)
    response.set_cookie(
        ACCESS_COOKIE,
        pair.access_token,
        max_age=pair.expires_in,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=services().settings.auth.cookie_secure,
    )
    return response


@api_route(
    blueprint,
    "/login",
    "POST",
    summary="Log in with a user name and password",
    request_body=LoginRequest,
    response=TokenPair,
    auth="none",
    errors=(401, 429),
    form=True,
)
async def login() -> Response:
    """Returns an access token (also set as the HttpOnly ``hearth_access`` cookie) and a refresh token.
    Failed logins are throttled per user name: past the limit the answer is 429 with ``Retry-After``."""
    body = await decode_form_or_json(LoginRequest)
    try:
        pair = await services().auth.login(body.username, body.password, remote=request.remote_addr or "")
    except TooManyAttempts as e:
        return json_response({"detail": e.detail}, e.status, headers={"Retry-After": str(e.retry_after)})
    return _with_cookie(pair)


@api_route(
    blueprint,
    "/refresh",
    "POST",
    summary="Exchange a refresh token for a new token pair",
    request_body=RefreshRequest,
    response=TokenPair,
    auth="none",
    errors=(401,),
    form=True,
)
async def refresh() -> Response:
    """The presented refresh token is revoked and replaced (rotation); presenting it again is 401."""
    body = await decode_form_or_json(RefreshRequest)
    return _with_cookie(await services().auth.refresh(body.refresh_token))


@api_route(
    blueprint,
    "/logout",
    "POST",
    summary="Revoke a refresh token and clear the access cookie",
    request_body=LogoutRequest,
    status=204,
    auth="optional",
    errors=(401,),
    form=True,
)
async def logout() -> Response:
    """Revokes ``refresh_token`` when given; ``all: true`` revokes every refresh token of the caller's user.
    The access token itself stays valid until it expires (at most ``auth.access_token_ttl_seconds``)."""
    body = await _logout_body()
    auth = services().auth
    if body.all:
        await auth.logout_everywhere(await require_principal())
    if body.refresh_token:
        await auth.logout(body.refresh_token)
    response = Response("", status=204)
    response.delete_cookie(ACCESS_COOKIE, path="/", httponly=True, samesite="Strict")
    return response


async def _logout_body() -> LogoutRequest:
    """An empty body is allowed here (it only clears the cookie)."""
    if request.content_length == 0 or (request.content_length is None and not request.headers.get("Transfer-Encoding")):
        return LogoutRequest()
    return await decode_form_or_json(LogoutRequest)


@api_route(blueprint, "/me", "GET", summary="Who am I", response=Me)
async def me() -> Response:
    """The authenticated principal: a user (password, access token) or an API key and its user."""
    return json_response(_me(await require_principal()))


def _me(p: Principal) -> Me:
    return Me(
        kind=p.kind.value,
        name=p.name,
        role=p.role,
        user_id=p.user_id,
        key_id=p.key_id,
        namespace=p.namespace,
        team=p.team,
    )


@api_route(
    blueprint,
    "/register",
    "POST",
    summary="Create a user",
    request_body=RegisterRequest,
    response=UserInfo,
    status=201,
    auth="optional",
    errors=(401, 403, 409),
    form=True,
)
async def register() -> Response:
    """Admins only, unless ``auth.open_registration`` is set: then anyone may create a ``member`` or ``viewer``;
    only an admin may create an ``admin``."""
    principal = await current_principal()
    body = await decode_form_or_json(RegisterRequest)
    user = await services().auth.register(principal, body.username, body.password, body.role)
    info = UserInfo(id=user.id, username=user.name, role=user.role, disabled=user.disabled, created_at=user.created_at)
    return json_response(info, status=201)
