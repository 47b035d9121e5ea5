"""Preparing input files and reading output files, for data owners.

The platform never sees a data owner's plaintext outside the enclave: inputs
are uploaded encrypted, outputs come back encrypted with the key the owner
registered for them. These helpers do the owner's side for every schema
(``aes-gcm-128``, ``aes-gcm-256``, ``teaclave-file-128``, ``raw``); the rules
behind them (nothing half-written, verified before visible, no silent
overwrite, one file per aes-gcm key) are explained in
:mod:`kettle.crypto.recipes`.

Example::

    from kettle.sdk import FileKey, decrypt_file, encrypt_file

    # An input: a fresh key per file, then register what the platform needs.
    key = FileKey.generate("teaclave-file-128")
    key.save("train.key.json")                      # mode 0600: it is a secret
    url = "https://storage.example/bucket/train.enc"
    cmac = encrypt_file("train.csv", "train.enc", key, name="train.enc")  # name = URL's last segment
    # ... upload train.enc to url ...
    input_id = client.register_input_file(url, key.schema, key.key, key.iv, cmac)

    # An output: register its key, run the task, then decrypt what was uploaded.
    out_key = FileKey.generate("aes-gcm-128")
    output_id = client.register_output_file(out_url, out_key.schema, out_key.key, out_key.iv)
    # ... create, approve, invoke and wait for the task; download out_url to model.enc ...
    cmac = client.get_output_file(output_id).cmac      # or the task's tags_map["model"]
    decrypt_file("model.enc", "model.txt", out_key, cmac=cmac)

``teaclave-file-128`` files are bound to a file name (the URL's last path
segment): ``encrypt_file`` embeds ``dst``'s name unless ``name`` is given and
``decrypt_file`` expects ``src``'s name unless ``name`` is given. ``raw``
"encryption" is a copy and its cmac is 16 zero bytes (:data:`RAW_CMAC`): the
platform requires one but never checks it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

from ..crypto import recipes
from ..crypto.recipes import RAW_CMAC, FileKey
from ..crypto.schemas import FileCryptoError

__all__ = ["RAW_CMAC", "FileCryptoError", "FileKey", "decrypt_file", "encrypt_file", "file_cmac"]

StrPath = str | os.PathLike[str]


def encrypt_file(
    src: StrPath | BinaryIO, dst: StrPath, key: FileKey, *, name: str | None = None, overwrite: bool = False
) -> bytes:
    """Encrypt ``src`` (a path or a binary stream) into ``dst`` and return the 16-byte cmac to register.

    ``name``: teaclave-file-128 only, the name bound into the file (default:
    ``dst``'s name); use the last path segment of the URL the file will be
    uploaded to. An existing ``dst`` is refused unless ``overwrite``. An
    aes-gcm key encrypts one file only (a second use raises
    :class:`FileCryptoError`).
    """
    source = _path(src) if isinstance(src, (str, os.PathLike)) else src
    return recipes.encrypt(source, _path(dst), key, name=name, overwrite=overwrite)


def decrypt_file(
    src: StrPath,
    dst: StrPath,
    key: FileKey,
    *,
    cmac: bytes | None = None,
    name: str | None = None,
    overwrite: bool = False,
) -> bytes:
    """Decrypt ``src`` into ``dst``, verified in full before ``dst`` appears; return the file's cmac.

    Pass the ``cmac`` the platform reported (``get_output_file(...).cmac`` or
    the task's ``tags_map``) so that a replaced file is refused. ``name``:
    teaclave-file-128 only, the name the file was created with (default:
    ``src``'s name).
    """
    return recipes.decrypt(_path(src), _path(dst), key, cmac=cmac, name=name, overwrite=overwrite)


def file_cmac(path: StrPath, key: FileKey, *, name: str | None = None) -> bytes:
    """The cmac to register for an already encrypted file, after checking that ``key`` opens all of it."""
    return recipes.cmac(_path(path), key, name=name)


def _path(value: StrPath) -> Path:
    return Path(os.fspath(value))
