"""Passwords: argon2id hashing off the event loop, the rules for user names and passwords, failed-login throttle."""

from __future__ import annotations

import contextlib
import math
import re
import secrets
import time
from collections import Counter, OrderedDict, deque
from collections.abc import AsyncIterator

import trio
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from core.errors import InvalidInput, TooManyAttempts

USERNAME_MAX = 64
PASSWORD_MIN = 8
PASSWORD_MAX = 1024
USERNAME_PATTERN = r"^[A-Za-z0-9_.-]+$"
_USERNAME_RE = re.compile(USERNAME_PATTERN)

_HASHER = PasswordHasher()  # argon2id, RFC 9106 "low memory" parameters (t=3, m=64 MiB, p=4)
# The hash of a random password nobody knows, made with the same parameters: verifying against it costs what a
# real verification costs.
_DUMMY_HASH = "$argon2id$v=19$m=65536,t=3,p=4$ViPJJRu55IKkVN2wsGdz4A$6ZICH78BBZ30cN9gPq7A5BswmNed7CoFvSyrq+A6pIk"


def validate_username(name: str) -> str:
    if not name or len(name) > USERNAME_MAX or not _USERNAME_RE.fullmatch(name):  # match: '$' takes a final \n
        raise InvalidInput(f"username must be 1..{USERNAME_MAX} characters of A-Z a-z 0-9 _ . -")
    return name


def validate_password(password: str) -> str:
    if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        raise InvalidInput(f"password must be {PASSWORD_MIN}..{PASSWORD_MAX} characters long")
    return password


def generate_password() -> str:
    return secrets.token_urlsafe(18)


def needs_rehash(password_hash: str) -> bool:
    return bool(_HASHER.check_needs_rehash(password_hash))


def _verify_sync(password_hash: str, password: str) -> bool:
    try:
        return bool(_HASHER.verify(password_hash, password))
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


class Passwords:
    """Hashes and verifies on worker threads; each hash holds 64 MiB while it runs, so at most
    ``concurrency`` run at once and a login storm cannot grow memory without bound. At most ``max_waiting``
    more wait for their turn; past that a check is refused at once (429), so a flood of guesses cannot queue
    real logins behind minutes of work."""

    def __init__(self, concurrency: int = 2, max_waiting: int = 64) -> None:
        self._limiter = trio.CapacityLimiter(concurrency)
        self._max_waiting = max_waiting

    async def hash(self, password: str) -> str:
        self._refuse_when_busy()
        async with self._limiter:
            return await trio.to_thread.run_sync(_HASHER.hash, password)

    async def verify(self, password_hash: str, password: str) -> bool:
        self._refuse_when_busy()
        async with self._limiter:
            return await trio.to_thread.run_sync(_verify_sync, password_hash, password)

    def _refuse_when_busy(self) -> None:
        if self._limiter.statistics().tasks_waiting >= self._max_waiting:
            raise TooManyAttempts("too many password checks waiting; retry in a second", 1)

    async def dummy_verify(self, password: str) -> None:
        """Spend what a real verification costs, so an unknown user name cannot be told apart by timing."""
        await self.verify(_DUMMY_HASH, password)


MAX_QUEUED_PER_NAME = 64


class LoginThrottle:
    """At most ``max_failures`` failed logins per user name in ``window`` seconds; memory bounded by ``max_names``.

    When more than ``max_names`` names are tracked, the least recently failed name is forgotten.
    """

    def __init__(self, max_failures: int = 10, window: float = 300.0, max_names: int = 10_000) -> None:
        self.max_failures = max_failures
        self.window = window
        self.max_names = max_names
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._turns: dict[str, trio.Lock] = {}  # one password check per name at a time
        self._queued: Counter[str] = Counter()  # checks of a name waiting or under way (bounded per name)

    def retry_after(self, name: str) -> int:
        """Seconds until ``name`` may try again; 0 when it may try now."""
        times = self._recent(name)
        if len(times) < self.max_failures:
            return 0
        return max(1, math.ceil(times[0] + self.window - time.monotonic()))

    @contextlib.asynccontextmanager
    async def turn(self, name: str) -> AsyncIterator[None]:
        """Wait for ``name``'s turn: password checks of one name run one after another, so each sees the
        failures before it (a burst of parallel guesses gets no more checks than the limit, and parallel
        requests with the right password all pass). More than ``MAX_QUEUED_PER_NAME`` waiting: refused."""
        if self._queued[name] >= MAX_QUEUED_PER_NAME:
            raise TooManyAttempts(f"too many password checks for {name} at once; retry in a second", 1)
        self._queued[name] += 1
        lock = self._turns.setdefault(name, trio.Lock())
        try:
            async with lock:
                yield
        finally:
            self._queued[name] -= 1
            if not self._queued[name]:
                del self._queued[name], self._turns[name]

    def failed(self, name: str) -> None:
        times = self._recent(name)
        times.append(time.monotonic())
        self._failures[name] = times
        self._failures.move_to_end(name)
        while len(self._failures) > self.max_names:
            self._failures.popitem(last=False)

    def succeeded(self, name: str) -> None:
        self._failures.pop(name, None)

    def _recent(self, name: str) -> deque[float]:
        times = self._failures.get(name) or deque(maxlen=self.max_failures)
        horizon = time.monotonic() - self.window
        while times and times[0] <= horizon:
            times.popleft()
        return times
