"""Audit log end to end: every frontend call leaves an entry (spec/platform.md §9.1),
queryable by a PlatformAdmin with the Tantivy-style syntax (§9.2)."""

from __future__ import annotations

import time
import uuid

import grpc
import pytest

from conftest import Platform
from kettle.errors import KettleError
from kettle.sdk import FrontendClient


def _client(platform: Platform, user_id: str, password: str) -> FrontendClient:
    token = platform.auth_client().user_login(user_id, password)
    return FrontendClient(platform.frontend_address, platform.trust(), user_id, token)


def _query_until(admin: FrontendClient, query: str, count: int, timeout: float = 10.0) -> list:  # type: ignore[type-arg]
    """Entries reach management within about a second (the frontend's flush period)."""
    deadline = time.monotonic() + timeout
    while True:
        entries = admin.query_audit_logs(query, 100)
        if len(entries) >= count or time.monotonic() > deadline:
            return entries
        time.sleep(0.2)


def test_calls_are_audited_and_queryable(full_platform: Platform) -> None:
    user = f"auditee_{uuid.uuid4().hex[:8]}"
    admin_auth = full_platform.admin()
    admin_auth.user_register(user, "pw", "DataOwner", "auditors")
    admin = _client(full_platform, "admin", "teaclave")
    client = _client(full_platform, user, "pw")

    client.list_functions()  # success
    with pytest.raises(KettleError):
        client.register_function("builtin-echo", arguments=["message"])  # refused at the gate
    with pytest.raises(KettleError) as missing:
        client.get_task(f"task-{uuid.uuid4()}")  # refused by management
    assert missing.value.code == grpc.StatusCode.INVALID_ARGUMENT
    bad = FrontendClient(full_platform.frontend_address, full_platform.trust(), user, "not-a-token")
    with pytest.raises(KettleError) as unauthenticated:
        bad.list_functions()
    assert unauthenticated.value.message == "incorrent credential"

    mine = _query_until(admin, f"user:{user}", 2)
    messages = sorted(e.message for e in mine)
    assert messages[0] == "get_task:status: InvalidArgument, message: \"invalid task id\", details: [], metadata: MetadataMap { headers: {} }"
    assert messages[1] == "list_functions"
    assert all(f"user: {user}" in e.user and 'DataOwner("auditors")' in e.user for e in mine)
    assert [e.result for e in mine if e.message == "list_functions"] == [True]

    gate = _query_until(admin, '"authenticate to register_function"', 1)
    assert any(e.message == "authenticate to register_function" and e.user == "" and not e.result for e in gate)
    failed = _query_until(admin, "message:authenticate AND message:failed", 1)
    assert any(e.message == "authenticate to list_functions: authentication failed" for e in failed)
    newest_first = admin.query_audit_logs("*", 100)
    assert [e.microsecond // 1_000_000 for e in newest_first] == sorted(
        (e.microsecond // 1_000_000 for e in newest_first), reverse=True
    )

    with pytest.raises(KettleError) as refused:
        client.query_audit_logs("*", 10)
    assert (refused.value.code, refused.value.message) == (grpc.StatusCode.PERMISSION_DENIED, "permission denied")
    with pytest.raises(KettleError) as bad_query:
        admin.query_audit_logs("message:(unbalanced", 10)
    assert bad_query.value.message.startswith("audit log error, reason: ")
