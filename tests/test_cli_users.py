"""`kettle user register|login|update|passwd|reset|delete|list` against a live platform."""

from __future__ import annotations

import json
import os
import stat
import uuid

from conftest import Platform


def test_user_commands_end_to_end(platform: Platform) -> None:
    suffix = uuid.uuid4().hex[:8]
    manager, owner = f"mgr_{suffix}", f"owner_{suffix}"

    def ok(*args: str, password: str | None = None) -> str:
        env = {"KETTLE_PASSWORD": password} if password is not None else None
        result = platform.kettle(*args, env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    ok("user", "login", "admin", password="teaclave")
    credentials = platform.home / "credentials.json"
    assert stat.S_IMODE(os.stat(credentials).st_mode) == 0o600
    ok("user", "register", manager, "--role", "DataOwnerManager", "--attribute", f"grp{suffix}", password="m-pw")
    ok("user", "login", manager, password="m-pw")
    ok("user", "register", owner, "--role", "DataOwner", "--attribute", f"grp{suffix}", password="o-pw")
    assert json.loads(ok("user", "list", f"grp{suffix}", "--json")) == [owner]
    new_password = json.loads(ok("user", "reset", owner, "--json"))["password"]
    assert len(new_password) == 32
    ok("user", "update", owner, "--role", "DataOwner", "--attribute", f"grp{suffix}", password="o-pw2")
    ok("user", "login", owner, password="o-pw2")
    ok("user", "passwd", password="o-pw3")
    ok("user", "login", owner, password="o-pw3")

    refused = platform.kettle("user", "list", "anything")
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1] == "error: permission denied"

    ok("user", "login", "admin", password="teaclave")
    ok("user", "delete", owner)
    gone = platform.kettle("user", "login", owner, env={"KETTLE_PASSWORD": "o-pw3"})
    assert gone.returncode == 1 and gone.stderr.strip().splitlines()[-1] == "error: authentication failed"
    assert "Traceback" not in gone.stderr
