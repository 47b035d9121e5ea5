"""Owner-registered credentials for ``s3://``: exactly the owner's keys, nothing ambient, no deputy.

Against moto's real S3 server with its IAM authentication switched on, so every
request's signature is verified and every key is held to its user's policy:
the node's identity may open every bucket, the owner's only the owner's own.
The node's identity is everywhere a library could pick it up (the environment,
``~/.aws/credentials``, ``~/.aws/config``); the file agent must sign with the
owner's keys alone, send to the owner's endpoint only under the egress policy,
and say nothing of the keys in any error.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from conftest import free_ports
from moto_counting import CountingMotoServer

from kettle.config import FileAgentConfig
from kettle.errors import TransferError
from kettle.file_agent import UNREACHABLE, FileAgent
from kettle.model.records import ObjectStoreCredentials

OWN, OTHER = "owner-bucket", "not-the-owners"


@dataclass
class Store:
    server: CountingMotoServer
    endpoint: str
    node: Any
    """A client with the node's keys (allowed everything): to look at what the tests did."""
    owner: ObjectStoreCredentials
    """The owner's keys, allowed only the owner's bucket, for the endpoint above."""

    @property
    def authority(self) -> str:
        return self.endpoint.removeprefix("http://")


def _policy(*resources: str) -> str:
    return json.dumps({"Version": "2012-10-17",
                       "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": list(resources)}]})


def _set_auth(endpoint: str, unauthenticated_requests: str) -> None:
    """moto's switch (process-wide): after this many requests, every request must be signed and allowed."""
    httpx.post(f"{endpoint}/moto-api/reset-auth", content=unauthenticated_requests.encode()).raise_for_status()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    (port,) = free_ports(1)
    server = CountingMotoServer(port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    home = tmp_path_factory.mktemp("node-home")
    try:
        setup = {"endpoint_url": endpoint, "region_name": "us-east-1",
                 "aws_access_key_id": "setup", "aws_secret_access_key": "setup"}
        iam = boto3.client("iam", **setup)
        keys = {}
        for user, resources in (("node", ("*",)), ("owner", (f"arn:aws:s3:::{OWN}", f"arn:aws:s3:::{OWN}/*"))):
            iam.create_user(UserName=user)
            iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=_policy(*resources))
            keys[user] = iam.create_access_key(UserName=user)["AccessKey"]
        s3 = boto3.client("s3", **setup)
        for bucket in (OWN, OTHER):
            s3.create_bucket(Bucket=bucket)
        node_key, node_secret = keys["node"]["AccessKeyId"], keys["node"]["SecretAccessKey"]
        (home / ".aws").mkdir()
        (home / ".aws" / "credentials").write_text(
            f"[default]\naws_access_key_id = {node_key}\naws_secret_access_key = {node_secret}\n")
        (home / ".aws" / "config").write_text(f"[default]\nregion = us-east-1\nendpoint_url = {endpoint}\n")
        with pytest.MonkeyPatch.context() as patch:
            # The node's identity, wherever botocore or s3fs would look for one.
            patch.setenv("HOME", str(home))
            patch.setenv("AWS_ACCESS_KEY_ID", node_key)
            patch.setenv("AWS_SECRET_ACCESS_KEY", node_secret)
            patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
            patch.setenv("AWS_ENDPOINT_URL", endpoint)
            for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):
                patch.delenv(name, raising=False)
            _set_auth(endpoint, "0")
            try:
                node = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
                owner = ObjectStoreCredentials(keys["owner"]["AccessKeyId"], keys["owner"]["SecretAccessKey"],
                                               endpoint_url=endpoint)
                yield Store(server, endpoint, node, owner)
            finally:
                _set_auth(endpoint, "inf")  # moto's switch is process-wide: other tests' servers run open
    finally:
        server.stop()


def agent(tmp_path: Path, store: Store, *, allowlisted: bool = True, max_file_bytes: int = 2**20) -> FileAgent:
    """A node that lists no bucket for its own credentials and allowlists the store (it is on loopback)."""
    config = FileAgentConfig(allowed_schemes=("s3", "http"), s3_endpoint_url=store.endpoint,
                             egress_allowlist=(store.authority,) if allowlisted else (),
                             max_file_bytes=max_file_bytes, retries=0, connect_timeout_secs=2, io_timeout_secs=5)
    return FileAgent(config, tmp_path)


def signer_of(headers: dict[str, str]) -> str:
    """The access key id a request was signed with (``Credential=KEY/DATE/REGION/s3/aws4_request``)."""
    return headers["authorization"].split("Credential=", 1)[1].split("/", 1)[0]


def test_fetch_and_store_use_exactly_the_owners_keys(store: Store, tmp_path: Path) -> None:
    store.node.put_object(Bucket=OWN, Key="in dir/ü file.enc", Body=b"owner's ciphertext")
    source = tmp_path / "out.enc"
    source.write_bytes(b"result ciphertext")
    before = len(store.server.requests)
    files = agent(tmp_path, store)
    url = f"s3://{OWN}/in%20dir/%C3%BC%20file.enc"
    assert files.fetch(url, tmp_path / "in.enc", credentials=store.owner) == len(b"owner's ciphertext")
    assert (tmp_path / "in.enc").read_bytes() == b"owner's ciphertext"
    files.store(source, f"s3://{OWN}/results/out.enc", store.owner)
    sent = store.server.headers[before:]
    wsgi_path = f"/{OWN}/in dir/ü file.enc".encode().decode("latin-1")  # how WSGI hands a server the path
    assert store.server.requests[before:] == [f"GET {wsgi_path}", f"PUT /{OWN}/results/out.enc"]
    assert store.node.get_object(Bucket=OWN, Key="results/out.enc")["Body"].read() == b"result ciphertext"
    assert {signer_of(h) for h in sent} == {store.owner.access_key_id}
    assert all(h["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD" for h in sent)


def test_session_tokens_travel_with_the_request(store: Store, tmp_path: Path) -> None:
    # moto refuses a token it did not issue; what matters here is that it is sent, and signed.
    store.node.put_object(Bucket=OWN, Key="token.enc", Body=b"x")
    before = len(store.server.headers)
    with_token = replace(store.owner, session_token="FQoGZXIvYXdzE-token")
    with pytest.raises(TransferError):
        agent(tmp_path, store).fetch(f"s3://{OWN}/token.enc", tmp_path / "in.enc", credentials=with_token)
    (sent,) = store.server.headers[before:]
    assert sent["x-amz-security-token"] == "FQoGZXIvYXdzE-token"
    assert "x-amz-security-token" in sent["authorization"].split("SignedHeaders=", 1)[1].split(",", 1)[0]


def test_nothing_ambient_is_consulted(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No botocore session, credential resolver (environment, ~/.aws, instance metadata) or s3fs is used."""
    import botocore.credentials
    import botocore.session
    import s3fs

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("an ambient credential source was consulted")

    monkeypatch.setattr(botocore.session.Session, "__init__", forbidden)
    monkeypatch.setattr(botocore.credentials, "create_credential_resolver", forbidden)
    monkeypatch.setattr(botocore.credentials.InstanceMetadataProvider, "load", forbidden)
    monkeypatch.setattr(s3fs.S3FileSystem, "__init__", forbidden)
    store.node.put_object(Bucket=OWN, Key="ambient.enc", Body=b"bytes")
    assert agent(tmp_path, store).fetch(f"s3://{OWN}/ambient.enc", tmp_path / "in.enc", credentials=store.owner) == 5


def test_wrong_or_foreign_keys_fail_without_falling_back_and_without_a_trace_of_the_secret(
    store: Store, tmp_path: Path
) -> None:
    store.node.put_object(Bucket=OWN, Key="mine.enc", Body=b"mine")
    store.node.put_object(Bucket=OTHER, Key="theirs.enc", Body=b"theirs")
    files = agent(tmp_path, store)
    wrong = replace(store.owner, secret_access_key="not-the-secret-at-all")
    with pytest.raises(TransferError) as caught:
        files.fetch(f"s3://{OWN}/mine.enc", tmp_path / "a.enc", credentials=wrong)
    assert str(caught.value) == f"HTTP 403 Forbidden from s3://{OWN}/mine.enc"
    # The owner's keys do not open another bucket, although the node's would.
    with pytest.raises(TransferError) as caught:
        files.fetch(f"s3://{OTHER}/theirs.enc", tmp_path / "b.enc", credentials=store.owner)
    assert str(caught.value) == f"HTTP 403 Forbidden from s3://{OTHER}/theirs.enc"
    source = tmp_path / "planted.enc"
    source.write_bytes(b"planted")
    with pytest.raises(TransferError) as caught:
        files.store(source, f"s3://{OTHER}/planted.enc", store.owner)
    assert str(caught.value) == f"HTTP 403 Forbidden from s3://{OTHER}/planted.enc, expected 200"
    assert [o["Key"] for o in store.node.list_objects_v2(Bucket=OTHER)["Contents"]] == ["theirs.enc"]
    assert not (tmp_path / "a.enc").exists() and not (tmp_path / "b.enc").exists()
    for secret in (store.owner.secret_access_key, wrong.secret_access_key):
        assert secret not in str(caught.value)


def test_the_owners_endpoint_passes_the_egress_policy(store: Store, tmp_path: Path) -> None:
    """An owner's endpoint cannot make the node reach an internal host the operator did not allowlist."""
    store.node.put_object(Bucket=OWN, Key="behind.enc", Body=b"behind")
    before = len(store.server.requests)
    cases = {
        "loopback, not allowlisted": (agent(tmp_path, store, allowlisted=False), store.owner),
        "the same server by another name": (agent(tmp_path, store),
                                            replace(store.owner, endpoint_url=store.endpoint.replace("127.0.0.1", "localhost"))),
        "cloud metadata": (agent(tmp_path, store), replace(store.owner, endpoint_url="http://169.254.169.254")),
    }
    for label, (files, credentials) in cases.items():
        with pytest.raises(TransferError) as caught:
            files.fetch(f"s3://{OWN}/behind.enc", tmp_path / "in.enc", credentials=credentials)
        assert str(caught.value) == UNREACHABLE, label
    assert store.server.requests[before:] == []


def test_unusable_requests_are_refused_before_anything_is_sent(store: Store, tmp_path: Path) -> None:
    files = agent(tmp_path, store)
    before = len(store.server.requests)
    for url, text in [
        (f"s3://{OWN}/a/../b.enc", f"the s3 URL's object key must not contain '.' or '..' segments: s3://{OWN}/a/../b.enc"),
        (f"s3://{OWN}/dir/", f"the s3 URL names no object: s3://{OWN}/dir/"),
    ]:
        with pytest.raises(TransferError) as caught:
            files.fetch(url, tmp_path / "in.enc", credentials=store.owner)
        assert str(caught.value) == text
    with pytest.raises(TransferError) as caught:
        files.fetch(f"s3://{OWN}/x.enc", tmp_path / "in.enc", credentials=replace(store.owner, access_key_id="a/b"))
    assert str(caught.value).startswith("s3 credentials: access_key_id must be")
    with pytest.raises(TransferError) as caught:
        agent(tmp_path, store).fetch(f"http://{store.authority}/{OWN}/x.enc", tmp_path / "in.enc",
                                     credentials=store.owner)
    assert str(caught.value) == f"s3 credentials are only for s3:// URLs: http://{store.authority}/{OWN}/x.enc"
    # S3 takes at most 5 GiB in one PUT; a (sparse) larger output is refused before sending.
    huge = tmp_path / "huge.enc"
    with huge.open("wb") as file:
        file.truncate(5 * 2**30 + 1)
    big_agent = agent(tmp_path, store, max_file_bytes=6 * 2**30)
    with pytest.raises(TransferError, match="one PUT, at most 5368709120 bytes; this output has 5368709121"):
        big_agent.store(huge, f"s3://{OWN}/huge.enc", store.owner)
    assert store.server.requests[before:] == []
    os.unlink(huge)


def test_a_signed_request_follows_no_redirect(store: Store, tmp_path: Path) -> None:
    """The owner's signed headers go to the host they were signed for and nowhere else."""
    store.node.put_object(Bucket=OWN, Key="moved.enc", Body=b"moved")
    target = f"{store.endpoint}/{OWN}/moved.enc"

    class Redirect(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(307)
            self.send_header("Location", target)
            self.send_header("Content-Length", "0")
            self.end_headers()

    redirector = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=redirector.serve_forever, daemon=True).start()
    try:
        authority = f"127.0.0.1:{redirector.server_address[1]}"
        config = FileAgentConfig(allowed_schemes=("s3", "http"), egress_allowlist=(store.authority, authority),
                                 retries=0, connect_timeout_secs=2, io_timeout_secs=5)
        before = len(store.server.requests)
        with pytest.raises(TransferError) as caught:
            FileAgent(config, tmp_path).fetch(f"s3://{OWN}/moved.enc", tmp_path / "in.enc",
                                              credentials=replace(store.owner, endpoint_url=f"http://{authority}"))
        assert str(caught.value) == f"HTTP 307 Temporary Redirect from s3://{OWN}/moved.enc"
        assert store.server.requests[before:] == []
    finally:
        redirector.shutdown()
        redirector.server_close()
