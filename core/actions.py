"""Action streams: one long-running thing with stdin, output chunks and exactly one result. (stub)"""

from __future__ import annotations

from typing import Any

import trio

from core.config import Settings
from core.metrics import Metrics


class ActionManager:
    def __init__(self, db: Any, settings: Settings, metrics: Metrics) -> None:
        self._db = db
        self._settings = settings
        self._metrics = metrics

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()
