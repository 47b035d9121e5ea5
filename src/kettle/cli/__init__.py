"""The ``kettle`` command line."""

from __future__ import annotations

import socket

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
        for target in targets:
            host, _, port = target.rpartition(":")
            try:
                with socket.create_connection((host.strip("[]"), int(port)), timeout=REPLICA_PROBE_SECS):
                    return target
            except OSError:
                continue
    return targets[0]
