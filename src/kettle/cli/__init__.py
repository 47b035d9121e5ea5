"""The ``kettle`` command line."""

from __future__ import annotations

from ..config import Config

REPLICA_PROBE_SECS = 2.0


def api_target(config: Config, service: str) -> str:
    """``host:port`` of the API service's first replica that accepts a connection.

    With one replica, that one. With several (``advertised_address`` as a list), a command
    uses the first that answers rather than failing on one that is down; the replica it
    reaches is then verified like any endpoint, and an attestation failure is not skipped
    over. When none answers, the first: the command's error then names it.
    """
    targets = config.endpoint(service, api=True).targets
    if len(targets) > 1:
        from ..platform_status import accepts_connections

        for target in targets:
            if accepts_connections(target, REPLICA_PROBE_SECS):
                return target
    return targets[0]
