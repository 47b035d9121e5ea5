"""The file crypto schemas of ``spec/platform.md`` §5.1 and their validation.

A data owner registers every file with a ``(schema, key, iv)`` triple and, for
inputs, the file's 16-byte integrity tag ("cmac"). The frontend and management
services validate both at registration time and the execution service again
before using them, so the checks and their error texts live here, once. The
texts are Teaclave's (``FileCrypto::new`` and friends) because clients display
and some tests compare them.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "AES_GCM_128",
    "AES_GCM_256",
    "CMAC_LENGTH",
    "MISSING_CRYPTO_INFO",
    "RAW",
    "SCHEMAS",
    "TEACLAVE_FILE_128",
    "FileCryptoError",
    "check_cmac",
    "check_output_schema",
    "missing_output_error",
    "validate_crypto_info",
]

AES_GCM_128: Final = "aes-gcm-128"
AES_GCM_256: Final = "aes-gcm-256"
TEACLAVE_FILE_128: Final = "teaclave-file-128"
RAW: Final = "raw"
SCHEMAS: Final = (AES_GCM_128, AES_GCM_256, TEACLAVE_FILE_128, RAW)

CMAC_LENGTH: Final = 16
MISSING_CRYPTO_INFO: Final = "missing crypto_info"

# Teaclave names the key types in its messages (``AesGcm128Key`` -> "AesGcm128").
_AES_GCM: Final = {AES_GCM_128: ("AesGcm128", 16), AES_GCM_256: ("AesGcm256", 32)}
_AES_GCM_IV_LENGTH: Final = 12
_TEACLAVE_FILE_KEY_LENGTH: Final = 16


class FileCryptoError(ValueError):
    """A crypto info, cmac or encrypted file is unusable; the message is the client-visible text.

    Services map it to gRPC INTERNAL (``spec/platform.md`` §5.1) and the
    execution service uses the message as the task's failure reason.
    """


def validate_crypto_info(schema: str, key: bytes, iv: bytes) -> None:
    """Reject an unknown schema or a key/iv of the wrong length for its schema.

    ``raw`` ignores key and iv entirely, as Teaclave does.
    """
    if schema in _AES_GCM:
        name, key_length = _AES_GCM[schema]
        if len(key) != key_length:
            raise FileCryptoError(f"Invalid key length for {name}: {len(key)}")
        if len(iv) != _AES_GCM_IV_LENGTH:
            raise FileCryptoError(f"Invalid iv length for {name}: {len(iv)}")
    elif schema == TEACLAVE_FILE_128:
        if iv:
            raise FileCryptoError("IV is not empty for teaclave_file_128")
        if len(key) != _TEACLAVE_FILE_KEY_LENGTH:
            raise FileCryptoError(f"Invalid key length for TeaclaveFile128: {len(key)}")
    elif schema != RAW:
        raise FileCryptoError(f"Invalid crypto schema: {schema}")


def check_cmac(cmac: bytes) -> bytes:
    """Return ``cmac`` if it is exactly 16 bytes, the only length any schema produces."""
    if len(cmac) != CMAC_LENGTH:
        raise FileCryptoError(f"Invalid cmac length: {len(cmac)}")
    return cmac


def check_output_schema(schema: str) -> None:
    """Reject ``raw`` for outputs: a result must never leave the platform unencrypted."""
    if schema == RAW:
        raise FileCryptoError("OutputFile: unsupported type")


def missing_output_error(schema: str) -> FileCryptoError:
    """The failure of a task whose function did not create an assigned output (functions.md §4.2)."""
    label = "teaclave_file" if schema == TEACLAVE_FILE_128 else schema
    return FileCryptoError(f"Convert {label}: failed to open src file")
