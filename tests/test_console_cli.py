"""``kettle console`` as a command: what it prints, where it listens, ``--open``, bad ports.

The pages themselves are tested in a browser (test_console_e2e.py, test_console_security.py).
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import Platform
from console_harness import ConsoleProcess, user_home


def test_it_prints_one_line_with_its_url_and_listens_on_127_0_0_1_only(platform: Platform, tmp_path: Path) -> None:
    with ConsoleProcess(user_home(platform.home, tmp_path / "home")) as console:
        assert console.url.startswith(f"http://127.0.0.1:{console.port}/?secret=")
        assert len(console.secret) >= 43  # 32 random bytes
        assert httpx.get(console.url, follow_redirects=False).status_code == 303
        # Bound to 127.0.0.1 itself, not to every address: another loopback address finds nothing.
        with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.2", console.port), timeout=5):
            pass
    with ConsoleProcess(user_home(platform.home, tmp_path / "home")) as second:
        assert second.secret != console.secret  # a new secret each run


def test_open_hands_the_url_to_the_users_browser_through_a_file_only_they_can_read(platform: Platform, tmp_path: Path) -> None:
    opened = tmp_path / "opened.txt"
    browser = tmp_path / "browser.sh"
    browser.write_text(f'#!/bin/sh\nprintf "%s" "$1" > {opened}\n')
    browser.chmod(browser.stat().st_mode | stat.S_IXUSR)
    home = user_home(platform.home, tmp_path / "home")
    process = subprocess.Popen([sys.executable, "-m", "kettle", "console", "--open"],
                               env={**os.environ, "KETTLE_HOME": str(home), "BROWSER": str(browser), "COLUMNS": "400"},
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        url = line.removeprefix("Kettle console: ")
        for _ in range(100):
            if opened.exists() and opened.read_text():
                break
            time.sleep(0.1)
        # The browser is given a file only this user may read, which sends it to the URL: the
        # URL itself (with the secret) never appears on a command line other local users can see.
        given = opened.read_text()
        assert url not in given and given.startswith("file://")
        redirect = Path(given.removeprefix("file://"))
        assert stat.S_IMODE(redirect.stat().st_mode) == 0o600
        assert f'content="0;url={url}"' in redirect.read_text()
    finally:
        process.terminate()
        process.wait(10)


def test_a_port_in_use_or_out_of_range_is_a_one_line_error(platform: Platform, tmp_path: Path) -> None:
    home = user_home(platform.home, tmp_path / "home")
    env = {**os.environ, "KETTLE_HOME": str(home), "COLUMNS": "400"}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "kettle", "console", "--port", str(port)],
                                env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "error:" in result.stderr and "in use" in result.stderr
    assert "Kettle console:" not in result.stdout
    result = subprocess.run([sys.executable, "-m", "kettle", "console", "--port", "70000"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "--port must be between 0 and 65535" in result.stderr
