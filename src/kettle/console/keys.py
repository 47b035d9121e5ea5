"""The console's own record of the files its user registered: where each is and its key.

The platform never gives a file's URL or key back (not even to its owner), so to
download and decrypt an output later the console keeps both, on this machine
only: ``$KETTLE_HOME/console-files.json``, mode 0600, beside the saved login.
A file registered elsewhere (the CLI, the SDK) is not in it; its owner can still
decrypt it with ``kettle file decrypt`` and their own key file.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from ..crypto.recipes import FileKey
from ..errors import InvalidArgument

STORE_FILE = "console-files.json"


@dataclass(frozen=True)
class KnownFile:
    data_id: str
    url: str
    key: FileKey
    label: str
    cmac: str = ""
    """An input's cmac (hex) as registered; empty for an output."""


class KeyStore:
    def __init__(self, home: Path) -> None:
        self.path = home / STORE_FILE
        self._lock = threading.Lock()

    def get(self, data_id: str) -> KnownFile | None:
        return self._read().get(data_id)

    def all(self) -> dict[str, KnownFile]:
        return self._read()

    def add(self, known: KnownFile) -> None:
        with self._lock:
            files = self._read()
            files[known.data_id] = known
            doc = {f.data_id: {"url": f.url, "key": json.loads(f.key.to_json()), "label": f.label, "cmac": f.cmac}
                   for f in files.values()}
            temporary = self.path.with_suffix(".tmp")
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, self.path)

    def _read(self) -> dict[str, KnownFile]:
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise InvalidArgument(f"{self.path} is damaged ({exc}); move it away to start a new one") from None
        files = {}
        for data_id, entry in doc.items():
            files[data_id] = KnownFile(data_id, entry["url"], FileKey.from_json(json.dumps(entry["key"])),
                                       entry.get("label", ""), entry.get("cmac", ""))
        return files
