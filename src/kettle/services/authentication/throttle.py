"""Login throttling: after too many failed logins, refuse further attempts before any hashing.

Pure and clock-injected, so every rule is tested to the second without sleeping.
The authentication service keeps two :class:`FailureLimiter` tables, one keyed
by user id (guessing one user's password) and one by the client's address
(trying many users from one place). A login is refused while either key is
locked; a failed login counts against both; a successful one clears the user's
key only (clearing the address on success would let an attacker with one valid
account reset its own address between guesses).

For each key, failures are counted in a sliding window. Reaching the limit
locks the key for ``base_lockout`` seconds; every further lockout of the same
key doubles that, up to ``max_lockout``, so guessing slows down geometrically
while a real user who mistyped is never locked out for longer than
``max_lockout``. While locked, attempts are refused without counting (a
refused attempt costs nothing, so counting it would only let an attacker keep
the real user locked out longer). After the lock ends one more failure locks
again at the next step; a key that stays quiet for ``window + max_lockout``
seconds is forgotten.

Unknown user ids are keys like any other, so a throttled answer says nothing
about which ids exist. The tables are bounded: when full, the key idle longest
is dropped first.
"""

from __future__ import annotations

import math
import urllib.parse
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["FailureLimiter", "LoginThrottle", "Refusal", "ThrottlePolicy", "source_of_peer"]


@dataclass(frozen=True)
class ThrottlePolicy:
    """When one key (a user id or an address) gets locked, and for how long."""

    max_failures: int
    """Failures within ``window_secs`` that lock the key; 0 turns this limit off."""
    window_secs: float
    base_lockout_secs: float
    max_lockout_secs: float

    def __post_init__(self) -> None:
        if self.max_failures < 0 or self.window_secs <= 0:
            raise ValueError("a throttle needs a positive window and a non-negative failure limit")
        if not 0 < self.base_lockout_secs <= self.max_lockout_secs:
            raise ValueError("a throttle's first lockout must be positive and at most its longest")

    def lockout(self, strikes: int) -> float:
        """The length of the ``strikes``-th lockout (1-based): doubling from the base, capped."""
        return min(self.max_lockout_secs, self.base_lockout_secs * 2.0 ** min(strikes - 1, 64))


@dataclass
class _Entry:
    failures: deque[float] = field(default_factory=deque)
    strikes: int = 0
    locked_until: float = 0.0
    last_failure: float = 0.0
    pending: int = 0
    """Attempts admitted and still being checked: counted, so a burst of parallel
    attempts cannot slip past the limit while the first ones are still hashing."""


PENDING_RETRY_SECS = 1.0
"""What a refusal caused only by attempts still in progress asks the client to wait."""


class FailureLimiter:
    """Failure counting and lockouts for one kind of key, under one policy.

    An attempt is :meth:`begin`-ed (admitted or refused) and then :meth:`end`-ed
    with its outcome; a success clears the key only when the caller says so
    (:meth:`reset`).
    """

    def __init__(self, policy: ThrottlePolicy, max_keys: int = 100_000) -> None:
        if max_keys < 1:
            raise ValueError("a limiter must be able to remember at least one key")
        self._policy = policy
        self._max_keys = max_keys
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self._policy.max_failures > 0

    def __len__(self) -> int:
        return len(self._entries)

    def begin(self, key: str, now: float) -> float:
        """Admit an attempt (0) or give the seconds until ``key`` may try again."""
        if not self.enabled:
            return 0.0
        entry = self._current(key, now)
        if entry is None:
            entry = self._entries[key] = _Entry()
            self._evict()
        if now < entry.locked_until:
            return entry.locked_until - now
        self._expire(entry, now)
        # After a lockout, only one attempt at a time until it succeeds or locks again.
        allowed = 1 if entry.strikes else self._policy.max_failures
        if len(entry.failures) + entry.pending >= allowed:
            return PENDING_RETRY_SECS
        entry.pending += 1
        self._entries.move_to_end(key)
        return 0.0

    def end(self, key: str, now: float, *, failed: bool) -> None:
        """The outcome of an attempt :meth:`begin` admitted."""
        entry = self._entries.get(key)
        if entry is None:  # evicted meanwhile (the table was full): nothing to count against
            return
        entry.pending = max(0, entry.pending - 1)
        if not failed:
            return
        entry.last_failure = now
        self._expire(entry, now)
        entry.failures.append(now)
        # Once locked before, the very next failure after the lock locks again (one step longer).
        if len(entry.failures) >= self._policy.max_failures or entry.strikes:
            entry.strikes += 1
            entry.locked_until = now + self._policy.lockout(entry.strikes)
            entry.failures.clear()

    def reset(self, key: str) -> None:
        """Forget the key's failures and lockouts (attempts in progress still count)."""
        entry = self._entries.get(key)
        if entry is not None:
            self._entries[key] = _Entry(pending=entry.pending)

    def _expire(self, entry: _Entry, now: float) -> None:
        window_start = now - self._policy.window_secs
        while entry.failures and entry.failures[0] <= window_start:
            entry.failures.popleft()

    def _current(self, key: str, now: float) -> _Entry | None:
        """The key's entry, forgetting it when it has been quiet long enough."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        quiet_since = max(entry.last_failure, entry.locked_until)
        if entry.pending == 0 and now - quiet_since >= self._policy.window_secs + self._policy.max_lockout_secs:
            del self._entries[key]
            return None
        return entry

    def _evict(self) -> None:
        while len(self._entries) > self._max_keys:
            self._entries.popitem(last=False)


@dataclass(frozen=True)
class Refusal:
    """Why a login is refused before its password is looked at."""

    by_user: bool
    """True: the user id is locked; False: the client's address is."""
    retry_after_secs: int

    @property
    def message(self) -> str:
        whose = "for this user" if self.by_user else "from this address"
        return f"too many failed logins {whose}; retry after {self.retry_after_secs} seconds"


MAX_KEY_CHARS = 256
"""Keys are cut to this length: an id this long is invalid anyway, and memory stays bounded."""


class LoginThrottle:
    """The per-user and per-address limiters of one authentication service, on one clock.

    Use: ``refusal = throttle.admit(user, source)``; if None, check the password
    and then call ``throttle.finish(user, source, ok=...)`` exactly once.
    """

    def __init__(
        self,
        per_user: ThrottlePolicy,
        per_source: ThrottlePolicy,
        clock: Callable[[], float],
        max_keys: int = 100_000,
    ) -> None:
        self._users = FailureLimiter(per_user, max_keys)
        self._sources = FailureLimiter(per_source, max_keys)
        self._clock = clock

    def admit(self, user_id: str, source: str) -> Refusal | None:
        """None if the attempt may go ahead (it is then in progress), else why not."""
        now = self._clock()
        user, address = user_id[:MAX_KEY_CHARS], source[:MAX_KEY_CHARS]
        wait = self._users.begin(user, now)
        if wait > 0:
            return Refusal(by_user=True, retry_after_secs=max(1, math.ceil(wait)))
        wait = self._sources.begin(address, now)
        if wait > 0:
            self._users.end(user, now, failed=False)
            return Refusal(by_user=False, retry_after_secs=max(1, math.ceil(wait)))
        return None

    def finish(self, user_id: str, source: str, *, ok: bool) -> None:
        """The outcome of an admitted attempt; a success clears the user's failures."""
        now = self._clock()
        user, address = user_id[:MAX_KEY_CHARS], source[:MAX_KEY_CHARS]
        self._users.end(user, now, failed=not ok)
        self._sources.end(address, now, failed=not ok)
        if ok:
            self._users.reset(user)


def source_of_peer(peer: str) -> str:
    """The client's address from a gRPC peer string, without the port.

    ``ipv4:127.0.0.1:5555`` → ``127.0.0.1``; ``ipv6:[::1]:5555`` (gRPC writes the
    brackets percent-encoded) → ``::1``; anything else (a Unix socket, an unknown
    form) is kept whole, so it is still one key.
    """
    kind, _, rest = urllib.parse.unquote(peer).partition(":")
    if kind == "ipv4" and ":" in rest:
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6" and rest.startswith("[") and "]" in rest:
        return rest[1:rest.index("]")]
    return peer
