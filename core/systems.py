"""The systems registry behind ``GET /api/v1/systems``: each face adds a provider for its kind of system."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import msgspec

from core.principals import Principal


class SystemInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One system the caller may see: a workspace, a managed server, a Hearth node."""

    kind: str
    id: str
    name: str
    url: str = ""
    state: str = ""
    node: str = ""


Provider = Callable[[Principal], Awaitable[list[SystemInfo]]]

WORKSPACE = "workspace"  # the kinds the ``info`` call counts
SERVER = "server"


@dataclass
class SystemsRegistry:
    """Kind -> provider; a provider returns only what the principal may see."""

    _providers: dict[str, Provider] = field(default_factory=dict)

    def register(self, kind: str, provider: Provider) -> None:
        if kind in self._providers:
            raise ValueError(f"systems of kind {kind!r} already have a provider")
        self._providers[kind] = provider

    async def visible_to(self, principal: Principal) -> list[SystemInfo]:
        out: list[SystemInfo] = []
        for kind in sorted(self._providers):
            out.extend(await self._providers[kind](principal))
        return out
