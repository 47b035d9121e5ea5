"""Login tokens: Teaclave-compatible JWTs signed with HMAC-SHA512 (``spec/platform.md`` §2.3).

A token proves "the service logged this user in, with this role, until then".
It also names the user's token generation at login (the extra ``gen`` claim):
a password or role change moves the stored generation on, and a token whose
generation is not the stored one no longer authenticates (§12 row 23).
Validation is deliberately narrow: one algorithm, one issuer, one subject, and
our own clock, so that no library default (accepted algorithms, leeway, the
wall clock) silently widens what passes.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt

from kettle.errors import AuthenticationError

__all__ = ["Claims", "TokenAuthority", "generate_secret", "ISSUER", "MIN_SECRET_BYTES", "GENERATION_CLAIM"]

ISSUER = "Teaclave"
"""Kept as Teaclave's value so tokens look the same to existing clients."""

MIN_SECRET_BYTES = 64
"""RFC 7518 §3.2: an HS512 key must be at least as long as the hash (64 bytes)."""

MAX_TOKEN_LENGTH = 4096
"""Our tokens are about 250 bytes; anything far longer is not ours and is
refused before any parsing or HMAC work."""

_ALGORITHM = "HS512"
_REQUIRED_CLAIMS = ("sub", "role", "iss", "exp")

GENERATION_CLAIM = "gen"
"""Kettle's one extra claim. Clients treat tokens as opaque, so Teaclave's SDK is unaffected;
a token without it (issued before Kettle had generations) is generation 0."""


@dataclass(frozen=True)
class Claims:
    """What a valid token says: who (``sub``), as what (``role`` string), until when,
    and at which of the user's token generations it was issued."""

    sub: str
    role: str
    iss: str
    exp: int
    gen: int = 0


def generate_secret() -> bytes:
    """A fresh signing secret. The service keeps it in (sealed) storage, so tokens
    survive restarts of the platform until they expire."""
    return secrets.token_bytes(MIN_SECRET_BYTES)


class TokenAuthority:
    """Issues and checks the tokens of one authentication-service instance.

    ``clock`` returns Unix seconds; it is injectable so expiry can be tested
    to the second.
    """

    def __init__(
        self,
        secret: bytes,
        validity_seconds: int = 86_400,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"the token secret must be at least {MIN_SECRET_BYTES} bytes")
        if validity_seconds <= 0:
            raise ValueError("token validity must be positive")
        self._secret = secret
        self._validity = validity_seconds
        self._clock = clock

    def _key(self, account: str) -> bytes:
        """The HMAC key of one account: tokens of a deleted account never validate for a
        new account that reuses its id, while the claims stay exactly Teaclave's four."""
        if not account:
            return self._secret
        return hmac.new(self._secret, b"kettle-account\0" + account.encode(), hashlib.sha512).digest()

    def issue(self, user_id: str, role_string: str, account: str = "", generation: int = 0) -> str:
        """A token for ``user_id`` acting as ``role_string``, valid from now on
        for the configured validity while the user's token generation stays
        ``generation``. Teaclave's four claims plus the generation."""
        claims = {
            "sub": user_id,
            "role": role_string,
            "iss": ISSUER,
            "exp": int(self._clock()) + self._validity,
            GENERATION_CLAIM: generation,
        }
        return jwt.encode(claims, self._key(account), algorithm=_ALGORITHM)

    def validate(self, user_id: str, token: str, account: str = "", generation: int = 0) -> Claims:
        """The claims of ``token`` if it is ours, unexpired, issued to
        ``user_id`` and at the user's current token ``generation``. Every
        failure is the same "authentication failed", so a caller learns
        nothing about which check refused it."""
        if not token or len(token) > MAX_TOKEN_LENGTH:
            raise _failed()
        payload = self._decode(token, self._key(account))
        claims = _claims_of(payload)
        if (claims.iss != ISSUER or claims.sub != user_id or claims.exp <= self._clock()
                or claims.gen != generation):
            raise _failed()
        return claims

    def _decode(self, token: str, key: bytes) -> dict[str, Any]:
        """Signature and algorithm checks only; the claims are checked by us,
        against our clock, with no leeway (PyJWT would use the wall clock)."""
        try:
            return jwt.decode(
                token,
                key,
                algorithms=[_ALGORITHM],
                options={
                    "require": list(_REQUIRED_CLAIMS),
                    "verify_signature": True,
                    "verify_exp": False,
                    "verify_nbf": False,  # Teaclave does not check nbf (§2.3)
                    "verify_iat": False,
                    "verify_iss": False,
                    "verify_aud": False,
                    "verify_sub": False,
                    "verify_jti": False,
                },
            )
        except jwt.PyJWTError:
            raise _failed() from None


def _claims_of(payload: dict[str, Any]) -> Claims:
    """The typed claims, refusing a payload whose claims have the wrong types
    (``exp`` and ``gen`` must be true integers, not bools or floats)."""
    sub, role, iss, exp = (payload[name] for name in _REQUIRED_CLAIMS)
    gen = payload.get(GENERATION_CLAIM, 0)
    if not all(isinstance(value, str) for value in (sub, role, iss)) or type(exp) is not int or type(gen) is not int:
        raise _failed()
    return Claims(sub=sub, role=role, iss=iss, exp=exp, gen=gen)


def _failed() -> AuthenticationError:
    return AuthenticationError("authentication failed")
