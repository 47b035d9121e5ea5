"""The access-control service: the §3.1 decision matrix, the servicer's edge cases, and the real attested service.

The expected matrix is written out here from ``spec/platform.md`` §3.1 on
purpose, not derived from the policy module's constants: a wrong action list in
the policy must fail these tests, not be mirrored by them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import grpc
import pytest

from conftest import Platform
from kettle.rpc.generated import kettle_access_control_pb2 as pb
from kettle.rpc.generated import kettle_access_control_pb2_grpc as pb_grpc
from kettle.services.access_control.policy import AccessPolicy
from kettle.services.access_control.service import AccessControlServicer
from kettle.services.runtime import ServiceRuntime

CALL_TIMEOUT = 20.0

PA, FO, DOM, DO = "PlatformAdmin", "FunctionOwner", "DataOwnerManager", "DataOwner"

# Every policy name of the TeaclaveFrontend table (§1.4), with the categories §3.1 allows.
DATA_ROLES = frozenset({PA, DOM, DO})
FUNCTION_OWNER_ROLES = frozenset({PA, FO})
EVERY_CATEGORY = frozenset({PA, FO, DOM, DO})
ADMIN_ONLY = frozenset({PA})

ALLOWED: dict[str, frozenset[str]] = {
    "register_input_file": DATA_ROLES,
    "register_output_file": DATA_ROLES,
    "update_input_file": DATA_ROLES,
    "update_output_file": DATA_ROLES,
    "register_fusion_output": DATA_ROLES,
    "register_input_from_output": DATA_ROLES,
    "get_output_file": DATA_ROLES,
    "get_input_file": DATA_ROLES,
    "register_function": FUNCTION_OWNER_ROLES,
    "get_function": EVERY_CATEGORY,
    "get_function_usage_stats": EVERY_CATEGORY,
    "update_function": FUNCTION_OWNER_ROLES,
    "list_functions": EVERY_CATEGORY,
    "delete_function": FUNCTION_OWNER_ROLES,
    "disable_function": FUNCTION_OWNER_ROLES,
    "create_task": DATA_ROLES,
    "get_task": DATA_ROLES,
    "assign_data": DATA_ROLES,
    "approve_task": DATA_ROLES,
    "invoke_task": DATA_ROLES,
    "cancel_task": DATA_ROLES,
    "query_audit_logs": ADMIN_ONLY,
}

# Any other action name: PlatformAdmin only (an RPC name or a case variant is not a policy name).
UNKNOWN_ACTIONS = ("launch_missiles", "RegisterFunction", "Register_function", "get_task ", 'get_task" || "1" == "1')

# Role categories, plus subjects that are not categories and so have no rights at all:
# the empty role, other names, case variants, a full role string with its attribute,
# and casbin's own rule-group names (which its role manager would otherwise accept).
ROLES = (
    PA, FO, DOM, DO,
    "", "Admin", "dataowner", "platformadmin", "PLATFORMADMIN", " PlatformAdmin",
    "DataOwner-group1", "DataOwnerManager-", "FunctionOwner-x",
    "rule_data_owner", "rule_function_owner",
)

EXPECTED: dict[str, frozenset[str]] = {**ALLOWED, **{api: ADMIN_ONLY for api in UNKNOWN_ACTIONS}}
MATRIX = [(role, api, role in roles) for api, roles in EXPECTED.items() for role in ROLES]


@pytest.fixture(scope="module")
def policy() -> AccessPolicy:
    return AccessPolicy()


@pytest.mark.parametrize(("role", "api", "expected"), MATRIX, ids=[f"{r or '<empty>'}:{a}" for r, a, _ in MATRIX])
def test_decision_matrix(policy: AccessPolicy, role: str, api: str, expected: bool) -> None:
    assert policy.allows(role, api) is expected
    assert policy.allows(role, api) is expected  # the memoised answer is the same


def test_matrix_covers_every_frontend_policy_name() -> None:
    """The table above lists all 22 policy names of §1.4 (21 RPCs + query_audit_logs)."""
    assert len(ALLOWED) == 22


# --- the servicer, in process ------------------------------------------------------


class _BrokenPolicy(AccessPolicy):
    def allows(self, role_category: str, api: str) -> bool:
        raise RuntimeError("casbin blew up")


@asynccontextmanager
async def _local_server(policy: AccessPolicy) -> AsyncIterator[pb_grpc.KettleAccessControlStub]:
    """The servicer on a plain loopback server: the status mapping is grpc's own, no attestation needed."""
    server = grpc.aio.server()
    pb_grpc.add_KettleAccessControlServicer_to_server(AccessControlServicer(policy), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield pb_grpc.KettleAccessControlStub(channel)
    finally:
        await server.stop(None)


def test_servicer_answers_no_to_empty_questions(policy: AccessPolicy) -> None:
    """An empty role or api is a denial, never an error — even for PlatformAdmin, whom casbin would let do ''."""

    async def scenario() -> None:
        async with _local_server(policy) as stub:
            for role, api in ((PA, ""), ("", "get_task"), ("", ""), (DO, "")):
                reply = await stub.AuthorizeApi(pb.AuthorizeApiRequest(user_role=role, api=api), timeout=CALL_TIMEOUT)
                assert reply.accept is False, (role, api)
            reply = await stub.AuthorizeApi(pb.AuthorizeApiRequest(user_role=DO, api="get_task"), timeout=CALL_TIMEOUT)
            assert reply.accept is True

    asyncio.run(scenario())


def test_servicer_evaluation_error_is_internal() -> None:
    async def scenario() -> None:
        async with _local_server(_BrokenPolicy()) as stub:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.AuthorizeApi(pb.AuthorizeApiRequest(user_role=PA, api="get_task"), timeout=CALL_TIMEOUT)
            assert info.value.code() == grpc.StatusCode.INTERNAL

    asyncio.run(scenario())


# --- the real service process ----------------------------------------------------------


@pytest.fixture
def access_control_platform(home_factory) -> Iterator[Platform]:  # type: ignore[no-untyped-def]
    platform = home_factory()
    platform.start(services=("access_control",))
    yield platform


E2E_ROWS = [
    (PA, "query_audit_logs", True),
    (PA, "anything_at_all", True),
    (FO, "register_function", True),
    (FO, "create_task", False),
    (DOM, "get_function", True),
    (DO, "register_function", False),
    (DO, "invoke_task", True),
    ("DataOwner-group1", "invoke_task", False),
    ("dataowner", "invoke_task", False),
    ("", "get_task", False),
    (PA, "", False),
]


def test_service_process_over_attested_tls(access_control_platform: Platform) -> None:
    """`kettle service access_control` answers the frontend and management; an attested scheduler is refused."""
    config = access_control_platform.config

    async def scenario() -> None:
        runtimes = {name: ServiceRuntime(name, config) for name in ("frontend", "management", "scheduler")}
        try:
            for runtime in runtimes.values():
                await runtime.attest()
            frontend = pb_grpc.KettleAccessControlStub(runtimes["frontend"].peers.channel("access_control"))
            for role, api, expected in E2E_ROWS:
                reply = await frontend.AuthorizeApi(
                    pb.AuthorizeApiRequest(user_role=role, api=api), timeout=CALL_TIMEOUT
                )
                assert reply.accept is expected, (role, api)

            management = pb_grpc.KettleAccessControlStub(runtimes["management"].peers.channel("access_control"))
            reply = await management.AuthorizeApi(
                pb.AuthorizeApiRequest(user_role=FO, api="update_function"), timeout=CALL_TIMEOUT
            )
            assert reply.accept is True

            scheduler = pb_grpc.KettleAccessControlStub(runtimes["scheduler"].peers.channel("access_control"))
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await scheduler.AuthorizeApi(pb.AuthorizeApiRequest(user_role=PA, api="get_task"), timeout=CALL_TIMEOUT)
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert info.value.details() == "peer service scheduler is not allowed to call access_control"
        finally:
            for runtime in runtimes.values():
                await runtime.identities.stop()
                await runtime.peers.close()

    asyncio.run(scenario())
