"""API keys: ``hearth_`` + 64 hex, stored as SHA-256 hex with a 16-character lookup prefix (sync spec §3)."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets

import msgspec

from core import audit
from core.authz import Resource, allowed, authorize
from core.config import Settings
from core.errors import InvalidInput, NotFound, Unauthenticated
from core.principals import ROLE_RANK, Principal, PrincipalKind, Role
from storage import api_keys as key_store
from storage import users as user_store
from storage.api_keys import KeyRecord
from storage.database import Database

log = logging.getLogger("hearth.auth")

KEY_PREFIX = "hearth_"
FOREIGN_PREFIXES = ("agbx_",)  # keys minted by an agent-sandbox manager hash the same way
KEY_PREFIXES = (KEY_PREFIX, *FOREIGN_PREFIXES)
MAX_KEY_LENGTH = 512
PREFIX_CHARS = 16
FIELD_LIMITS = {"user": 64, "namespace": 253, "team": 128, "description": 1024, "expires_at": 64, "quota_url": 2048}
_ROLE_ALIASES: dict[str, Role] = {"admin": "admin", "member": "member", "viewer": "viewer", "tenant": "member"}


def generate_raw_key() -> str:
    return KEY_PREFIX + secrets.token_bytes(32).hex()


def token_hash(raw: str) -> str:
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def hash_prefix(hashed: str) -> str:
    return hashed[:PREFIX_CHARS]


def key_name(prefix: str) -> str:
    return f"hearth-apikey-{prefix}"


def looks_like_api_key(value: str) -> bool:
    return value.startswith(KEY_PREFIXES)


def effective_role(stored: str) -> Role:
    """Hearth's role for a stored key role: ``tenant`` (synced) is member; an unknown role grants only viewer."""
    role = _ROLE_ALIASES.get(stored)
    if role is None:
        log.warning("API key with unknown role treated as viewer", extra={"key_role": stored})
        return "viewer"
    return role


def lower_role(a: Role, b: Role) -> Role:
    return a if ROLE_RANK[a] <= ROLE_RANK[b] else b


class NewKey(msgspec.Struct, frozen=True, kw_only=True):
    """What a caller asks for; ``user`` defaults to the caller, ``role`` to the highest the key may have."""

    user: str = ""
    role: Role | None = None
    namespace: str = ""
    team: str = ""
    description: str = ""
    expires_at: str | None = None
    quota_url: str = ""

    def __post_init__(self) -> None:
        for name, limit in FIELD_LIMITS.items():
            if len(getattr(self, name) or "") > limit:
                raise InvalidInput(f"{name} is longer than {limit} characters")


class CreatedKey(msgspec.Struct, frozen=True):
    """A new key: ``raw`` is shown to the caller once and never stored."""

    raw: str
    record: KeyRecord


class ApiKeyManager:
    """Creates, lists, revokes and validates keys; every operation is authorized here, for every face."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self._db = db
        self._max_per_user = settings.auth.max_keys_per_user

    async def create(self, principal: Principal, new: NewKey) -> CreatedKey:
        target = new.user or principal.name
        if not target:
            raise InvalidInput("user is required")
        authorize(principal, "keys.create", Resource("user", owner=target))
        user = await self._enabled_user(target)
        role = _granted_role(new.role, lower_role(effective_role(user.role), principal.role), target)
        raw = generate_raw_key()
        record = build_record(raw, new, role, user.name)
        note = audit.entry(principal, "keys.create", detail=f"user={user.name} role={role}")
        stored = await key_store.insert_key(
            self._db, record, now=record.issued_at, max_per_user=self._max_per_user, audit=note
        )
        audit.emit(msgspec.structs.replace(note, resource=f"api_key:{stored.id}"))
        return CreatedKey(raw, stored)

    async def _enabled_user(self, name: str) -> user_store.UserRecord:
        user = await user_store.get_user_by_name(self._db, name)
        if user is None:
            raise NotFound(f"no such user {name}")
        if user.disabled:
            raise InvalidInput(f"user {name} is disabled")
        return user

    async def import_key(self, principal: Principal, record: KeyRecord) -> KeyRecord:
        """Store a key made elsewhere from its hash (promote/import); idempotent on the prefix."""
        authorize(principal, "system.admin")
        if hash_prefix(record.token_hash) != record.hash_prefix or len(record.token_hash) != 64:
            raise InvalidInput("hash_prefix must be the first 16 characters of the 64-character token_hash")
        if record.expires_at is not None:
            record = msgspec.structs.replace(record, expires_at=audit.rfc3339(audit.parse_rfc3339(record.expires_at)))
        note = audit.entry(principal, "keys.import", detail=f"name={record.name} source={record.source}")
        stored = await key_store.import_key(self._db, record, audit=note)
        audit.emit(msgspec.structs.replace(note, resource=f"api_key:{stored.id}"))
        return stored

    async def list(
        self, principal: Principal, *, user: str | None = None, after_id: int = 0, limit: int = 1000
    ) -> list[KeyRecord]:
        """The caller's keys; an admin sees everyone's unless ``user`` narrows it."""
        if user is None and principal.role != "admin":
            user = principal.name
        authorize(principal, "keys.read", Resource("user", owner=user or ""))
        return await key_store.list_keys(self._db, user_name=user, after_id=after_id, limit=limit)

    async def get(self, principal: Principal, key_id: int) -> KeyRecord:
        """The key, if the caller may read it; another user's key is "not found" as a missing one is, so key ids
        cannot be probed (an anonymous caller still gets 401)."""
        key = await key_store.get_key(self._db, key_id)
        resource = Resource("api_key", owner=key.user_name if key is not None else "", id=str(key_id))
        if key is None or not allowed(principal, "keys.read", resource):
            authorize(principal, "keys.read", Resource("api_key", owner=principal.name))  # 401/403 as for one's own
            raise NotFound(f"no API key {key_id}")
        return key

    async def revoke(self, principal: Principal, key_id: int) -> KeyRecord:
        key = await self.get(principal, key_id)
        authorize(principal, "keys.revoke", Resource("api_key", owner=key.user_name, id=str(key_id)))
        note = audit.entry(principal, "keys.revoke", resource=f"api_key:{key_id}", detail=f"name={key.name}")
        revoked = await key_store.revoke_key(self._db, key_id, now=note.at, audit=note)
        if revoked is None:
            raise NotFound(f"no API key {key_id}")
        audit.emit(note)
        return revoked

    async def validate(self, raw: str) -> Principal:
        """The Principal of a presented key: lookup by prefix, constant-time compare, then revocation, expiry, owner."""
        key = await self._matching_key(raw)
        if key.revoked_at is not None:
            raise Unauthenticated("API key revoked")
        if key.expires_at is not None and audit.parse_rfc3339(key.expires_at) <= audit.now_utc():
            raise Unauthenticated("API key expired")
        role = effective_role(key.role)
        user = await user_store.get_user_by_name(self._db, key.user_name) if key.user_name else None
        if user is not None and user.disabled:
            raise Unauthenticated("API key owner is disabled")
        if user is None and key.source == "local":
            raise Unauthenticated("API key owner no longer exists")
        if user is not None:
            role = lower_role(role, effective_role(user.role))
        return Principal(
            kind=PrincipalKind.API_KEY,
            name=key.user_name,
            role=role,
            user_id=user.id if user else None,
            key_id=key.id,
            namespace=key.namespace,
            team=key.team,
        )

    async def _matching_key(self, raw: str) -> KeyRecord:
        if not raw or len(raw) > MAX_KEY_LENGTH or not raw.isascii() or not raw.isprintable():
            raise Unauthenticated("malformed API key")
        hashed = token_hash(raw)
        key = await key_store.get_key_by_prefix(self._db, hash_prefix(hashed))
        if key is None or not hmac.compare_digest(key.token_hash.encode(), hashed.encode()):
            raise Unauthenticated("invalid API key")
        return key


def _granted_role(requested: Role | None, ceiling: Role, user: str) -> Role:
    if requested is None:
        return ceiling
    if ROLE_RANK[requested] > ROLE_RANK[ceiling]:
        raise InvalidInput(f"role {requested} exceeds what a key for {user} may have ({ceiling})")
    return requested


def build_record(raw: str, new: NewKey, role: Role, user: str) -> KeyRecord:
    """The stored form of a new key ``raw``: its hash, prefix and name, stamped now; expiry must be in the future."""
    hashed = token_hash(raw)
    now = audit.now_utc()
    expires = None
    if new.expires_at is not None:
        moment = audit.parse_rfc3339(new.expires_at)
        if moment <= now:
            raise InvalidInput("expires_at must be in the future")
        expires = audit.rfc3339(moment)
    return KeyRecord(
        name=key_name(hash_prefix(hashed)),
        hash_prefix=hash_prefix(hashed),
        token_hash=hashed,
        namespace=new.namespace,
        user_name=user,
        team=new.team,
        role=role,
        quota_url=new.quota_url,
        description=new.description,
        issued_at=audit.rfc3339(now),
        expires_at=expires,
    )
