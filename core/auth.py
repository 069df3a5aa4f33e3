"""Authentication: users, login, refresh and logout, and the one function that turns any credential into a Principal."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

import msgspec

from core import audit
from core.api_keys import ApiKeyManager, NewKey, build_record, effective_role, generate_raw_key, looks_like_api_key
from core.authz import authorize
from core.config import Settings
from core.errors import NotFound, TooManyAttempts, Unauthenticated
from core.jwt_tokens import TokenSigner, looks_like_jwt
from core.metrics import Metrics
from core.passwords import (
    PASSWORD_MAX,
    USERNAME_MAX,
    LoginThrottle,
    Passwords,
    generate_password,
    needs_rehash,
    validate_password,
    validate_username,
)
from core.principals import Credential, CredentialKind, Principal, PrincipalKind, Role
from storage import api_keys as key_store
from storage import audit as audit_store
from storage import refresh_tokens as refresh_store
from storage import users as user_store
from storage.database import Database
from storage.users import UserRecord

MAX_CREDENTIAL_LENGTH = 8192
MAX_REFRESH_TOKEN_LENGTH = 512
FIRST_ADMIN = "admin"
# The command-line tools act as this administrator; "@" cannot appear in a user name, so it owns nothing.
LOCAL_ADMIN = Principal(kind=PrincipalKind.USER, name="@cli", role="admin")
_REFRESH_REFUSALS = {
    "unknown": "invalid refresh token",
    "revoked": "refresh token revoked",
    "expired": "refresh token expired",
    "disabled": "user is disabled",
}


class FirstAdmin(msgspec.Struct, frozen=True):
    """The administrator created on the very first start; printed once by ``hearth serve``."""

    name: str
    password: str
    api_key: str


class TokenPair(msgspec.Struct, frozen=True):
    access_token: str
    refresh_token: str
    expires_in: int
    token_type: str = "bearer"


def _refresh_hash(raw: str) -> str:
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


class Authenticator:
    """Turns any Credential into a Principal; owns users, login, refresh, logout and (via ``keys``) API keys."""

    def __init__(self, db: Database, settings: Settings, metrics: Metrics) -> None:
        self._db = db
        self._settings = settings
        self._metrics = metrics
        self.passwords = Passwords()
        self.tokens = TokenSigner(settings)
        self.keys = ApiKeyManager(db, settings)
        self.throttle = LoginThrottle()

    # -- users --------------------------------------------------------------------------------------------------

    async def ensure_first_admin(self) -> FirstAdmin | None:
        """At server start: load (or create) the JWT secret; on a database without any user, create ``admin``
        with a random password and an admin key and return them (None on every later start)."""
        self.tokens.load()
        if await user_store.count_users(self._db):
            return None
        password, raw = generate_password(), generate_raw_key()
        password_hash = await self.passwords.hash(password)
        record = _first_key_record(raw)
        note = audit.entry("system", "users.create", resource=f"user:{FIRST_ADMIN}", detail="first admin and admin key")
        created = await key_store.insert_first_admin(
            self._db, name=FIRST_ADMIN, password_hash=password_hash, created_at=note.at, key=record, audit=note
        )
        if created is None:
            return None
        audit.emit(note)
        return FirstAdmin(FIRST_ADMIN, password, raw)

    async def create_user(self, principal: Principal, name: str, password: str, role: Role) -> UserRecord:
        authorize(principal, "users.create")
        return await self._insert_user(principal, name, password, role)

    async def register(self, principal: Principal, name: str, password: str, role: Role) -> UserRecord:
        """Admins create any user; with open registration anyone may create a member or viewer."""
        if self._settings.auth.open_registration and role != "admin" and principal.role != "admin":
            return await self._insert_user(principal, name, password, role)
        return await self.create_user(principal, name, password, role)

    async def _insert_user(self, principal: Principal, name: str, password: str, role: Role) -> UserRecord:
        validate_username(name)
        validate_password(password)
        password_hash = await self.passwords.hash(password)
        note = audit.entry(principal, "users.create", resource=f"user:{name}", detail=f"role={role}")
        user = await user_store.insert_user(
            self._db, name=name, role=role, password_hash=password_hash, created_at=note.at, audit=note
        )
        audit.emit(note)
        return user

    async def set_disabled(self, principal: Principal, name: str, disabled: bool) -> UserRecord:
        """Disable (or re-enable) a user: its access tokens, API keys and refresh tokens stop working at once."""
        authorize(principal, "users.update")
        note = audit.entry(principal, "users.update", resource=f"user:{name}", detail=f"disabled={disabled}")
        user = await user_store.set_disabled(self._db, name, disabled, audit=note)
        if user is None:
            raise NotFound(f"no such user {name}")
        audit.emit(note)
        return user

    async def list_users(self, principal: Principal, *, after_id: int = 0, limit: int = 1000) -> list[UserRecord]:
        authorize(principal, "users.read")
        return await user_store.list_users(self._db, after_id=after_id, limit=limit)

    # -- login, refresh, logout ---------------------------------------------------------------------------------

    async def login(self, username: str, password: str, *, remote: str = "") -> TokenPair:
        """Check the password (throttled per user name) and issue an access and a refresh token."""
        user = await self._check_password(username, password, remote=remote)
        return await self._issue_pair(user)

    async def _check_password(self, username: str, password: str, *, remote: str = "") -> UserRecord:
        name = username[:USERNAME_MAX]
        async with self.throttle.turn(name):
            if wait := self.throttle.retry_after(name):
                raise TooManyAttempts(f"too many failed logins for {name}; retry in {wait} s", wait)
            user = await self._verified_user(username, password)
            if user is None:
                await self._login_failed(name, remote)
                raise Unauthenticated("invalid username or password")
            self.throttle.succeeded(name)
        await self._upgrade_hash(user, password)
        return user

    async def _verified_user(self, username: str, password: str) -> UserRecord | None:
        """The user whose password this is (and who is not disabled), with the same work when there is none."""
        user = await user_store.get_user_by_name(self._db, username) if len(username) <= USERNAME_MAX else None
        if user is None or len(password) > PASSWORD_MAX:
            await self.passwords.dummy_verify(password[:PASSWORD_MAX])
            return None
        ok = await self.passwords.verify(user.password_hash, password) and not user.disabled
        return user if ok else None

    async def _login_failed(self, name: str, remote: str) -> None:
        self.throttle.failed(name)
        self._metrics.auth_failures.labels(kind="password").inc()
        note = audit.entry(f"user:{name}", "auth.login", outcome="denied", detail=f"remote={remote}")
        await audit_store.record(self._db, note)
        audit.emit(note)

    async def _upgrade_hash(self, user: UserRecord, password: str) -> None:
        if needs_rehash(user.password_hash):
            try:
                new_hash = await self.passwords.hash(password)
            except TooManyAttempts:
                return  # busy: the password is right all the same; the next login upgrades the hash
            await user_store.set_password_hash(self._db, user.id, new_hash)

    async def _issue_pair(self, user: UserRecord) -> TokenPair:
        raw = secrets.token_urlsafe(32)
        now = audit.now_utc()
        expires = now + timedelta(seconds=self._settings.auth.refresh_token_ttl_seconds)
        await refresh_store.insert_token(
            self._db,
            token_hash=_refresh_hash(raw),
            user_id=user.id,
            issued_at=audit.rfc3339(now),
            expires_at=audit.rfc3339(expires),
        )
        return self._pair(user, raw)

    def _pair(self, user: UserRecord, refresh_raw: str) -> TokenPair:
        access = self.tokens.issue(user.name, effective_role(user.role))
        return TokenPair(access_token=access, refresh_token=refresh_raw, expires_in=self.tokens.ttl_seconds)

    async def refresh(self, refresh_token: str) -> TokenPair:
        """Rotate: the presented token is revoked and a new pair issued; a revoked token is refused (401)."""
        if not refresh_token or len(refresh_token) > MAX_REFRESH_TOKEN_LENGTH:
            raise Unauthenticated("invalid refresh token")
        new_raw = secrets.token_urlsafe(32)
        now = audit.now_utc()
        expires = now + timedelta(seconds=self._settings.auth.refresh_token_ttl_seconds)
        outcome, old = await refresh_store.rotate_token(
            self._db,
            old_hash=_refresh_hash(refresh_token),
            new_hash=_refresh_hash(new_raw),
            now=audit.rfc3339(now),
            expires_at=audit.rfc3339(expires),
        )
        user = await user_store.get_user(self._db, old.user_id) if outcome == "ok" and old else None
        if user is None:
            await self._refresh_refused(outcome, old)
            raise Unauthenticated(_REFRESH_REFUSALS.get(outcome, "invalid refresh token"))
        return self._pair(user, new_raw)

    async def _refresh_refused(self, outcome: str, old: refresh_store.RefreshRecord | None) -> None:
        self._metrics.auth_failures.labels(kind="refresh").inc()
        if outcome == "revoked" and old is not None:
            note = audit.entry(f"user_id:{old.user_id}", "auth.refresh", outcome="reused", detail="all revoked")
            await audit_store.record(self._db, note)
            audit.emit(note)

    async def logout(self, refresh_token: str) -> None:
        """Revoke one refresh token (idempotent); an unknown token is 401."""
        if not refresh_token or len(refresh_token) > MAX_REFRESH_TOKEN_LENGTH:
            raise Unauthenticated("invalid refresh token")
        now = audit.rfc3339(audit.now_utc())
        if await refresh_store.revoke_token(self._db, _refresh_hash(refresh_token), now=now) is None:
            raise Unauthenticated("invalid refresh token")

    async def logout_everywhere(self, principal: Principal) -> int:
        """Revoke every refresh token of the caller's user; returns how many were live."""
        if principal.user_id is None:
            raise Unauthenticated("no user to log out")
        return await refresh_store.revoke_user_tokens(self._db, principal.user_id, now=audit.rfc3339(audit.now_utc()))

    # -- credentials -> Principal ---------------------------------------------------------------------------------

    async def authenticate(self, credential: Credential) -> Principal:
        """The Principal behind ``credential``; 401 with a reason (expired token, revoked key, ...) otherwise."""
        try:
            return await self._authenticate(credential)
        except Unauthenticated:
            self._metrics.auth_failures.labels(kind=credential.kind.value).inc()
            raise

    async def authenticate_key(self, raw: str) -> Principal:
        """An API key presented outside a header (e.g. a websocket's first frame)."""
        return await self.authenticate(Credential(CredentialKind.API_KEY, raw))

    async def _authenticate(self, credential: Credential) -> Principal:
        value = credential.value
        if len(value) > MAX_CREDENTIAL_LENGTH:
            raise Unauthenticated("credential too long")
        if credential.kind is CredentialKind.API_KEY:
            return await self.keys.validate(value)
        if credential.kind is CredentialKind.COOKIE:
            return await self._from_access_token(value)
        if credential.kind is CredentialKind.BASIC:
            return await self._from_basic(value)
        if looks_like_api_key(value):
            return await self.keys.validate(value)
        if looks_like_jwt(value):
            return await self._from_access_token(value)
        raise Unauthenticated("invalid bearer token: neither an access token nor an API key")

    async def _from_access_token(self, token: str) -> Principal:
        claims = self.tokens.verify(token)
        user = await user_store.get_user_by_name(self._db, claims.sub)
        if user is None or user.disabled:
            raise Unauthenticated("access token of a user that is disabled or deleted")
        return _user_principal(user)

    async def _from_basic(self, value: str) -> Principal:
        name, sep, password = value.partition(":")
        if not sep:
            raise Unauthenticated("malformed basic credentials")
        return _user_principal(await self._check_password(name, password))


def _user_principal(user: UserRecord) -> Principal:
    return Principal(kind=PrincipalKind.USER, name=user.name, role=effective_role(user.role), user_id=user.id)


def _first_key_record(raw: str) -> key_store.KeyRecord:
    return build_record(raw, NewKey(description="first administrator key"), "admin", FIRST_ADMIN)
