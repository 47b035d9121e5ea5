"""Login throttling (issue 16 item 8): the pure rules on an injected clock and the core's use
of them (refused before any hashing). The real service is tested in ``test_abuse_limits.py``,
on the platform of the other limits."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kettle.config import parse_config
from kettle.errors import AuthenticationError, ConfigError, ResourceExhausted
from kettle.model.users import UserRecord
from kettle.services.authentication import core as core_module
from kettle.services.authentication.core import AuthenticationCore
from kettle.services.authentication.throttle import (
    FailureLimiter,
    LoginThrottle,
    ThrottlePolicy,
    source_of_peer,
)
from kettle.services.authentication.tokens import TokenAuthority, generate_secret

POLICY = ThrottlePolicy(max_failures=5, window_secs=60, base_lockout_secs=30, max_lockout_secs=120)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fail(limiter: FailureLimiter, key: str, now: float) -> float:
    """One attempt that fails; returns what begin() said (0 = it was admitted)."""
    wait = limiter.begin(key, now)
    if wait == 0:
        limiter.end(key, now, failed=True)
    return wait


# --- the pure limiter ------------------------------------------------------------------


def test_five_failures_lock_the_key_for_the_base_lockout() -> None:
    limiter = FailureLimiter(POLICY)
    for i in range(5):
        assert fail(limiter, "alice", 1000 + i) == 0
    assert limiter.begin("alice", 1004) == pytest.approx(30)
    assert limiter.begin("alice", 1033.5) == pytest.approx(0.5)
    assert limiter.begin("bob", 1004) == 0  # another key is not affected


def test_failures_outside_the_window_do_not_add_up() -> None:
    limiter = FailureLimiter(POLICY)
    for i in range(4):
        assert fail(limiter, "alice", 1000 + i) == 0
    # Over 60 s later the first four have left the window: four more are still admitted.
    for i in range(4):
        assert fail(limiter, "alice", 1064 + i * 0.5) == 0
    assert limiter.begin("alice", 1066) == 0


def test_lockouts_double_up_to_the_maximum_then_the_key_is_forgotten() -> None:
    limiter = FailureLimiter(POLICY)
    now = 1000.0
    for _ in range(5):
        fail(limiter, "k", now)
    lockouts = []
    for _ in range(4):
        wait = limiter.begin("k", now)
        lockouts.append(wait)
        now += wait
        assert fail(limiter, "k", now) == 0  # one attempt after each lockout, which locks again
    assert lockouts == pytest.approx([30, 60, 120, 120])
    # Quiet for window + longest lockout after the last lock ends: a fresh start with 5 attempts.
    now += 120 + 60 + 120
    for _ in range(5):
        assert fail(limiter, "k", now) == 0
    assert len(limiter) == 1


def test_attempts_in_progress_count_so_a_parallel_burst_cannot_pass_the_limit() -> None:
    limiter = FailureLimiter(POLICY)
    admitted = [limiter.begin("alice", 1000) for _ in range(8)]
    assert admitted[:5] == [0] * 5
    assert all(wait > 0 for wait in admitted[5:])


def test_refused_attempts_do_not_extend_a_lockout() -> None:
    limiter = FailureLimiter(POLICY)
    for _ in range(5):
        fail(limiter, "alice", 1000)
    for t in range(1001, 1030):
        assert limiter.begin("alice", t) > 0
    assert limiter.begin("alice", 1030) == 0


def test_a_reset_clears_failures_and_lockout_steps() -> None:
    limiter = FailureLimiter(POLICY)
    for _ in range(4):
        fail(limiter, "alice", 1000)
    assert limiter.begin("alice", 1000) == 0
    limiter.end("alice", 1000, failed=False)
    limiter.reset("alice")
    for _ in range(5):
        assert fail(limiter, "alice", 1001) == 0


def test_a_zero_limit_turns_the_limiter_off() -> None:
    limiter = FailureLimiter(ThrottlePolicy(0, 60, 30, 120))
    assert all(fail(limiter, "alice", 1000) == 0 for _ in range(50))


def test_the_table_is_bounded() -> None:
    limiter = FailureLimiter(POLICY, max_keys=3)
    for i in range(10):
        fail(limiter, f"user{i}", 1000)
    assert len(limiter) == 3


@pytest.mark.parametrize(("policy", "error"), [
    ((5, 0, 30, 120), "window"), ((-1, 60, 30, 120), "window"), ((5, 60, 0, 120), "lockout"),
    ((5, 60, 200, 120), "lockout"),
])
def test_policy_refuses_nonsense(policy: tuple[int, float, float, float], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        ThrottlePolicy(*policy)


def test_login_throttle_by_user_and_by_source() -> None:
    clock = Clock()
    throttle = LoginThrottle(POLICY, ThrottlePolicy(8, 60, 30, 120), clock)
    for _ in range(5):
        assert throttle.admit("alice", "10.0.0.1") is None
        throttle.finish("alice", "10.0.0.1", ok=False)
    refusal = throttle.admit("alice", "10.0.0.2")
    assert refusal is not None and refusal.by_user
    assert refusal.message == "too many failed logins for this user; retry after 30 seconds"
    # The same address may still try other users, up to its own limit (8 failures).
    for i in range(3):
        assert throttle.admit(f"user{i}", "10.0.0.1") is None
        throttle.finish(f"user{i}", "10.0.0.1", ok=False)
    refusal = throttle.admit("carol", "10.0.0.1")
    assert refusal is not None and not refusal.by_user
    assert refusal.message == "too many failed logins from this address; retry after 30 seconds"
    assert throttle.admit("carol", "10.0.0.3") is None


def test_a_success_clears_the_user_but_not_the_address() -> None:
    clock = Clock()
    throttle = LoginThrottle(POLICY, ThrottlePolicy(6, 60, 30, 120), clock)
    for _ in range(4):
        throttle.admit("alice", "a")
        throttle.finish("alice", "a", ok=False)
    throttle.admit("alice", "a")
    throttle.finish("alice", "a", ok=True)
    for _ in range(2):  # the address has 4 failures: two more lock it
        assert throttle.admit("alice", "a") is None
        throttle.finish("alice", "a", ok=False)
    refusal = throttle.admit("alice", "a")
    assert refusal is not None and not refusal.by_user
    assert throttle.admit("alice", "b") is None  # the user itself had only 2 failures since its success


@pytest.mark.parametrize(("peer", "source"), [
    ("ipv4:127.0.0.1:5555", "127.0.0.1"), ("ipv6:[::1]:5555", "::1"), ("ipv6:%5B::1%5D:5555", "::1"),
    ("unix:/tmp/socket", "unix:/tmp/socket"), ("", ""),
])
def test_source_of_peer(peer: str, source: str) -> None:
    assert source_of_peer(peer) == source


# --- the core: refused before any hashing ----------------------------------------------


class Repo:
    def __init__(self, record: UserRecord) -> None:
        self.record = record

    async def get(self, user_id: str) -> UserRecord | None:
        return self.record if user_id == self.record.id else None

    async def put(self, record: UserRecord) -> None:
        raise AssertionError("login never writes")

    async def delete(self, user_id: str) -> None:
        raise AssertionError("login never writes")

    async def list_ids(self) -> list[str]:
        return [self.record.id]


def test_core_refuses_before_hashing_and_counts_unknown_users(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    record = UserRecord("alice", "FunctionOwner", core_module.passwords.hash_password("right"))
    throttle = LoginThrottle(POLICY, ThrottlePolicy(100, 60, 30, 120), clock)
    core = AuthenticationCore(Repo(record), TokenAuthority(generate_secret()), throttle)
    verified: list[str] = []
    real_verify = core_module.passwords.verify_password

    def counting_verify(stored: str, password: str) -> bool:
        verified.append(password)
        return real_verify(stored, password)

    monkeypatch.setattr(core_module.passwords, "verify_password", counting_verify)

    async def attempts() -> None:
        for user_id in ("alice", "ghost"):
            for _ in range(5):
                with pytest.raises(AuthenticationError, match="^authentication failed$"):
                    await core.login(user_id, "wrong", "10.0.0.1")
            before = len(verified)
            with pytest.raises(ResourceExhausted) as refused:
                await core.login(user_id, "right", "10.0.0.1")
            assert len(verified) == before  # no hashing once throttled
            # Known and unknown ids read the same.
            assert refused.value.message == "too many failed logins for this user; retry after 30 seconds"
        clock.now += 30
        assert await core.login("alice", "right", "10.0.0.1")
        with pytest.raises(AuthenticationError):  # the success cleared alice: a fresh five
            await core.login("alice", "wrong", "10.0.0.1")

    asyncio.run(attempts())
    assert len(verified) == 5 + 5 + 1 + 1


# --- settings --------------------------------------------------------------------------


def test_settings_default_on_and_nonsense_refused(tmp_path: Path) -> None:
    defaults = parse_config("", tmp_path).authentication
    assert (defaults.login_max_failures_per_user, defaults.login_max_failures_per_source,
            defaults.login_failure_window_secs, defaults.login_lockout_secs, defaults.login_max_lockout_secs) == (
        5, 30, 60, 30, 900)
    for bad in ("login_lockout_secs = 0", "login_failure_window_secs = 0",
                "login_lockout_secs = 100\nlogin_max_lockout_secs = 50"):
        with pytest.raises(ConfigError, match="login_lockout_secs"):
            parse_config(f"[authentication]\n{bad}\n", tmp_path)
