"""The SGX-shaped 432-byte quote body that Teaclave reports carry (``spec/attestation.md`` §3).

Every backend's evidence ends up, inside the attestation service's report, as one
of these bodies: real SGX quotes verbatim, other TEEs (and the simulation) as a
body the AS synthesises. Verifiers only ever read the fields Teaclave's clients
read: MRENCLAVE at 112, MRSIGNER at 176, REPORT_DATA at 368, plus the ATTRIBUTES
flags for the debug policy.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import AttestationError

QUOTE_BODY_SIZE = 432
DEBUG_FLAG = 0x02
INIT_FLAG = 0x01
MODE64BIT_FLAG = 0x04

KETTLE_QE_VENDOR_ID = bytes.fromhex("4b6574746c65000000000000000000ab")
"""QE vendor id of bodies Kettle synthesises ("Kettle" + padding), so they are never
mistaken for quotes produced by Intel's quoting enclave."""


@dataclass(frozen=True)
class QuoteBody:
    mr_enclave: bytes
    mr_signer: bytes
    report_data: bytes
    attributes_flags: int = INIT_FLAG | MODE64BIT_FLAG
    version: int = 3
    key_type: int = 2
    qe_vendor_id: bytes = KETTLE_QE_VENDOR_ID
    isv_prod_id: int = 0
    isv_svn: int = 0

    @property
    def debug(self) -> bool:
        return bool(self.attributes_flags & DEBUG_FLAG)

    def to_bytes(self) -> bytes:
        if len(self.mr_enclave) != 32 or len(self.mr_signer) != 32:
            raise ValueError("MRENCLAVE and MRSIGNER are 32 bytes each")
        if len(self.report_data) != 64:
            raise ValueError("REPORT_DATA is 64 bytes")
        body = bytearray(QUOTE_BODY_SIZE)
        struct.pack_into("<HH", body, 0, self.version, self.key_type)
        body[12:28] = self.qe_vendor_id
        struct.pack_into("<QQ", body, 96, self.attributes_flags, 0x03)
        body[112:144] = self.mr_enclave
        body[176:208] = self.mr_signer
        struct.pack_into("<HH", body, 304, self.isv_prod_id, self.isv_svn)
        body[368:432] = self.report_data
        return bytes(body)

    @classmethod
    def parse(cls, data: bytes) -> QuoteBody:
        """Parse exactly one 432-byte body, with the version/key-type rules of Teaclave's parser."""
        if len(data) != QUOTE_BODY_SIZE:
            raise AttestationError(f"quote body is {len(data)} bytes, expected {QUOTE_BODY_SIZE}")
        version, key_type = struct.unpack_from("<HH", data, 0)
        if not ((version in (1, 2) and key_type in (0, 1)) or (version == 3 and key_type in (2, 3))):
            raise AttestationError(f"unsupported quote version {version} with key type {key_type}")
        (flags,) = struct.unpack_from("<Q", data, 96)
        prod_id, svn = struct.unpack_from("<HH", data, 304)
        return cls(
            mr_enclave=bytes(data[112:144]),
            mr_signer=bytes(data[176:208]),
            report_data=bytes(data[368:432]),
            attributes_flags=flags,
            version=version,
            key_type=key_type,
            qe_vendor_id=bytes(data[12:28]),
            isv_prod_id=prod_id,
            isv_svn=svn,
        )
