"""Routes: keys (placeholder until its implementation lands)."""

from __future__ import annotations

from quart import Blueprint

blueprint = Blueprint("keys", __name__)
