"""JWT access tokens (HS256 only) and the secret they are signed with, kept in a 0600 file under the data dir."""

from __future__ import annotations

import os
import re
import secrets
from datetime import timedelta
from pathlib import Path
from typing import Any

import jwt
import msgspec

from core.audit import now_utc
from core.config import Settings
from core.errors import ConfigError, Unauthenticated

SECRET_FILE = "jwt.secret"
SECRET_BYTES = 32
ALGORITHM = "HS256"
ACCESS_TYPE = "access"
_JWT_SHAPE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")


class AccessClaims(msgspec.Struct, frozen=True):
    sub: str
    role: str
    iat: int
    exp: int
    jti: str
    typ: str


def looks_like_jwt(value: str) -> bool:
    """Three base64url segments separated by dots (the signature may be empty, as in ``alg: none``)."""
    return bool(_JWT_SHAPE.match(value))


def secret_path(settings: Settings) -> Path:
    configured = settings.auth.jwt_secret_file
    return Path(configured) if configured else settings.data_path / SECRET_FILE


def load_or_create_secret(path: Path) -> bytes:
    """Read the signing secret; on first start create it with 32 random bytes, readable by us only.

    The file is written under a temporary name and hard-linked into place, so a crash never leaves a short
    secret behind and two processes starting at once agree on one secret.
    """
    if path.exists():
        return _read_secret(path)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    try:
        _write_new(temp, secrets.token_bytes(SECRET_BYTES))
        os.link(temp, path)
    except FileExistsError:
        pass
    except OSError as e:
        raise ConfigError("auth.jwt_secret_file", f"cannot create {path}: {e.strerror}") from None
    finally:
        temp.unlink(missing_ok=True)
    return _read_secret(path)


def _write_new(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _read_secret(path: Path) -> bytes:
    try:
        secret = path.read_bytes()
    except OSError as e:
        raise ConfigError("auth.jwt_secret_file", f"cannot read {path}: {e.strerror}") from None
    if len(secret) < SECRET_BYTES:
        raise ConfigError("auth.jwt_secret_file", f"{path} must hold at least {SECRET_BYTES} bytes")
    return secret


class TokenSigner:
    """Issues and checks access tokens; the secret is read (or created) on first use."""

    def __init__(self, settings: Settings) -> None:
        self._path = secret_path(settings)
        self._ttl = settings.auth.access_token_ttl_seconds
        self._secret: bytes | None = None

    @property
    def ttl_seconds(self) -> int:
        return self._ttl

    def load(self) -> None:
        """Read or create the secret now (at server start), so a bad secret file stops the start, not a login."""
        self._key()

    def _key(self) -> bytes:
        if self._secret is None:
            self._secret = load_or_create_secret(self._path)
        return self._secret

    def issue(self, subject: str, role: str) -> str:
        issued = now_utc()
        claims: dict[str, Any] = {
            "sub": subject,
            "role": role,
            "iat": int(issued.timestamp()),
            "exp": int((issued + timedelta(seconds=self._ttl)).timestamp()),
            "jti": secrets.token_hex(16),
            "typ": ACCESS_TYPE,
        }
        return jwt.encode(claims, self._key(), algorithm=ALGORITHM)

    def verify(self, token: str) -> AccessClaims:
        """The claims of a valid, unexpired HS256 access token; anything else is 401."""
        try:
            raw = jwt.decode(
                token,
                self._key(),
                algorithms=[ALGORITHM],
                options={"require": ["sub", "role", "iat", "exp", "jti", "typ"]},
            )
            claims = msgspec.convert(raw, AccessClaims)
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("access token expired") from None
        except (jwt.InvalidTokenError, msgspec.ValidationError):
            raise Unauthenticated("invalid access token") from None
        if claims.typ != ACCESS_TYPE:
            raise Unauthenticated("invalid access token")
        return claims
