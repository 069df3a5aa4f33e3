"""Routes: actions (placeholder until its implementation lands)."""

from __future__ import annotations

from quart import Blueprint

blueprint = Blueprint("actions", __name__)
