"""No ambient credentials for user URLs: ``s3://`` opens only the buckets the operator listed.

Against moto's real S3 server, with a counter in front of it to see every
request it receives. The node has credentials (the usual AWS environment) that
would open any bucket there; the agent uses them only for the buckets in
``s3_node_credential_buckets``. Any other bucket is refused before a single
request leaves the node, and the data owner's way in is a presigned URL, which
the agent fetches and uploads to without any credentials of its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from conftest import free_ports
from moto_counting import CountingMotoServer

from kettle.config import FileAgentConfig
from kettle.errors import TransferError
from kettle.file_agent import FileAgent

LISTED, UNLISTED = "platform-data", "someone-elses"


@pytest.fixture(scope="module")
def s3() -> Iterator[tuple[CountingMotoServer, Any, str]]:
    (port,) = free_ports(1)
    with pytest.MonkeyPatch.context() as patch:
        # The node's credentials: good for every bucket on this server.
        patch.setenv("AWS_ACCESS_KEY_ID", "node-key")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "node-secret")
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        patch.delenv("AWS_PROFILE", raising=False)
        patch.delenv("AWS_SESSION_TOKEN", raising=False)
        server = CountingMotoServer(port)
        server.start()
        try:
            endpoint = f"http://127.0.0.1:{port}"
            client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
            for bucket in (LISTED, UNLISTED):
                client.create_bucket(Bucket=bucket)
            client.put_object(Bucket=UNLISTED, Key="private.enc", Body=b"not the user's to read")
            yield server, client, endpoint
        finally:
            server.stop()


def node_agent(home: Path, endpoint: str) -> FileAgent:
    config = FileAgentConfig(allowed_schemes=("s3",), s3_endpoint_url=endpoint, s3_node_credential_buckets=(LISTED,),
                             retries=0, connect_timeout_secs=2, io_timeout_secs=5)
    return FileAgent(config, home)


def test_an_unlisted_bucket_is_refused_before_any_request(s3: tuple[CountingMotoServer, Any, str], tmp_path: Path) -> None:
    server, client, endpoint = s3
    agent = node_agent(tmp_path, endpoint)
    source = tmp_path / "out.enc"
    source.write_bytes(b"ciphertext")
    before = len(server.requests)
    refusal = ("s3://{}/{} is in a bucket this platform does not open with its own credentials "
               "(file_agent.s3_node_credential_buckets); register a presigned https URL instead")
    with pytest.raises(TransferError) as caught:
        agent.fetch(f"s3://{UNLISTED}/private.enc", tmp_path / "in.enc")
    assert str(caught.value) == refusal.format(UNLISTED, "private.enc")
    with pytest.raises(TransferError) as caught:
        agent.store(source, f"s3://{UNLISTED}/planted.enc")
    assert str(caught.value) == refusal.format(UNLISTED, "planted.enc")
    assert server.requests[before:] == []  # moto's server saw nothing of either
    assert not (tmp_path / "in.enc").exists()
    assert [o["Key"] for o in client.list_objects_v2(Bucket=UNLISTED)["Contents"]] == ["private.enc"]


def test_a_listed_bucket_works_with_the_nodes_credentials(
    s3: tuple[CountingMotoServer, Any, str], tmp_path: Path
) -> None:
    server, client, endpoint = s3
    agent = node_agent(tmp_path, endpoint)
    source = tmp_path / "out.enc"
    source.write_bytes(b"listed bucket bytes")
    before = len(server.requests)
    agent.store(source, f"s3://{LISTED}/task/out.enc")
    assert agent.fetch(f"s3://{LISTED}/task/out.enc", tmp_path / "in.enc") == len(b"listed bucket bytes")
    assert (tmp_path / "in.enc").read_bytes() == b"listed bucket bytes"
    assert server.requests[before:]  # these did go to the server
    assert client.get_object(Bucket=LISTED, Key="task/out.enc")["Body"].read() == b"listed bucket bytes"


def test_presigned_urls_work_without_the_nodes_credentials(
    s3: tuple[CountingMotoServer, Any, str], tmp_path: Path
) -> None:
    server, client, endpoint = s3
    # The data owner presigns with its own rights; the node only moves bytes (moto's server is on
    # loopback, so the operator allowlists it, as a node's egress_allowlist would an internal store).
    authority = endpoint.removeprefix("http://")
    agent = FileAgent(FileAgentConfig(allowed_schemes=("http", "https"), egress_allowlist=(authority,), retries=0),
                      tmp_path)
    client.put_object(Bucket=UNLISTED, Key="owner/in.enc", Body=b"owner's ciphertext")
    get = client.generate_presigned_url("get_object", Params={"Bucket": UNLISTED, "Key": "owner/in.enc"})
    assert get.startswith(endpoint) and "Signature=" in get
    assert agent.fetch(get, tmp_path / "in.enc") == len(b"owner's ciphertext")
    assert (tmp_path / "in.enc").read_bytes() == b"owner's ciphertext"
    put = client.generate_presigned_url("put_object", Params={"Bucket": UNLISTED, "Key": "owner/out.enc"})
    source = tmp_path / "out.enc"
    source.write_bytes(b"result ciphertext")
    agent.store(source, put)
    assert client.get_object(Bucket=UNLISTED, Key="owner/out.enc")["Body"].read() == b"result ciphertext"
    assert f"PUT /{UNLISTED}/owner/out.enc" in server.requests
