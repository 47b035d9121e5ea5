"""When the supervisor restarts a crashed service, and when it gives up.

Pure: the caller passes the times in (``time.monotonic()`` in the launcher), so
every rule is tested without processes (``tests/test_supervisor.py``).

- A crash is answered by a restart after a delay that starts at
  ``restart_backoff`` and doubles with each crash in a row, up to
  ``max_restart_backoff``: a service that fails at once is not restarted in a
  tight loop, and one that crashes rarely comes back quickly.
- A service that ran ``stable`` seconds before it crashed starts over at the
  first delay: that crash is a new incident, not part of a run of failures.
- ``crash_loop_crashes`` crashes within ``crash_loop_window`` seconds are a
  crash loop: restarting cannot help (a broken configuration, a port taken,
  a dependency gone for good), so the supervisor gives up.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from ..config import SupervisorConfig


@dataclass(frozen=True)
class RestartSettings:
    restart_backoff: float
    max_restart_backoff: float
    stable: float
    crash_loop_crashes: int
    crash_loop_window: float

    @classmethod
    def from_config(cls, config: SupervisorConfig) -> RestartSettings:
        return cls(
            restart_backoff=config.restart_backoff_ms / 1000,
            max_restart_backoff=config.max_restart_backoff_ms / 1000,
            stable=float(config.stable_secs),
            crash_loop_crashes=config.crash_loop_crashes,
            crash_loop_window=float(config.crash_loop_window_secs),
        )


@dataclass(frozen=True)
class Decision:
    """What to do about one crash: restart after ``delay`` seconds, or give up."""

    give_up: bool
    delay: float
    crashes_in_window: int
    reason: str
    """Why, in a sentence fit for the supervisor's log."""


class RestartPolicy:
    """The crash history of one service and the decision each new crash gets."""

    def __init__(self, settings: RestartSettings) -> None:
        self._settings = settings
        self._crashes: deque[float] = deque()
        self._in_a_row = 0
        self._started_at: float | None = None
        self.restarts = 0
        """Restarts decided so far (what ``kettle status`` shows)."""

    def started(self, now: float) -> None:
        """The service was (re)started and is ready."""
        self._started_at = now

    def crashed(self, now: float) -> Decision:
        """The service died without being asked to stop, at ``now``."""
        s = self._settings
        if self._started_at is not None and now - self._started_at >= s.stable:
            self._in_a_row = 0
        self._started_at = None
        self._crashes.append(now)
        while self._crashes and now - self._crashes[0] > s.crash_loop_window:
            self._crashes.popleft()
        count = len(self._crashes)
        if count >= s.crash_loop_crashes:
            return Decision(
                give_up=True, delay=0.0, crashes_in_window=count,
                reason=f"it crashed {count} times within {s.crash_loop_window:g} s (a crash loop)",
            )
        delay = min(s.max_restart_backoff, s.restart_backoff * 2**self._in_a_row)
        self._in_a_row += 1
        self.restarts += 1
        return Decision(
            give_up=False, delay=delay, crashes_in_window=count,
            reason=f"{count} crash(es) within {s.crash_loop_window:g} s; {s.crash_loop_crashes} stop the platform",
        )
