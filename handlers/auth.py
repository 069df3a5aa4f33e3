"""Routes: auth (placeholder until its implementation lands)."""

from __future__ import annotations

from quart import Blueprint

blueprint = Blueprint("auth", __name__)
