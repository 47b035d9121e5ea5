"""Durability of the user database: restarts and a SIGKILLed storage service (spec §2.2, §2.3, §12 row 17).

Each test runs a platform of its own, because it stops or kills parts of it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import pytest

from conftest import Platform
from kettle.errors import KettleError

UNAUTH = grpc.StatusCode.UNAUTHENTICATED
STORAGE_TIMEOUT_SECS = 10.0  # the authentication service's deadline on storage calls
STORAGE_DOWN = "the storage service is unavailable; try again later"
OUTAGE_ANSWER_SECS = 2.0 + 5  # the peer connect timeout, and slack for a loaded machine


def test_restart_keeps_users_passwords_and_tokens(fresh_platform: Platform) -> None:
    """Restart keeps users with their passwords and roles, a changed admin password, deletions, and (Kettle) tokens."""
    p = fresh_platform
    p.start()
    with p.admin() as admin:
        admin.user_register("alice", "alice-pw", "DataOwner", "bank")
        admin.user_register("bob", "bob-pw", "FunctionOwner")
        admin.user_register("carol", "carol-pw", "DataOwnerManager", "bank")
        admin.delete_user("carol")
        admin.user_change_password("new-admin-pw")
        admin_token = admin.user_login("admin", "new-admin-pw")
    with p.auth_client() as alice:
        alice_token = alice.user_login("alice", "alice-pw")

    p.stop()
    p.start()

    with p.auth_client() as client:
        for user_id, password in [("alice", "alice-pw"), ("bob", "bob-pw"), ("admin", "new-admin-pw")]:
            assert client.user_login(user_id, password)
        for user_id, password in [("admin", "teaclave"), ("carol", "carol-pw"), ("alice", "bob-pw")]:
            with pytest.raises(KettleError) as info:
                client.user_login(user_id, password)
            assert (info.value.code, info.value.message) == (UNAUTH, "authentication failed")
        # Kettle behaviour: the JWT secret is kept in storage, so tokens issued
        # before the restart still authenticate after it (Teaclave's die, §12 row 17).
        client.use_credential("admin", admin_token)
        assert sorted(client.list_users("all")) == ["admin", "alice", "bob"]
        client.use_credential("alice", alice_token)
        with pytest.raises(KettleError) as info:
            client.list_users("bank")  # authenticated (not "authentication failed"), but a DataOwner may not list
        assert (info.value.code, info.value.message) == (UNAUTH, "permission denied")


@dataclass
class Writer:
    """Threads registering users through the authentication API, recording each acknowledged id."""

    platform: Platform
    threads: int = 2
    acked: list[str] = field(default_factory=list)
    failures: list[tuple[float, str, str]] = field(default_factory=list)  # (seconds taken, code, message)
    stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for n in range(self.threads):
            worker = threading.Thread(target=self._run, args=(n,), daemon=True)
            worker.start()
            self._workers.append(worker)

    def _run(self, n: int) -> None:
        with self.platform.admin() as admin:
            i = 0
            while not self.stop.is_set():
                user_id = f"w{n}-{i}"
                i += 1
                started = time.monotonic()
                try:
                    admin.user_register(user_id, f"pw-{user_id}", "DataOwner", "durable")
                except KettleError as exc:
                    with self._lock:
                        self.failures.append((time.monotonic() - started, exc.code.name, exc.message))
                else:
                    with self._lock:
                        self.acked.append(user_id)

    def count(self) -> int:
        with self._lock:
            return len(self.acked)

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.05)
        return False

    def join(self) -> None:
        self.stop.set()
        for worker in self._workers:
            worker.join(timeout=STORAGE_TIMEOUT_SECS + 20)
            assert not worker.is_alive(), "a writer call hung"


def test_storage_sigkill_loses_no_acknowledged_write(fresh_platform: Platform) -> None:
    """SIGKILL of storage mid-write: every acknowledged user survives; outage calls fail clearly; auth recovers."""
    p = fresh_platform
    p.start()
    writer = Writer(p)
    writer.start()
    try:
        assert writer.wait_for(lambda: writer.count() >= 20, timeout=30), "writers made no progress"
        storage = p.child("storage").process
        storage.kill()
        storage.wait(timeout=10)
        killed_at, acked_before_kill = time.monotonic(), writer.count()

        # While storage is down a call fails UNAVAILABLE naming storage within the connect timeout.
        with p.auth_client() as probe:
            started = time.monotonic()
            with pytest.raises(KettleError) as info:
                probe.user_login("admin", "teaclave")
            took = time.monotonic() - started
        assert (info.value.code, info.value.message) == (grpc.StatusCode.UNAVAILABLE, STORAGE_DOWN)
        assert took <= OUTAGE_ANSWER_SECS
        assert p.child("authentication").process.poll() is None, "authentication died with storage"
        assert writer.count() <= acked_before_kill + 2  # at most calls already past their last storage write

        p.start_service("storage")
        outage = time.monotonic() - killed_at
        # Back to work: the channel reconnects (gRPC backoff may add a few seconds).
        assert writer.wait_for(lambda: writer.count() >= acked_before_kill + 10, timeout=40), (
            f"no recovery after storage restart; failures: {writer.failures[-3:]}"
        )
    finally:
        writer.join()

    assert p.child("authentication").process.poll() is None
    assert writer.failures, "expected the writers to see the outage"
    for took, code, message in writer.failures:
        assert (code, message) == ("UNAVAILABLE", STORAGE_DOWN)
        assert took <= 2 * STORAGE_TIMEOUT_SECS + 5, f"a call during the outage took {took:.1f} s (outage {outage:.1f} s)"

    with p.auth_client() as client:
        for user_id in writer.acked:
            assert client.user_login(user_id, f"pw-{user_id}"), user_id
    with p.admin() as admin:
        stored = set(admin.list_users("all"))
    assert set(writer.acked) <= stored
