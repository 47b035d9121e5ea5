"""Every file of the package that is not Python ships in the wheel: the console's pages, styles
and script (``make up`` and ``kettle console`` need no network), the vendor roots, ``py.typed``."""

from __future__ import annotations

import tomllib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "kettle"
PYPROJECT = PACKAGE.parent.parent / "pyproject.toml"


def test_every_non_python_file_of_the_package_is_declared_package_data() -> None:
    patterns = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["package-data"]["kettle"]
    files = [p.relative_to(PACKAGE) for p in PACKAGE.rglob("*")
             if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts]
    assert any(p.parts[0] == "console" for p in files)  # the console's assets are among them
    missing = [str(p) for p in files if not any(p.match(pattern) and len(p.parts) == len(Path(pattern).parts)
                                                 for pattern in patterns)]
    assert missing == []
