"""Passwords: argon2id hashes, the rules for names and passwords, and the bounded failed-login throttle."""

from __future__ import annotations

import pytest
import trio

from core.errors import InvalidInput, TooManyAttempts
from core.passwords import (
    _DUMMY_HASH,
    LoginThrottle,
    Passwords,
    generate_password,
    needs_rehash,
    validate_password,
    validate_username,
)


async def test_passwords_hash_is_argon2id_and_verifies_only_the_right_password() -> None:
    passwords = Passwords()
    hashed = await passwords.hash("correct horse battery")
    assert hashed.startswith("$argon2id$")
    assert "correct horse" not in hashed
    assert await passwords.verify(hashed, "correct horse battery")
    assert not await passwords.verify(hashed, "correct horse battery!")
    assert not needs_rehash(hashed)


async def test_passwords_verify_refuses_a_hash_that_is_not_argon2() -> None:
    assert not await Passwords().verify("plain-text-stored-by-mistake", "plain-text-stored-by-mistake")


async def test_passwords_dummy_hash_has_the_parameters_of_real_hashes() -> None:
    real = await Passwords().hash("whatever password")
    assert _DUMMY_HASH.rsplit("$", 2)[0] == real.rsplit("$", 2)[0]
    assert not needs_rehash(_DUMMY_HASH)
    await Passwords().dummy_verify("whatever password")


def test_generate_password_is_random_and_long_enough() -> None:
    first, second = generate_password(), generate_password()
    assert first != second
    assert validate_password(first) == first


@pytest.mark.parametrize("name", ["alice", "a.b-c_d", "A" * 64, "0"])
def test_validate_username_accepts_allowed_names(name: str) -> None:
    assert validate_username(name) == name


@pytest.mark.parametrize("name", ["", "a" * 65, "with space", "semi;colon", "@cli", "ümlaut", "a/b"])
def test_validate_username_refuses_bad_names(name: str) -> None:
    with pytest.raises(InvalidInput, match="username must be"):
        validate_username(name)


@pytest.mark.parametrize("password", ["", "short", "x" * 7, "x" * 1025])
def test_validate_password_refuses_bad_lengths(password: str) -> None:
    with pytest.raises(InvalidInput, match=r"password must be 8\.\.1024"):
        validate_password(password)


def test_login_throttle_blocks_after_max_failures_and_success_resets() -> None:
    throttle = LoginThrottle(max_failures=3, window=300)
    for _ in range(2):
        throttle.failed("alice")
    assert throttle.retry_after("alice") == 0
    throttle.failed("alice")
    assert 0 < throttle.retry_after("alice") <= 300
    assert throttle.retry_after("bob") == 0
    throttle.succeeded("alice")
    assert throttle.retry_after("alice") == 0


def test_login_throttle_forgets_failures_older_than_the_window() -> None:
    throttle = LoginThrottle(max_failures=2, window=0.000001)
    throttle.failed("alice")
    throttle.failed("alice")
    assert throttle.retry_after("alice") == 0


def test_login_throttle_memory_is_bounded_by_max_names() -> None:
    throttle = LoginThrottle(max_failures=2, window=300, max_names=50)
    for i in range(500):
        throttle.failed(f"user{i}")
    throttle.failed("user499")
    assert len(throttle._failures) == 50
    assert throttle.retry_after("user499") > 0
    assert throttle.retry_after("user0") == 0


async def test_throttle_runs_one_check_per_name_at_a_time() -> None:
    throttle = LoginThrottle(max_failures=2, window=60)
    inside: list[str] = []
    entries: list[tuple[str, list[str]]] = []  # who entered, and who was inside then

    async def check(name: str) -> None:
        async with throttle.turn(name):
            entries.append((name, list(inside)))
            inside.append(name)
            await trio.sleep(0.01)  # a check takes a while: the same name's others wait
            inside.remove(name)

    async with trio.open_nursery() as nursery:
        for name in ("ann", "ann", "ann", "bob"):
            nursery.start_soon(check, name)
    assert len(entries) == 4
    assert all(name not in others for name, others in entries)


async def test_password_checks_past_the_waiting_limit_are_refused_at_once() -> None:
    passwords = Passwords(concurrency=1, max_waiting=1)
    digest = await passwords.hash("a long enough password")
    outcomes: list[object] = []

    async def check() -> None:
        try:
            outcomes.append(await passwords.verify(digest, "a long enough password"))
        except TooManyAttempts as e:
            outcomes.append(e.retry_after)

    async with trio.open_nursery() as nursery:
        for _ in range(3):  # one runs, one waits, the third is refused
            nursery.start_soon(check)
    assert sorted(outcomes, key=str) == [1, True, True]
