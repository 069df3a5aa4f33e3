"""Routes: health (placeholder until its implementation lands)."""

from __future__ import annotations

from quart import Blueprint

blueprint = Blueprint("health", __name__)
