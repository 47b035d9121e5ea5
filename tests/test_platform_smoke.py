"""The acceptance path: admin logs in, registers a user, that user logs in; `kettle attest` says verified."""

from __future__ import annotations

import json

from conftest import Platform


def test_admin_registers_user_who_logs_in(platform: Platform) -> None:
    admin = platform.admin()
    admin.user_register("smoke_user", "smoke-pw", "DataOwner", "bank")
    user = platform.auth_client()
    token = user.user_login("smoke_user", "smoke-pw")
    assert token.count(".") == 2
    assert "smoke_user" in admin.list_users("any")


def test_kettle_attest_says_verified(platform: Platform) -> None:
    result = platform.kettle("attest", platform.auth_address)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "verified" in result.stdout and "NOT verified" not in result.stdout
    data = json.loads(platform.kettle("attest", platform.auth_address, "--json").stdout)
    assert data["verified"] is True and data["service"] == "authentication" and data["simulation"] is True


def test_async_client_shares_the_core(platform: Platform) -> None:
    import asyncio

    from kettle.errors import AuthenticationError
    from kettle.sdk import AsyncAuthenticationClient

    async def run() -> list[str]:
        client = await AsyncAuthenticationClient.connect(platform.auth_address, platform.trust())
        try:
            await client.user_login("admin", "teaclave")
            await client.user_register("async_user", "pw", "FunctionOwner")
            try:
                await client.user_register("async_user", "pw", "FunctionOwner")
            except AuthenticationError as exc:
                assert exc.message == "user id exist"
            else:
                raise AssertionError("duplicate registration was accepted")
            return await client.list_users("all")
        finally:
            await client.close()

    assert "async_user" in asyncio.run(run())


def test_api_endpoints_serve_standard_health_checks(platform: Platform) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from kettle.sdk.attested import verify_endpoint

    trust = platform.trust()
    channel = verify_endpoint(platform.auth_address, "authentication", trust).channel(trust)
    try:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status
    finally:
        channel.close()
    assert status == health_pb2.HealthCheckResponse.SERVING


def test_undecodable_request_bytes_get_a_plain_error(platform: Platform) -> None:
    import grpc

    from kettle.sdk.attested import verify_endpoint

    trust = platform.trust()
    channel = verify_endpoint(platform.auth_address, "authentication", trust).channel(trust)
    try:
        raw = channel.unary_unary(
            "/teaclave_authentication_service_proto.TeaclaveAuthenticationApi/UserLogin",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        try:
            raw(b"\xff\xff\xff", timeout=10)
        except grpc.RpcError as exc:
            assert (exc.code(), exc.details()) == (
                grpc.StatusCode.INVALID_ARGUMENT, "malformed request: the message does not decode"
            )
        else:
            raise AssertionError("garbage was accepted")
    finally:
        channel.close()
    assert platform.auth_client().user_login("admin", "teaclave")
