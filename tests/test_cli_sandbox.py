"""``kettle sandbox check``: the layers on this machine, tried for real, with a Python and a wasm function."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_sandbox_check_reports_every_layer_and_three_runs(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "kettle", "sandbox", "check", "--json"],
                            env={**os.environ, "KETTLE_HOME": str(tmp_path)}, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["missing"] == []
    assert {layer["name"] for layer in report["layers"] if layer["available"]} >= set(report["required"])
    assert report["runs"]["hello"].startswith("sandbox ok: numpy")
    assert report["runs"]["network"] == "SandboxViolation: the function made a forbidden system call"
    assert report["runs"]["wasm"] == "42"
