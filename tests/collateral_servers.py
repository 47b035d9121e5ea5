"""Real HTTP servers on 127.0.0.1 shaped like AMD's KDS and Intel's PCS/PCCS (API v4).

Each serves a route table (path with query -> status, body, headers) that tests change
while it runs, and records every request, so tests count fetches and serve hostile
answers (404, 500, garbage, another chip's certificate, expired collateral).
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

from kettle.attestation.collateral import vcek_url
from kettle.attestation.snp import SnpTcb


@dataclass
class Route:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


class CollateralServer:
    """A threaded HTTP server answering from ``routes``; unknown paths are 404."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[str] = []
        self.delay = threading.Event()  # when cleared with ``hold``, answers wait for ``release``
        self.delay.set()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests.append(self.path)
                outer.delay.wait(10)
                route = outer.routes.get(self.path, Route(404, b"not found"))
                self.send_response(route.status)
                for name, value in route.headers.items():
                    self.send_header(name, value)
                if "Content-Length" not in route.headers:  # a route may state a wrong length (a cut answer)
                    self.send_header("Content-Length", str(len(route.body)))
                self.end_headers()
                self.wfile.write(route.body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def close(self) -> None:
        self.delay.set()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- AMD KDS

    def serve_vcek(self, product: str, chip_id: bytes, tcb: SnpTcb, der: bytes) -> str:
        """Serve ``der`` where KDS serves the VCEK of ``chip_id`` at ``tcb``; returns the path."""
        path = vcek_url("", product, chip_id, tcb)
        self.routes[path] = Route(200, der, {"Content-Type": "application/x-x509-ca-cert"})
        return path

    # -- Intel PCS / PCCS

    def serve_intel(self, collateral: bytes, *, tee: str, fmspc: str, ca: str) -> None:
        """Serve collateral JSON the way a PCCS does: CRLs as DER with their issuer chain in a
        response header, TCB info and QE identity as Intel's signed JSON with theirs."""
        value = json.loads(collateral)
        quote = urllib.parse.quote
        sgx, base = "/sgx/certification/v4", f"/{tee}/certification/v4"
        self.routes[f"{sgx}/pckcrl?ca={ca}&encoding=der"] = Route(
            200, bytes.fromhex(value["pck_crl"]), {"SGX-PCK-CRL-Issuer-Chain": quote(value["pck_crl_issuer_chain"])}
        )
        self.routes[f"{sgx}/rootcacrl"] = Route(200, bytes.fromhex(value["root_ca_crl"]))
        tcb_body = '{"tcbInfo":' + value["tcb_info"] + ',"signature":"' + value["tcb_info_signature"] + '"}'
        self.routes[f"{base}/tcb?fmspc={fmspc}"] = Route(
            200, tcb_body.encode(), {"TCB-Info-Issuer-Chain": quote(value["tcb_info_issuer_chain"]), "Content-Type": "application/json"}
        )
        qe_body = '{"enclaveIdentity":' + value["qe_identity"] + ',"signature":"' + value["qe_identity_signature"] + '"}'
        self.routes[f"{base}/qe/identity"] = Route(
            200, qe_body.encode(), {"SGX-Enclave-Identity-Issuer-Chain": quote(value["qe_identity_issuer_chain"])}
        )
