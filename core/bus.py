"""In-process topics with a bounded buffer per subscriber. (stub)"""

from __future__ import annotations

from core.metrics import Metrics


class Bus:
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
