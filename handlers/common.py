"""What every REST route shares: the services, JSON in and out, credentials from a request, and routing."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from quart import Blueprint, Response, current_app, request

from core.errors import BadRequest, InvalidInput, PayloadTooLarge, Unauthenticated
from core.principals import ANONYMOUS, Credential, CredentialKind, Principal
from core.services import Services
from handlers.openapi import RouteDoc, register_route_doc
from handlers.origin import SAFE_METHODS, check_origin

T = TypeVar("T")
ACCESS_COOKIE = "hearth_access"
_ENCODER = msgspec.json.Encoder()


def services() -> Services:
    """The Services of the running app."""
    svc: Services = current_app.config["HEARTH_SERVICES"]
    return svc


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """Encode ``body`` (Structs, dicts, lists) with msgspec."""
    return Response(_ENCODER.encode(body), status=status, headers=headers, content_type="application/json")


def error_response(status: int, detail: str) -> Response:
    return json_response({"detail": detail}, status)


async def read_body(max_bytes: int | None = None) -> bytes:
    """The request body, refused with 413 past the configured limit (checked before and while reading)."""
    limit = max_bytes or services().settings.server.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body is larger than {limit} bytes")
    request.body_timeout = 30
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.body:
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def decode_json(kind: type[T]) -> T:
    """Decode the JSON body into ``kind``: 400 when it is not JSON, 422 when the values are wrong."""
    body = await read_body()
    if not body:
        raise BadRequest("request body is empty; expected JSON")
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as e:
        raise InvalidInput(str(e)) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as e:  # msgspec raises the latter for bad UTF-8 in strings
        raise BadRequest(f"malformed JSON: {e}") from None
    except RecursionError:
        raise BadRequest("malformed JSON: nested too deep") from None


async def decode_form_or_json(kind: type[T]) -> T:
    """Like ``decode_json``, but also accepts ``application/x-www-form-urlencoded`` bodies."""
    if request.mimetype != "application/x-www-form-urlencoded":
        return await decode_json(kind)
    body = await read_body()
    from urllib.parse import parse_qsl

    try:
        fields = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False))
    except UnicodeDecodeError:
        raise BadRequest("form body is not UTF-8") from None
    try:
        return msgspec.convert(fields, kind, strict=False)
    except msgspec.ValidationError as e:
        raise InvalidInput(str(e)) from None


def credential_from_request() -> Credential | None:
    """The first credential the request carries: Authorization header, then X-API-Key, then the cookie."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return Credential(CredentialKind.BEARER, value.strip())
    if scheme.lower() == "basic" and value.strip():
        return Credential(CredentialKind.BASIC, _decode_basic(value.strip()))
    if key := request.headers.get("X-API-Key", "").strip():
        return Credential(CredentialKind.API_KEY, key)
    if cookie := request.cookies.get(ACCESS_COOKIE, ""):
        return Credential(CredentialKind.COOKIE, cookie)
    return None


def _decode_basic(value: str) -> str:
    try:
        return base64.b64decode(value, validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        raise Unauthenticated("malformed basic credentials") from None


async def current_principal() -> Principal:
    """The caller, or ANONYMOUS when the request carries no credential; a bad credential is 401. A cookie on a
    request that changes something needs this server's own Origin (or an allowed one): 403 otherwise."""
    credential = credential_from_request()
    if credential is None:
        return ANONYMOUS
    if credential.kind is CredentialKind.COOKIE and request.method not in SAFE_METHODS:  # no cross-site forgery
        check_origin(services().settings.auth.allowed_origins, request.headers.get("Origin"), request.host)
    return await services().auth.authenticate(credential)


async def require_principal() -> Principal:
    """The caller; 401 when anonymous."""
    principal = await current_principal()
    if not principal.is_authenticated:
        raise Unauthenticated("authentication required")
    return principal


Handler = Callable[..., Awaitable[Any]]


def api_route(
    bp: Blueprint,
    path: str,
    method: str,
    *,
    summary: str,
    request_body: type | None = None,
    response: type | None = None,
    status: int = 200,
    auth: str = "user",
    errors: tuple[int, ...] = (),
    form: bool = False,
) -> Callable[[Handler], Handler]:
    """Register a REST route on ``bp`` and describe it in /openapi.json in the same stroke.

    ``auth`` is ``none`` (public), ``optional``, ``user`` (any authenticated principal) or ``admin``; it is
    documentation only: the handler itself calls ``require_principal`` and ``authorize``.
    """

    def decorate(fn: Handler) -> Handler:
        bp.add_url_rule(path, view_func=fn, methods=[method], endpoint=f"{method.lower()}_{fn.__name__}")
        prefix = bp.url_prefix or ""
        register_route_doc(
            RouteDoc(
                path=prefix + path,
                method=method.lower(),
                summary=summary,
                description=fn.__doc__ or "",
                request_body=request_body,
                response=response,
                status=status,
                auth=auth,
                errors=errors,
                form=form,
                tag=bp.name,
            )
        )
        return fn

    return decorate
