"""``builtin-rsa-sign`` (``spec/functions.md`` §5.12): an RSA signature of the ``data`` argument.

The key is a data owner's input: a PKCS#1 ``RSAPrivateKey`` in DER, 2048 to
4096 bits, as the reference requires (not PKCS#8, not PEM). The signature is
RSASSA-PKCS1-v1_5 with SHA-256, deterministic, returned in standard base64.
"""

from __future__ import annotations

import base64
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import load_der_private_key

from . import BuiltinFunction, FunctionError, FunctionRuntime
from .arguments import STRING

MIN_BITS, MAX_BITS = 2048, 4096
INVALID_ENCODING = "InvalidEncoding"
MAX_KEY_BYTES = 16 * 1024
"""A 4096-bit PKCS#1 key is about 2.4 KB; anything far larger is not a key."""


def _is_pkcs1_rsa_private_key(der: bytes) -> bool:
    """A DER SEQUENCE whose first element is INTEGER 0 followed by another INTEGER (the modulus).

    PKCS#8 starts with INTEGER 0 and then an AlgorithmIdentifier SEQUENCE, which
    is how the two are told apart before parsing."""
    if len(der) < 2 or der[0] != 0x30:
        return False
    header = 2 if der[1] < 0x80 else 2 + (der[1] & 0x7F)
    return der[header:header + 3] == b"\x02\x01\x00" and der[header + 3:header + 4] == b"\x02"


def load_key(der: bytes) -> rsa.RSAPrivateKey:
    if len(der) > MAX_KEY_BYTES or not _is_pkcs1_rsa_private_key(der):
        raise FunctionError(INVALID_ENCODING)
    try:
        key = load_der_private_key(der, password=None)
    except (ValueError, TypeError):
        raise FunctionError(INVALID_ENCODING) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise FunctionError(INVALID_ENCODING)
    if not MIN_BITS <= key.key_size <= MAX_BITS:
        raise FunctionError(f"InvalidKeyLength: the modulus has {key.key_size} bits, not {MIN_BITS} to {MAX_BITS}")
    return key


def rsa_sign(arguments: dict[str, Any], runtime: FunctionRuntime) -> str:
    with runtime.open_input("rsa_key") as reader:
        der = reader.read(MAX_KEY_BYTES + 1)
    key = load_key(der)
    signature = key.sign(arguments["data"].encode("utf-8"), padding.PKCS1v15(), hashes.SHA256())
    return base64.b64encode(signature).decode("ascii")


FUNCTION = BuiltinFunction(
    name="builtin-rsa-sign",
    run=rsa_sign,
    arguments={"data": STRING},
    inputs=("rsa_key",),
    description="Signs the data argument with the RSA key input (PKCS#1 DER, 2048–4096 bits): PKCS#1 v1.5, SHA-256, base64.",
)
