"""Unsafe production settings refuse to start; an unknown service is one clear line.

(Supervision, restarts and crash loops: ``tests/test_supervisor.py``.)
"""

from __future__ import annotations

import pytest

from conftest import Platform
from kettle.errors import KettleError
from kettle.launcher import spawn


def test_default_admin_password_is_refused_outside_dev_mode(home_factory) -> None:  # type: ignore[no-untyped-def]
    platform: Platform = home_factory()
    text = (platform.home / "kettle.toml").read_text().replace("dev_mode = true", "dev_mode = false")
    (platform.home / "kettle.toml").write_text(text)
    from kettle.config import load_config

    platform.config = load_config(platform.home)
    platform.start(services=("storage",))
    with pytest.raises(KettleError, match="refusing to start: the bootstrap admin password is the default one"):
        spawn("authentication", platform.config)


def test_configured_admin_password_outside_dev_mode(home_factory) -> None:  # type: ignore[no-untyped-def]
    platform: Platform = home_factory(extra='[authentication]\nadmin_password = "a-long-unguessable-one"\n')
    text = (platform.home / "kettle.toml").read_text().replace("dev_mode = true", "dev_mode = false")
    (platform.home / "kettle.toml").write_text(text)
    from kettle.config import load_config

    platform.config = load_config(platform.home)
    platform.start()
    client = platform.auth_client()
    client.user_login("admin", "a-long-unguessable-one")
    with pytest.raises(KettleError, match="authentication failed"):
        platform.auth_client().user_login("admin", "teaclave")


def test_unknown_service_is_one_clear_line(platform: Platform) -> None:
    result = platform.kettle("service", "frontdoor")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == "error: unknown or not yet available service 'frontdoor'"
    assert "Traceback" not in result.stderr
