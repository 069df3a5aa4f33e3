"""The services one Hearth process runs, built once in app.py and handed to every face."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from core.config import Settings
from core.systems import SystemsRegistry

if TYPE_CHECKING:
    from core.actions import ActionManager
    from core.auth import Authenticator
    from core.bus import Bus
    from core.call_catalogue import CallCatalogue
    from core.metrics import Metrics
    from storage.database import Database


@dataclass
class Services:
    settings: Settings
    db: Database
    auth: Authenticator
    actions: ActionManager
    bus: Bus
    metrics: Metrics
    calls: CallCatalogue
    systems: SystemsRegistry
    extras: dict[str, object] = field(default_factory=dict)
