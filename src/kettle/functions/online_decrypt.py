"""``builtin_online_decrypt`` (``spec/functions.md`` §5.15): AES-GCM decryption of an argument.

Key, nonce and ciphertext arrive base64-encoded in the arguments; the plaintext
is the return value. Base64 errors carry the reference's library messages
(``Invalid byte 33, offset 4.``, ``Invalid last symbol 66, offset 3.``,
``Encoded text cannot have a 6-bit remainder.``), computed for the standard
alphabet with canonical ``=`` padding. Kettle choice: a nonce shorter than 12
bytes is a ``decryption error`` (the reference crashes).
"""

from __future__ import annotations

import binascii
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import BuiltinFunction, FunctionError, FunctionRuntime
from .arguments import STRING

KEY_BYTES = {"aes128gcm": 16, "aes256gcm": 32}
INVALID_ALGORITHM = "Invalid algorithm"
DECRYPTION_ERROR = "decryption error"
NOT_UTF8 = "base64 decoded error"
NONCE_BYTES = 12

_SYMBOLS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_ALPHABET = frozenset(_SYMBOLS)
_ALPHABET_INDEX = {byte: index for index, byte in enumerate(_SYMBOLS)}
_PAD = ord("=")


def decode_base64(text: str) -> bytes:
    """Standard base64 with the reference library's error texts."""
    data = text.encode("utf-8")
    body = data.rstrip(b"=")
    padding = len(data) - len(body)
    for offset, byte in enumerate(body):
        if byte not in _ALPHABET:
            raise FunctionError(f"Invalid byte {byte}, offset {offset}.")
    if len(body) % 4 == 1:
        raise FunctionError("Encoded text cannot have a 6-bit remainder.")
    expected_padding = (4 - len(body) % 4) % 4
    if padding and padding != expected_padding:
        # the first "=" that cannot be there: after the padding allowed, or all of it if too short
        offset = len(body) + (expected_padding if padding > expected_padding else 0)
        raise FunctionError(f"Invalid byte {_PAD}, offset {offset}.")
    # the last symbol must not carry bits beyond the encoded bytes
    spare_bits = {2: 4, 3: 2}.get(len(body) % 4, 0)
    if spare_bits and _ALPHABET_INDEX[body[-1]] & ((1 << spare_bits) - 1):
        raise FunctionError(f"Invalid last symbol {body[-1]}, offset {len(body) - 1}.")
    return binascii.a2b_base64(body + b"=" * expected_padding, strict_mode=True)



def online_decrypt(arguments: dict[str, Any], runtime: FunctionRuntime) -> str:
    algorithm = arguments["algorithm"]
    if algorithm not in KEY_BYTES:
        raise FunctionError(INVALID_ALGORITHM)
    key = decode_base64(arguments["key"])
    nonce = decode_base64(arguments["nonce"])
    sealed = decode_base64(arguments["encrypted_data"])
    if len(key) != KEY_BYTES[algorithm] or len(nonce) < NONCE_BYTES:
        raise FunctionError(DECRYPTION_ERROR)
    try:
        plaintext = AESGCM(key).decrypt(nonce[:NONCE_BYTES], sealed, None)
    except (InvalidTag, ValueError):
        raise FunctionError(DECRYPTION_ERROR) from None
    try:
        return plaintext.decode("utf-8")
    except UnicodeDecodeError:
        raise FunctionError(NOT_UTF8) from None


FUNCTION = BuiltinFunction(
    name="builtin_online_decrypt",
    run=online_decrypt,
    arguments={"key": STRING, "nonce": STRING, "encrypted_data": STRING, "algorithm": STRING},
    description="Decrypts base64 AES-GCM data given in the arguments (aes128gcm or aes256gcm); returns the text.",
)
