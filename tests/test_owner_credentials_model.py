"""Owner-registered s3 credentials in the model: what registration accepts, where the record
takes them (update, derived input, task, staged task), what the task digest says of them, and
where a request signed with them goes. Pure functions, no sockets.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import grpc
import pytest

from kettle.errors import KettleError
from kettle.model import consent as C
from kettle.model import files as D
from kettle.model import tasks as T
from kettle.model.functions import Caller, UsageRecord
from kettle.model.object_store import request_url
from kettle.model.records import (
    CryptoInfo,
    FileRecord,
    FunctionFile,
    FunctionRecord,
    ObjectStoreCredentials,
    StagedTask,
    TaskRecord,
)
from kettle.model.users import Role

ALICE = Caller("alice", Role.parse("DataOwner-bank"))
GCM = CryptoInfo("aes-gcm-128", bytes(16), bytes(12))
CMAC = bytes(range(16))
U1, U2, U3 = ("11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222",
              "33333333-3333-4333-8333-333333333333")
SECRET, TOKEN = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "IQoJb3JpZ2luX2VjEXAMPLETOKEN"
CREDS = ObjectStoreCredentials("AKIAIOSFODNN7EXAMPLE", SECRET, TOKEN, "https://minio.example:9000", "eu-west-1")
S3_URL = "s3://owner-bucket/data/in.enc"
BAD_KEY_ID = "s3 credentials: access_key_id must be 1 to 128 printable ASCII characters without spaces, '/' or ','"


def invalid(action: Any, text: str) -> None:
    with pytest.raises(KettleError) as caught:
        action()
    assert (caught.value.code, caught.value.message) == (grpc.StatusCode.INVALID_ARGUMENT, text)
    for secret in (SECRET, TOKEN):
        assert secret not in caught.value.message


# --- the record ------------------------------------------------------------------------------


def test_the_record_keeps_them_and_its_encoding_is_unchanged_without_them() -> None:
    plain = FileRecord(U1, S3_URL, GCM, ("alice",), CMAC)
    assert set(json.loads(plain.to_bytes())) == {"uuid", "url", "crypto_info", "owner", "cmac"}
    with_creds = replace(plain, s3_credentials=CREDS)
    assert FileRecord.from_bytes(with_creds.to_bytes()) == with_creds
    assert json.loads(with_creds.to_bytes())["s3_credentials"] == {
        "access_key_id": "AKIAIOSFODNN7EXAMPLE", "secret_access_key": SECRET, "session_token": TOKEN,
        "endpoint_url": "https://minio.example:9000", "region": "eu-west-1"}
    # Whatever prints a record (a log line, a traceback) shows neither the secret nor the token.
    assert SECRET not in repr(with_creds) and TOKEN not in repr(with_creds)
    assert "AKIAIOSFODNN7EXAMPLE" in repr(with_creds)


@pytest.mark.parametrize("credentials", [
    None,
    {"access_key_id": "A", "secret_access_key": "B"},
    {"access_key_id": "A", "secret_access_key": "B", "session_token": "", "endpoint_url": "", "region": "", "x": ""},
    {"access_key_id": "A", "secret_access_key": 7, "session_token": "", "endpoint_url": "", "region": ""},
])
def test_a_malformed_stored_credential_is_corruption(credentials: Any) -> None:
    doc = json.loads(FileRecord(U1, S3_URL, GCM, ("alice",), CMAC).to_bytes())
    doc["s3_credentials"] = credentials
    with pytest.raises(ValueError, match="malformed"):
        FileRecord.from_bytes(json.dumps(doc).encode())


# --- registration ----------------------------------------------------------------------------


def test_registration_keeps_them_for_inputs_and_outputs() -> None:
    assert D.register_input_file(ALICE, S3_URL, CMAC, GCM, U1, s3_credentials=CREDS).s3_credentials == CREDS
    assert D.register_output_file(ALICE, S3_URL, GCM, U1, s3_credentials=CREDS).s3_credentials == CREDS
    assert D.register_input_file(ALICE, S3_URL, CMAC, GCM, U1).s3_credentials is None


@pytest.mark.parametrize(("url", "credentials", "text"), [
    ("https://files.example/in.enc", CREDS, "s3 credentials are only for s3:// URLs"),
    ("s3://owner-bucket/", CREDS, "the s3 URL names no object"),
    ("s3://owner-bucket/a/../b.enc", CREDS, "the s3 URL's object key must not contain '.' or '..' segments"),
    ("s3://owner-bucket/in.enc?versionId=3", CREDS, "s3 URLs take no query string or fragment"),
    ("s3://bad%bucket/in.enc", CREDS, "the s3 URL's bucket name may only have letters, digits, '.', '-' and '_'"),
    (S3_URL, replace(CREDS, access_key_id=""), BAD_KEY_ID),
    (S3_URL, replace(CREDS, access_key_id="AK/IA"), BAD_KEY_ID),
    (S3_URL, replace(CREDS, secret_access_key=f"{SECRET} tail"),
     "s3 credentials: secret_access_key must be 1 to 256 printable ASCII characters without spaces"),
    (S3_URL, replace(CREDS, session_token=f"{TOKEN}\n"),
     "s3 credentials: session_token must be at most 8192 printable ASCII characters without spaces"),
    (S3_URL, replace(CREDS, region="eu west"), "s3 credentials: region must be 1 to 64 letters, digits, '-' or '_'"),
    (S3_URL, replace(CREDS, endpoint_url="ftp://minio.example"),
     "s3 credentials: endpoint_url must be an http:// or https:// URL"),
    (S3_URL, replace(CREDS, endpoint_url="https://user:pw@minio.example"),
     "s3 credentials: endpoint_url must name a host, without user or password"),
    (S3_URL, replace(CREDS, endpoint_url="https://minio.example/bucket"),
     "s3 credentials: endpoint_url takes no path, query string or fragment (buckets go in the s3:// URL)"),
    (S3_URL, replace(CREDS, endpoint_url="https://minio.example:99999"), "s3 credentials: endpoint_url is not a URL"),
    (S3_URL, replace(CREDS, endpoint_url="http://minio.example"),
     "s3 credentials: endpoint_url scheme not allowed: http (allowed: https, s3)"),
])
def test_registration_refuses_unusable_ones_without_quoting_them(
    url: str, credentials: ObjectStoreCredentials, text: str
) -> None:
    policy = D.UrlPolicy(frozenset({"https", "s3"}))
    invalid(lambda: D.register_input_file(ALICE, url, CMAC, GCM, U1, policy, credentials), text)
    invalid(lambda: D.register_output_file(ALICE, url, GCM, U1, policy, credentials), text)


def test_an_update_takes_them_again_or_has_none_and_a_derived_input_keeps_them() -> None:
    old = D.register_input_file(ALICE, S3_URL, CMAC, GCM, U1, s3_credentials=CREDS)
    moved = D.update_file(old, ALICE, "s3://owner-bucket/moved.enc", U2, output=False)
    assert moved.s3_credentials is None  # credentials for one URL never open another silently
    rotated = replace(CREDS, secret_access_key="rotated-secret")
    assert D.update_file(old, ALICE, S3_URL, U3, output=False, s3_credentials=rotated).s3_credentials == rotated
    invalid(lambda: D.update_file(old, ALICE, "https://files.example/x.enc", U3, output=False, s3_credentials=CREDS),
            "s3 credentials are only for s3:// URLs")
    written = replace(D.register_output_file(ALICE, S3_URL, GCM, U1, s3_credentials=CREDS), cmac=CMAC)
    assert D.input_from_output(written, ALICE).s3_credentials == CREDS


# --- tasks ---------------------------------------------------------------------------------------


def _task(credentials: ObjectStoreCredentials | None) -> tuple[TaskRecord, FunctionRecord]:
    function = FunctionRecord(
        uuid=U3, name="f", description="", public=True, executor_type="python", payload=b"def entrypoint(a): pass",
        arguments=(), inputs=(FunctionFile("in"),), outputs=(), owner="fo", user_allowlist=(), usage_quota=None)
    task = T.create_task(function, ALICE, T.TaskDefinition("{}", "mesapy", (("in", ("alice",)),), ()), U2)
    record = D.register_input_file(ALICE, S3_URL, CMAC, GCM, U1, s3_credentials=credentials)
    return T.assign_data(task, ALICE, [("in", f"input-{U1}")], [], {U1: record}), function


def test_the_staged_task_carries_them_and_the_digest_does_not() -> None:
    """The digest names the data id, which pins the record and so its credentials (a record never
    changes; new credentials mean a new id, a new digest). The secret is in no digest or manifest."""
    task, function = _task(CREDS)
    without, _ = _task(None)
    assert C.task_digest(task) == C.task_digest(without)
    manifest = C.task_manifest(task)
    assert not [part for part in ("AKIAIOSFODNN7EXAMPLE", SECRET, TOKEN, "minio.example") if part in manifest]
    approved = T.approve_task(task, ALICE, function, now=1_800_000_000)
    staged = T.build_staged_task(T.invoke_task(approved, ALICE, function, UsageRecord(U3, 0), 1_800_000_000), function)
    assert staged.input_data["in"].s3_credentials == CREDS
    assert StagedTask.from_bytes(staged.to_bytes()).input_data["in"].s3_credentials == CREDS
    assert C.staged_refusal(staged) is None


# --- where a signed request goes -----------------------------------------------------------------


@pytest.mark.parametrize(("endpoint", "region", "bucket", "url"), [
    ("", "", "owner-bucket", "https://owner-bucket.s3.us-east-1.amazonaws.com/a%20b/%C3%BC.enc"),
    ("", "eu-west-1", "owner.bucket", "https://s3.eu-west-1.amazonaws.com/owner.bucket/a%20b/%C3%BC.enc"),
    ("https://minio.example:443/", "", "owner-bucket", "https://minio.example/owner-bucket/a%20b/%C3%BC.enc"),
    ("http://127.0.0.1:9000", "", "Owner_Bucket", "http://127.0.0.1:9000/Owner_Bucket/a%20b/%C3%BC.enc"),
    ("http://[::1]:9000", "", "b", "http://[::1]:9000/b/a%20b/%C3%BC.enc"),
])
def test_requests_go_to_the_named_store_path_or_virtual_host_style(
    endpoint: str, region: str, bucket: str, url: str
) -> None:
    credentials = ObjectStoreCredentials("AK", "SK", endpoint_url=endpoint, region=region)
    assert request_url(credentials, bucket, "a b/ü.enc") == url
