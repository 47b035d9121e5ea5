"""A party's trail as the SDK hands it out: the stored entries, the signed head, and their offline verification.

``FrontendClient.my_trail()`` fetches it; :func:`verify_trail` checks it against
nothing but the client's trust anchors (the attestation service's root and the
auditor-signed enclave info): the chain's structure (:func:`kettle.model.trail.verify_chain`)
and management's attested signature on the head. A trail saved with
:meth:`Trail.to_json` verifies the same way later (``kettle audit verify-trail FILE``).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidArgument
from ..model import trail as rules
from ..model.trail import Check, SignedHead, TrailEntry, TrailError


@dataclass(frozen=True)
class Trail:
    party: str
    entries: tuple[bytes, ...]
    """Each entry's exact stored bytes, in storage order."""
    signed_head: bytes
    """Empty when the platform holds no head."""

    def described(self) -> list[dict[str, Any]]:
        """The entries for reading; one that does not decode is shown with the reason."""
        views: list[dict[str, Any]] = []
        for position, raw in enumerate(self.entries, 1):
            try:
                views.append(rules.describe(TrailEntry.from_bytes(raw)))
            except TrailError as exc:
                views.append({"position": position, "error": str(exc)})
        return views

    def to_json(self) -> dict[str, Any]:
        return {
            "party": self.party,
            "entries": [base64.b64encode(e).decode() for e in self.entries],
            "signed_head": base64.b64encode(self.signed_head).decode(),
        }

    @classmethod
    def from_json(cls, doc: Any) -> Trail:
        try:
            if not isinstance(doc, dict) or set(doc) != {"party", "entries", "signed_head"}:
                raise ValueError("expected the fields party, entries and signed_head")
            if not isinstance(doc["party"], str) or not isinstance(doc["entries"], list):
                raise ValueError("party must be text and entries a list")
            return cls(doc["party"], tuple(base64.b64decode(e, validate=True) for e in doc["entries"]),
                       base64.b64decode(doc["signed_head"], validate=True))
        except (ValueError, TypeError, binascii.Error) as exc:
            raise InvalidArgument(f"not a saved trail: {exc}") from None


@dataclass(frozen=True)
class TrailVerdict:
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def reason(self) -> str:
        return "; ".join(f"{c.name}: {c.reason}" for c in self.checks if not c.ok)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [c.to_json() for c in self.checks]}


def chain_checks(trail: Trail) -> list[Check]:
    """The structural checks; the head's bytes are taken from its signed envelope."""
    head = b""
    if trail.signed_head:
        try:
            head = SignedHead.from_bytes(trail.signed_head).head
        except TrailError as exc:
            return [*rules.verify_chain(trail.party, trail.entries, b"")[:3], Check("head", False, str(exc))]
    return rules.verify_chain(trail.party, trail.entries, head)


def verdict(checks: Sequence[Check]) -> TrailVerdict:
    return TrailVerdict(tuple(checks))
