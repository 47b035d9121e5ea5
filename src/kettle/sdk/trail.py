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
from dataclasses import dataclass
from typing import Any

from ..attestation.signed import AttestedSignature, examine_signature
from ..errors import AttestationError, InvalidArgument
from ..model import trail as rules
from ..model.trail import HEAD_PURPOSE, Check, SignedHead, TrailEntry, TrailError
from .attested import ClientTrust

SIGNER = "management"
"""The only service whose signature makes a head: the one that keeps the trails."""


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
        if not isinstance(doc, dict) or set(doc) != {"party", "entries", "signed_head"}:
            raise InvalidArgument("not a saved trail: expected the fields party, entries and signed_head")
        if not isinstance(doc["party"], str) or not isinstance(doc["entries"], list):
            raise InvalidArgument("not a saved trail: party must be text and entries a list")
        try:
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


def signature_checks(signed_head: bytes, trust: ClientTrust) -> list[Check]:
    """Management's attested signature on the head's exact bytes, each check of it named
    ``head signature: …`` (purpose, signing time, certificate, report, measurement, signature)."""
    if not signed_head:
        return [Check("head signature", False, "there is no signed head")]
    try:
        head = SignedHead.from_bytes(signed_head)
        signed = AttestedSignature.from_json(rules.decode_json(head.signature, "head signature"))
    except (TrailError, AttestationError) as exc:
        return [Check("head signature", False, f"the head's signature does not decode: {exc}")]
    examined = examine_signature(signed, head.head, purpose=HEAD_PURPOSE, expected_service=SIGNER,
                                 verifier=trust.verifier)
    checks = [Check(f"head signature: {c.name}", c.ok, c.detail) for c in examined.checks]
    if not examined.ok and all(c.ok for c in checks):
        # The examination stopped before judging the signer (a chain it could not follow).
        checks.append(Check("head signature", False, examined.reason))
    return checks


def verify_trail(trail: Trail, trust: ClientTrust) -> TrailVerdict:
    """Every check of ``trail``, offline: its chain, and that the head was signed by the
    attested management service (``trust``: the AS root and the auditor-signed enclave info).
    An empty trail without a head has nothing to sign and verifies on its chain alone."""
    checks = chain_checks(trail)
    if trail.signed_head or trail.entries:
        checks += signature_checks(trail.signed_head, trust)
    return TrailVerdict(tuple(checks))
