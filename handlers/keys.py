"""Routes under /api/v1/keys: create (shown once), list, read and revoke API keys; never their secrets."""

from __future__ import annotations

from typing import Annotated

import msgspec
from quart import Blueprint, Response, request

from core.api_keys import FIELD_LIMITS, NewKey
from core.errors import InvalidInput
from core.principals import Role
from handlers.common import api_route, decode_json, json_response, require_principal, services
from storage.api_keys import KeyRecord

blueprint = Blueprint("keys", __name__, url_prefix="/api/v1/keys")
MAX_PAGE = 1000


class KeyCreateRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    user: Annotated[str, msgspec.Meta(max_length=FIELD_LIMITS["user"])] = ""
    role: Role | None = None
    namespace: Annotated[str, msgspec.Meta(max_length=FIELD_LIMITS["namespace"])] = ""
    team: Annotated[str, msgspec.Meta(max_length=FIELD_LIMITS["team"])] = ""
    description: Annotated[str, msgspec.Meta(max_length=FIELD_LIMITS["description"])] = ""
    expires_at: Annotated[str, msgspec.Meta(max_length=FIELD_LIMITS["expires_at"])] | None = None
    quota_url: Annotated[str, msgspec.Meta(max_length=FIELD_LIMITS["quota_url"])] = ""


class KeyInfo(msgspec.Struct, kw_only=True):
    """A key as listed: everything but the secret and its full hash."""

    id: int
    name: str
    hash_prefix: str
    user: str
    role: str
    namespace: str
    team: str
    description: str
    quota_url: str
    issued_at: str
    expires_at: str | None
    revoked_at: str | None
    source: str


class KeyCreated(KeyInfo, kw_only=True):
    """A new key; ``key`` is the secret, shown in this response only."""

    key: str


class KeyList(msgspec.Struct, kw_only=True):
    keys: list[KeyInfo]


def _info_fields(k: KeyRecord) -> dict[str, object]:
    return {
        "id": k.id,
        "name": k.name,
        "hash_prefix": k.hash_prefix,
        "user": k.user_name,
        "role": k.role,
        "namespace": k.namespace,
        "team": k.team,
        "description": k.description,
        "quota_url": k.quota_url,
        "issued_at": k.issued_at,
        "expires_at": k.expires_at,
        "revoked_at": k.revoked_at,
        "source": k.source,
    }


def key_info(k: KeyRecord) -> KeyInfo:
    return msgspec.convert(_info_fields(k), KeyInfo)


@api_route(
    blueprint,
    "",
    "POST",
    summary="Create an API key",
    request_body=KeyCreateRequest,
    response=KeyCreated,
    status=201,
    errors=(403, 404, 409),
)
async def create_key() -> Response:
    """Members create keys for themselves, admins for anyone (``user``). The key's ``role`` defaults to, and may
    not exceed, the lower of its user's role and the caller's. The secret ``key`` is returned once."""
    principal = await require_principal()
    body = await decode_json(KeyCreateRequest)
    created = await services().auth.keys.create(principal, NewKey(**msgspec.structs.asdict(body)))
    out = msgspec.convert({**_info_fields(created.record), "key": created.raw}, KeyCreated)
    return json_response(out, status=201)


@api_route(blueprint, "", "GET", summary="List API keys", response=KeyList, errors=(403,))
async def list_keys() -> Response:
    """Your keys; an admin sees every key (or one user's with ``?user=``). Page with ``?after_id=`` and
    ``?limit=`` (at most 1000)."""
    principal = await require_principal()
    user = request.args.get("user") or None
    after_id, limit = _int_arg("after_id", 0, 0), _int_arg("limit", MAX_PAGE, 1)
    keys = await services().auth.keys.list(principal, user=user, after_id=after_id, limit=min(limit, MAX_PAGE))
    return json_response(KeyList(keys=[key_info(k) for k in keys]))


def _int_arg(name: str, default: int, minimum: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 9 or int(raw) < minimum:  # isdigit alone takes '²'
        raise InvalidInput(f"{name} must be an integer of at least {minimum}")
    return int(raw)


@api_route(blueprint, "/<int:key_id>", "GET", summary="Read an API key", response=KeyInfo, errors=(403, 404))
async def get_key(key_id: int) -> Response:
    """One key, without its secret; yours, or any key for an admin."""
    principal = await require_principal()
    return json_response(key_info(await services().auth.keys.get(principal, key_id)))


@api_route(blueprint, "/<int:key_id>", "DELETE", summary="Revoke an API key", response=KeyInfo, errors=(403, 404))
async def revoke_key(key_id: int) -> Response:
    """Revokes the key at once (idempotent); it then fails with 401 "API key revoked"."""
    principal = await require_principal()
    return json_response(key_info(await services().auth.keys.revoke(principal, key_id)))
