"""The Origin check for cookie credentials: browsers attach the cookie to requests that other pages start."""

from __future__ import annotations

from urllib.parse import urlsplit

from core.errors import Forbidden

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def check_origin(allowed: list[str], origin: str | None, host: str) -> None:
    """A cookie is sent by browsers from any page of the same site (another port, a sibling subdomain): only
    same-origin pages or ``auth.allowed_origins`` may use it. A request without an Origin is refused too;
    browsers send one on every websocket and every request that is not GET or HEAD."""
    if origin is None:
        raise Forbidden("cookie authentication needs an Origin header")
    if origin in allowed:
        return
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or parts.netloc.lower() != host.lower():
        raise Forbidden(f"origin {origin} is not allowed")
