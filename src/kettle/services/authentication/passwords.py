"""Password hashing for the user database: argon2id, with Kettle's length limit.

Teaclave uses PBKDF2-HMAC-SHA512; the database is private to this service, so
Kettle is free to use a memory-hard scheme instead (``spec/platform.md`` §2.2).
"""

from __future__ import annotations

import functools
import uuid

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError

from kettle.errors import AuthenticationError

__all__ = [
    "MAX_PASSWORD_BYTES",
    "check_new_password",
    "hash_password",
    "verify_password",
    "dummy_hash",
    "generate_password",
]

# OWASP's argon2id recommendation (Password Storage Cheat Sheet): 19 MiB of
# memory, 2 passes, 1 lane. One verification takes about 25 ms on a 2-core
# machine, which keeps logins responsive while making each guess cost an
# attacker 19 MiB of memory. A 16-byte salt and a 32-byte tag are the RFC 9106
# defaults. Hashes are stored in PHC format, so the parameters travel with each
# hash and can be raised later without invalidating stored passwords.
_HASHER = PasswordHasher(
    time_cost=2,
    memory_cost=19 * 1024,  # KiB
    parallelism=1,
    hash_len=32,
    salt_len=16,
    type=Type.ID,
)

MAX_PASSWORD_BYTES = 1024
"""Kettle addition: Teaclave accepts any length. A bound stops a client from
making the service hash megabytes per request; no real password is this long."""


def _utf8_length(password: str) -> int | None:
    """The UTF-8 size, or None for text that has no UTF-8 form (lone surrogates)."""
    try:
        return len(password.encode("utf-8"))
    except UnicodeEncodeError:
        return None


def check_new_password(password: str) -> None:
    """Refuse a password that cannot be hashed as given: longer than
    :data:`MAX_PASSWORD_BYTES` in UTF-8, or not encodable as UTF-8 at all."""
    length = _utf8_length(password)
    if length is None or length > MAX_PASSWORD_BYTES:
        raise AuthenticationError("invalid password")


def hash_password(password: str) -> str:
    """A salted argon2id hash in PHC string form. CPU-heavy: call it off the
    event loop. Callers check the password first (:func:`check_new_password`)."""
    return _HASHER.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """Whether ``password`` matches. Never raises: a malformed or foreign hash
    is just a failed login, never an error that reveals something."""
    length = _utf8_length(password)
    if length is None or length > MAX_PASSWORD_BYTES:
        return False
    try:
        return _HASHER.verify(password_hash, password)
    except (VerificationError, InvalidHashError, UnicodeEncodeError):
        # UnicodeEncodeError: argon2-cffi encodes the hash as ASCII.
        return False


@functools.cache
def dummy_hash() -> str:
    """A hash no password is known for, verified against when a login names an
    unknown user so that the answer takes as long as for a known one."""
    return hash_password(uuid.uuid4().hex)


def generate_password() -> str:
    """A fresh password for ResetUserPassword: a v4 UUID as 32 lowercase hex
    digits, exactly like Teaclave (§2.4), so clients can rely on its shape."""
    return uuid.uuid4().hex
