"""Who is calling: the Principal every face turns its credential into, and the Credential it starts from."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

import msgspec

Role = Literal["admin", "member", "viewer"]
ROLE_RANK: dict[str, int] = {"viewer": 1, "member": 2, "admin": 3}


class PrincipalKind(StrEnum):
    ANONYMOUS = "anonymous"
    USER = "user"  # password login or JWT access token
    API_KEY = "api_key"
    AGENT = "agent"  # an agent key bound to one server (fleet face)
    WORKSPACE_OWNER = "workspace_owner"


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    """An authenticated caller. ``name`` is the user name (empty for anonymous)."""

    kind: PrincipalKind
    name: str = ""
    role: Role = "viewer"
    user_id: int | None = None
    key_id: int | None = None
    namespace: str = ""
    team: str = ""
    server_id: str = ""

    @property
    def is_authenticated(self) -> bool:
        return self.kind is not PrincipalKind.ANONYMOUS

    def has_role(self, minimum: Role) -> bool:
        return self.is_authenticated and ROLE_RANK[self.role] >= ROLE_RANK[minimum]

    def describe(self) -> str:
        """A short stable label for logs and audit rows, e.g. ``user:alice`` or ``api_key:7``."""
        if self.kind is PrincipalKind.API_KEY:
            return f"api_key:{self.key_id}:{self.name}"
        return f"{self.kind.value}:{self.name}" if self.name else self.kind.value


ANONYMOUS = Principal(kind=PrincipalKind.ANONYMOUS)


class CredentialKind(StrEnum):
    BEARER = "bearer"  # Authorization: Bearer <jwt or api key>
    API_KEY = "api_key"  # X-API-Key header, or a key in a websocket's first frame
    COOKIE = "cookie"  # the dashboard's access-token cookie
    BASIC = "basic"  # Authorization: Basic, for clients that only speak basic auth


class Credential(msgspec.Struct, frozen=True):
    """A raw credential as presented, before it is checked."""

    kind: CredentialKind
    value: str
