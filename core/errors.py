"""Every error Hearth raises on purpose, in one hierarchy, each knowing its HTTP status.

    HearthError                      base; ``status`` and ``detail`` travel to the client
    ├── ConfigError                  a bad setting: the CLI exits 2 with one line, never a traceback
    ├── StorageError                 the database cannot be used
    │   ├── NotADatabaseError        the file is not SQLite
    │   └── DatabaseInUseError       a running server holds the database (restore refused)
    ├── RequestError                 the client sent something we will not act on
    │   ├── BadRequest        400    malformed body, malformed frame
    │   ├── Unauthenticated   401    no credential, or one that does not check out
    │   ├── Forbidden         403    authenticated, but ``authorize`` said no
    │   ├── NotFound          404
    │   ├── Conflict          409
    │   ├── PayloadTooLarge   413
    │   ├── InvalidInput      422    well-formed but invalid values
    │   └── RateLimited       429
    │       ├── TooManyActions       actions.max_running actions run already
    │       └── TooManyAttempts      too many failed logins, or password checks waiting
    ├── ActionError                  an action could not start or ended badly
    │   ├── ActionManagerStopped     the server is stopping; nothing new starts
    │   ├── ActionNotFound           no such action id
    │   └── ProcessStartError        the executable could not be started
    └── SubscriberTooSlow     503    a bus subscriber fell too far behind and was cut off

Keep "we closed it" apart from "the peer broke it": code that closes a stream itself sees
``trio.ClosedResourceError``; a peer that vanished is ``trio.BrokenResourceError``. Handlers translate
HearthError into the face's own error shape at the boundary and nowhere else.
"""

from __future__ import annotations


class HearthError(Exception):
    """Base of every deliberate error; ``detail`` is safe to show to the client."""

    status: int = 500

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class ConfigError(HearthError):
    """A setting is missing, unknown or invalid; ``setting`` names it."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"setting {setting}: {problem}")
        self.setting = setting


class StorageError(HearthError):
    """The database cannot be opened or used."""


class NotADatabaseError(StorageError):
    """The database path holds a file that is not SQLite."""


class DatabaseInUseError(StorageError):
    """A running server holds the database."""


class RequestError(HearthError):
    """The client's request is refused; ``status`` is the HTTP status to answer."""

    status = 400


class BadRequest(RequestError):
    status = 400


class Unauthenticated(RequestError):
    status = 401


class Forbidden(RequestError):
    status = 403


class NotFound(RequestError):
    status = 404


class Conflict(RequestError):
    status = 409


class PayloadTooLarge(RequestError):
    status = 413


class InvalidInput(RequestError):
    status = 422


class RateLimited(RequestError):
    status = 429


class TooManyActions(RateLimited):
    """``actions.max_running`` actions run already: no new one starts until one ends."""


class ActionError(HearthError):
    """An action could not be started, found or completed."""


class ActionManagerStopped(ActionError):
    """The server is shutting down: no new action starts."""

    status = 503


class ActionNotFound(ActionError):
    status = 404


class ProcessStartError(ActionError):
    """The process of an action could not be started (missing executable, bad cwd, ...)."""

    status = 422


class TooManyAttempts(RateLimited):
    """Refused for now (e.g. too many failed logins); ``retry_after`` seconds is sent as ``Retry-After``."""

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class SubscriberTooSlow(HearthError):
    """A bus subscriber fell too far behind on a DISCONNECT topic and was cut off."""

    status = 503
