"""The acceptance path: admin logs in, registers a user, that user logs in; `kettle attest` says verified."""

from __future__ import annotations

import json

from conftest import Platform


def test_admin_registers_user_who_logs_in(platform: Platform) -> None:
    admin = platform.admin()
    admin.user_register("smoke_user", "smoke-pw", "DataOwner", "bank")
    user = platform.auth_client()
    token = user.user_login("smoke_user", "smoke-pw")
    assert token.count(".") == 2
    assert "smoke_user" in admin.list_users("any")


def test_kettle_attest_says_verified(platform: Platform) -> None:
    result = platform.kettle("attest", platform.auth_address)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "verified" in result.stdout and "NOT verified" not in result.stdout
    data = json.loads(platform.kettle("attest", platform.auth_address, "--json").stdout)
    assert data["verified"] is True and data["service"] == "authentication" and data["simulation"] is True
