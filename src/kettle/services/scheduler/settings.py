"""The scheduler's tunables: how long a silent node keeps its task, and how many runs a task gets.

Read from a ``[scheduler]`` table of the runtime configuration when there is one
(``lease_secs``, ``max_attempts``); the environment variables
``KETTLE_SCHEDULER_LEASE_SECS`` and ``KETTLE_SCHEDULER_MAX_ATTEMPTS`` override it,
which is how tests shorten the lease without a configuration file of their own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ...config import Config, SchedulerConfig
from ...errors import ConfigError

DEFAULT_LEASE_SECS = float(SchedulerConfig.lease_secs)
DEFAULT_MAX_ATTEMPTS = SchedulerConfig.max_attempts
LEASE_SECS_ENV = "KETTLE_SCHEDULER_LEASE_SECS"
MAX_ATTEMPTS_ENV = "KETTLE_SCHEDULER_MAX_ATTEMPTS"


@dataclass(frozen=True)
class SchedulerSettings:
    lease_secs: float = DEFAULT_LEASE_SECS
    """A node silent for this long loses its task (the reference waits 30 s, §7.6)."""
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    """Runs a task gets in total before a lost node makes it Failed."""

    @property
    def restart_grace_secs(self) -> float:
        """How long every lease waits for a heartbeat when a scheduler starts, or reaches
        storage again after failing to: its node could not renew it meanwhile.

        Longer than one lease: nodes must first notice the scheduler is back, and
        gRPC's reconnect backoff (1 s, growing by 1.6x) can add several seconds to that.
        Also how long a canceled run's receipt is waited for.
        """
        return max(2 * self.lease_secs, self.lease_secs + 10.0)

    @classmethod
    def load(cls, config: Config, environ: dict[str, str] | None = None) -> SchedulerSettings:
        env = os.environ if environ is None else environ
        lease = float(config.scheduler.lease_secs)
        attempts = config.scheduler.max_attempts
        if env.get(LEASE_SECS_ENV):
            try:
                lease = float(env[LEASE_SECS_ENV])
            except ValueError:
                raise ConfigError(f"{LEASE_SECS_ENV} must be a number of seconds") from None
        if env.get(MAX_ATTEMPTS_ENV):
            try:
                attempts = int(env[MAX_ATTEMPTS_ENV])
            except ValueError:
                raise ConfigError(f"{MAX_ATTEMPTS_ENV} must be an integer") from None
        if not 0.5 <= lease <= 3600:
            raise ConfigError("the scheduler lease must be between 0.5 and 3600 seconds")
        if attempts < 1:
            raise ConfigError("the scheduler's max_attempts must be at least 1")
        return cls(lease, attempts)
