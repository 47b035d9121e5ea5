"""The access-control service: answers the frontend's "may this role category call this API?" (Appendix A.4).

A thin adapter over :class:`AccessPolicy`. Only the frontend and management may
call it (the internal endpoint's attested-peer gate, ``rpc/inbound.py``). A
malformed question (empty role or api) is answered "no" rather than with an
error, so the frontend's gate turns it into the usual "permission denied"; a
failure to evaluate the policy is an INTERNAL error, which the frontend also
treats as a denial — it never fails open.
"""

from __future__ import annotations

import logging

import grpc

from ...config import Config
from ...rpc.generated import kettle_access_control_pb2 as pb
from ...rpc.generated import kettle_access_control_pb2_grpc as pb_grpc
from ...rpc.status import rpc_method
from ..runtime import ServiceRuntime
from .policy import AccessPolicy

log = logging.getLogger(__name__)


class AccessControlServicer(pb_grpc.KettleAccessControlServicer):
    def __init__(self, policy: AccessPolicy) -> None:
        self._policy = policy

    @rpc_method
    async def AuthorizeApi(
        self, request: pb.AuthorizeApiRequest, context: grpc.aio.ServicerContext
    ) -> pb.AuthorizeApiResponse:
        # Checked here, not in the policy: casbin would let PlatformAdmin do the
        # action "" (any action), but an empty api name is a caller bug, not a request.
        if not request.user_role or not request.api:
            return pb.AuthorizeApiResponse(accept=False)
        # Any exception from the evaluation becomes INTERNAL through rpc_method.
        accept = self._policy.allows(request.user_role, request.api)
        log.debug("authorize %s %s -> %s", request.user_role, request.api, accept)
        return pb.AuthorizeApiResponse(accept=accept)


async def main(config: Config) -> None:
    runtime = ServiceRuntime("access_control", config)
    # Build the policy before attesting: a broken model fails the start, not the first call.
    servicer = AccessControlServicer(AccessPolicy())
    await runtime.attest()
    runtime.internal_server(lambda server: pb_grpc.add_KettleAccessControlServicer_to_server(servicer, server))
    await runtime.serve()
