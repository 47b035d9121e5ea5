"""Running ``kettle console`` for tests: a user's own Kettle home, the console process, Debian's chromium.

Each console serves one user, as on that user's own machine: its home holds the
platform's configuration and trust files (copied from the platform's home) and
that user's saved login; nothing else of the platform's home.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

CHROMIUM = "/usr/bin/chromium"
CONSOLE_LINE = re.compile(r"^Kettle console: (http://127\.0\.0\.1:(\d+)/\?secret=([A-Za-z0-9_-]+))$")
START_TIMEOUT_SECS = 60


def user_home(platform_home: Path, home: Path, config_text: str | None = None) -> Path:
    """A user's Kettle home for the platform of ``platform_home``: its kettle.toml (or ``config_text``)
    and its trust files, nothing else."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "kettle.toml").write_text(config_text if config_text is not None
                                      else (platform_home / "kettle.toml").read_text())
    shutil.copytree(platform_home / "trust", home / "trust", dirs_exist_ok=True)
    return home


class ConsoleProcess:
    """``kettle console`` as a user starts it; :attr:`url` is the line it printed."""

    def __init__(self, home: Path, port: int = 0) -> None:
        self.home = home
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kettle", "console", "--port", str(port)],
            env={**os.environ, "KETTLE_HOME": str(home), "COLUMNS": "400"},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.stderr: list[str] = []
        threading.Thread(target=self._drain, args=(self.process.stderr,), daemon=True).start()
        self.url, self.port, self.secret = self._announced()

    def _drain(self, stream: IO[str] | None) -> None:
        """Keep what the console writes on stderr, also in ``console.log`` of its home (for a failed test)."""
        assert stream is not None
        with (self.home / "console.log").open("a") as log:
            for line in stream:
                self.stderr.append(line)
                log.write(line)
                log.flush()

    def _announced(self) -> tuple[str, int, str]:
        assert self.process.stdout is not None
        timer = threading.Timer(START_TIMEOUT_SECS, self.process.kill)
        timer.start()
        try:
            line = self.process.stdout.readline().strip()
        finally:
            timer.cancel()
        match = CONSOLE_LINE.match(line)
        if match is None:
            self.stop()
            raise AssertionError(f"kettle console printed {line!r}; stderr: {''.join(self.stderr)}")
        return match.group(1), int(match.group(2)), match.group(3)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base(self) -> str:
        """The path prefix every page lives under, as the console derives it from the secret."""
        from kettle.console.guard import RunSecret

        return RunSecret(self.secret).base

    def at(self, path: str) -> str:
        """The URL of a console page, e.g. ``at("/inbox")``."""
        return self.origin + self.base + path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()

    def __enter__(self) -> ConsoleProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def chromium_path() -> str:
    """Debian's chromium, which Playwright drives (its own browser download is not used)."""
    path = shutil.which("chromium") or CHROMIUM
    if not Path(path).exists():
        raise AssertionError("chromium is not installed: .ci/run installs Debian's chromium package")
    return path
