"""The files a running function may touch, by the names registered with it (``spec/functions.md`` §4.1–4.2).

Only what was assigned to the task is there; any other name fails with the
reference's texts (note: the input one ends with a period, the output one not).
Fetching, decrypting and re-encrypting the files around the function is the
execution node's job and is not in this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

from ..functions import FunctionError

INVALID_INPUT = "Invalid input file identifier."
INVALID_OUTPUT = "Invalid output file identifier"


class FileRuntime:
    """Staged plaintext files: inputs readable from the start on every open, outputs created or truncated."""

    def __init__(self, inputs: Mapping[str, Path] | None = None, outputs: Mapping[str, Path] | None = None) -> None:
        self._inputs = dict(inputs or {})
        self._outputs = dict(outputs or {})

    def open_input(self, name: str) -> BinaryIO:
        path = self._inputs.get(name)
        if path is None:
            raise FunctionError(INVALID_INPUT)
        return path.open("rb")

    def create_output(self, name: str) -> BinaryIO:
        path = self._outputs.get(name)
        if path is None:
            raise FunctionError(INVALID_OUTPUT)
        return path.open("wb")
