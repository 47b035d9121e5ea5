"""`make up` starts the platform; another process logs in as admin, registers a user who logs in;
`kettle attest` says verified; Ctrl-C stops every service cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from conftest import ALL_SERVICES, REPO, Platform, platform_config_text
from kettle.config import load_config

READY_LINE = "Kettle is ready"


def _pids_of_children(parent: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_make_up_then_clients_from_another_process(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    # Free ports, so a developer's own `make up` on the default ports is not disturbed.
    (home / "kettle.toml").write_text(platform_config_text())
    env = {**os.environ, "KETTLE_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    up = subprocess.Popen(
        ["make", "-s", "up"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    output: list[str] = []
    try:
        deadline = time.monotonic() + 240
        assert up.stdout is not None
        while time.monotonic() < deadline:
            line = up.stdout.readline()
            if not line:
                break
            output.append(line)
            if line.startswith(READY_LINE):
                break
        text = "".join(output)
        assert any(line.startswith(READY_LINE) for line in output), text
        assert "Admin account: admin / teaclave" in text
        assert "as_root_ca.pem" in text and "enclave_info.toml" in text
        config = load_config(home)
        assert config.endpoint("authentication", api=True).target in text

        platform = Platform(config)
        admin = platform.admin()
        admin.user_register("made_up_user", "pw-made-up", "DataOwner", "org")
        assert platform.auth_client().user_login("made_up_user", "pw-made-up")

        attest = platform.kettle("attest", platform.auth_address)
        assert attest.returncode == 0 and "verified" in attest.stdout, attest.stdout + attest.stderr

        kettle_pid = next(p for p in _pids_of_children(up.pid) if p)  # make's child: `kettle up`
        services = _pids_of_children(kettle_pid)
        assert len(services) == len(ALL_SERVICES) + 1, services  # and the attestation service
    finally:
        os.killpg(up.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        rest, _ = up.communicate(timeout=60)
    assert "stopping Kettle" in rest, rest
    for pid in services:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    # make itself dies of the SIGINT it forwards (-2) or reports it (2); kettle up exits 0.
    assert up.returncode in (0, 2, -signal.SIGINT), up.returncode
