"""Authentication: passwords, JWT access tokens, refresh tokens, API keys -> Principal. (stub; see issue 3)"""

from __future__ import annotations

from typing import Any

from core.config import Settings
from core.errors import Unauthenticated
from core.metrics import Metrics
from core.principals import Credential, Principal


class Authenticator:
    """Turns any Credential into a Principal; owns login, refresh, logout and API keys."""

    def __init__(self, db: Any, settings: Settings, metrics: Metrics) -> None:
        self._db = db
        self._settings = settings
        self._metrics = metrics

    async def ensure_first_admin(self) -> Any:
        return None

    async def authenticate(self, credential: Credential) -> Principal:
        raise Unauthenticated("not implemented")
