"""The user's saved login: ``$KETTLE_HOME/credentials.json`` (mode 0600), written by
``kettle user login`` and by the console's login page, read by every command that
calls the platform as a user."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .config import Config
from .errors import AuthenticationError

CREDENTIALS_FILE = "credentials.json"
NOT_LOGGED_IN = "not logged in: run `kettle user login ID`"


def credentials_path(config: Config) -> Path:
    return config.home / CREDENTIALS_FILE


def saved_credentials(config: Config) -> tuple[str, str]:
    """The (id, token) of the last login; AuthenticationError when there is none."""
    try:
        saved = json.loads(credentials_path(config).read_text())
        user_id, token = saved["id"], saved["token"]
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        raise AuthenticationError(NOT_LOGGED_IN) from None
    if not isinstance(user_id, str) or not isinstance(token, str):
        raise AuthenticationError(NOT_LOGGED_IN)
    return user_id, token


def save_credentials(config: Config, user_id: str, token: str) -> None:
    """Replace the saved login; the file is created with mode 0600 (the token is a secret)."""
    fd = os.open(credentials_path(config), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"id": user_id, "token": token}, f)
