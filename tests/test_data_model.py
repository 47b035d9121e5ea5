"""Management's data-file rules (spec §5, §6.3), as tables, without sockets.

Each refusal is checked with its gRPC code and exact text (Appendix B), and
where several checks could fail at once, that the spec's first one wins.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from kettle.config import FileAgentConfig
from kettle.errors import KettleError
from kettle.model import files as D
from kettle.model import tasks as T
from kettle.model.functions import MAX_RECORD_BYTES, Caller
from kettle.model.ids import Kind
from kettle.model.records import (
    CryptoInfo,
    FileRecord,
    FunctionArgument,
    FunctionFile,
    FunctionRecord,
    TaskRecord,
    TaskStatus,
)
from kettle.model.users import Role

UNKNOWN, INVALID, DENIED = (
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.PERMISSION_DENIED,
)
NO_ID, NO_OUTPUT = "invalid data id", "invalid output file"
PD = "permission denied"

U1 = "11111111-1111-4111-8111-111111111111"
U2 = "22222222-2222-4222-8222-222222222222"
U3 = "33333333-3333-4333-8333-333333333333"
U4 = "44444444-4444-4444-8444-444444444444"
TASK_UUID = "55555555-5555-4555-8555-555555555555"

KEY16, KEY32, IV12 = bytes(range(16)), bytes(range(32)), bytes(range(12))
CMAC = bytes(range(100, 116))
GCM = CryptoInfo("aes-gcm-128", KEY16, IV12)
NO_FILE_URLS = "URL scheme not allowed: file (allowed: data, http, https, s3); file URLs need [file_agent] file_roots"
FILES = D.UrlPolicy(frozenset({"file", "https"}), ("/srv/data", "/home/kettle/shared"))


def caller(user: str, role: str = "DataOwner-bank") -> Caller:
    return Caller(user, Role.parse(role))


ALICE, BOB, CAROL = caller("alice"), caller("bob"), caller("carol", "DataOwner-hospital")
ADMIN = caller("admin", "PlatformAdmin")


def refused(action: Callable[[], Any], code: grpc.StatusCode, message: str) -> None:
    with pytest.raises(KettleError) as info:
        action()
    assert (info.value.code, info.value.message) == (code, message)


def record(bare: str = U1, owner: tuple[str, ...] = ("alice",), cmac: bytes | None = CMAC, **changes: Any) -> FileRecord:
    return replace(FileRecord(bare, "https://files.example/x.enc", GCM, owner, cmac), **changes)


# === data IDs =====================================================================================


class TestDataIds:
    @pytest.mark.parametrize("text", [
        f"input-{U1}", f"input-{U1.upper()}", f"input-{U1.replace('-', '')}", f"input-urn:uuid:{U1}",
        f"input-{{{U1}}}",
    ])
    def test_accepted_forms_are_normalised(self, text: str) -> None:
        assert D.parse_data_id(text, Kind.INPUT) == U1

    @pytest.mark.parametrize("text", [
        "", "input", "input-", f"input{U1}", "input-not-a-uuid", f"input-{U1}x", f"output-{U1}", f"Input-{U1}",
        f"-{U1}", "input-" + "a" * 100_000, f"input-{U1}\0", f"function-{U1}",
    ])
    def test_anything_else_is_invalid_data_id(self, text: str) -> None:
        refused(lambda: D.parse_data_id(text, Kind.INPUT), INVALID, NO_ID)

    def test_assignment_ids_tell_unparsable_from_other_kinds(self) -> None:
        assert D.assigned_file_id(f"output-{U1.upper()}", Kind.OUTPUT) == U1
        assert D.assigned_file_id(f"input-{U1}", Kind.OUTPUT) is None  # well formed: "not found"
        assert D.assigned_file_id(f"anything-{U1}", Kind.INPUT) is None
        for text in ("input-not-a-uuid", "nodash", "", "input-"):
            with pytest.raises(KettleError) as info:
                D.assigned_file_id(text, Kind.INPUT)
            assert info.value.code == INVALID and "malformed data id" in info.value.message
        with pytest.raises(KettleError) as info:
            D.assigned_file_id("input-" + "z" * 1_000_000, Kind.INPUT)
        assert info.value.code == INVALID and len(info.value.message) < 200


# === registration contents ========================================================================


class TestUrls:
    @pytest.mark.parametrize("url", [
        "https://files.example/x.enc", "HTTP://EXAMPLE.COM:8080/a?b=c#d", "http://u:p@h/", "https://[::1]:443/x",
        "http://127.0.0.1/x", "s3://bucket/key/x.enc", "s3://b%20x/k", "data:,hello", "http://h:/x",
        "https://files.example/donn\u00e9es/\u6587\u4ef6.enc", "https://files.example/emoji-\U0001f600",
    ])
    def test_absolute_urls_a_node_fetches(self, url: str) -> None:
        assert D.check_url(url) == url  # stored as given

    @pytest.mark.parametrize(("url", "message"), [
        ("file:///etc/passwd", NO_FILE_URLS),
        ("file:../../etc/passwd", NO_FILE_URLS),
        ("javascript:alert(1)", "URL scheme not allowed: javascript (allowed: data, http, https, s3)"),
        ("gopher://h:70/_x", "URL scheme not allowed: gopher (allowed: data, http, https, s3)"),
        ("ftp://h/x", "URL scheme not allowed: ftp (allowed: data, http, https, s3)"),
        ("mailto:a@b", "URL scheme not allowed: mailto (allowed: data, http, https, s3)"),
        ("custom+scheme.v1-x://h/p", "URL scheme not allowed: custom+scheme.v1-x (allowed: data, http, https, s3)"),
        ("s" * 100 + "://h/", "URL scheme not allowed: " + "s" * 64 + "… (allowed: data, http, https, s3)"),
        ("fusion:///TEACLAVE_FUSION_BASE/x.fusion",
         "fusion URLs name files the platform holds: only RegisterFusionOutput creates them"),
    ])
    def test_schemes_no_node_fetches_are_refused_by_default(self, url: str, message: str) -> None:
        refused(lambda: D.check_url(url), INVALID, message)

    def test_an_output_is_never_a_data_url(self) -> None:
        assert D.check_url("data:,x") == "data:,x"
        refused(lambda: D.check_url("data:,x", output=True), INVALID, "an output cannot be written to a data URL")

    def test_policy_follows_the_file_agent_configuration(self) -> None:
        home = Path("/home/kettle")
        default = D.UrlPolicy.from_config(FileAgentConfig(), home)
        assert default == D.STRICT_URLS
        # file_roots alone do not enable the scheme, nor the scheme alone; fusion never comes from users.
        assert "file" not in D.UrlPolicy.from_config(FileAgentConfig(file_roots=("/srv",)), home).schemes
        assert "file" not in D.UrlPolicy.from_config(FileAgentConfig(allowed_schemes=("file",)), home).schemes
        policy = D.UrlPolicy.from_config(
            FileAgentConfig(allowed_schemes=("FILE", "https", "fusion"), file_roots=("/srv/data/", "shared")), home)
        assert policy == D.UrlPolicy(frozenset({"file", "https"}), ("/srv/data", "/home/kettle/shared"))

    @pytest.mark.parametrize("url", [
        "file:///srv/data/in.enc", "file://localhost/srv/data/a/b.enc", "FILE:///srv/data/x", "file:///srv/data",
        "file:///home/kettle/shared/x%20y.enc", "file:///srv/data/...enc", "file:///srv/data/\u6587.enc",
    ])
    def test_file_urls_inside_the_roots(self, url: str) -> None:
        assert D.check_url(url, FILES) == url
        assert D.check_url(url, FILES, output=True) == url

    @pytest.mark.parametrize(("url", "message"), [
        ("file:../../etc/passwd", "a file URL must be absolute, like file:///PATH (no other host, no relative path)"),
        ("file:/srv/data/x", "a file URL must be absolute, like file:///PATH (no other host, no relative path)"),
        ("file://host/srv/data/x", "a file URL must be absolute, like file:///PATH (no other host, no relative path)"),
        ("file:///srv/data/x?y=1", "a file URL takes no query string or fragment"),
        ("file:///srv/data/x#f", "a file URL takes no query string or fragment"),
        ("file:///srv/data/%ff", "the path of a file URL is not UTF-8"),
        ("file:///srv/data/a%00b", "the path of a file URL contains control characters"),
        ("file:///srv/data/../../etc/passwd", "a file URL must not contain '.' or '..' segments"),
        ("file:///srv/data/%2e%2e/secret", "a file URL must not contain '.' or '..' segments"),
        ("file:///srv/data/./x", "a file URL must not contain '.' or '..' segments"),
        ("file:///etc/passwd", "file URL is outside the directories file URLs may use ([file_agent] file_roots)"),
        ("file:///srv/database/x", "file URL is outside the directories file URLs may use ([file_agent] file_roots)"),
        ("file:///srv", "file URL is outside the directories file URLs may use ([file_agent] file_roots)"),
        ("s3://bucket/x", "URL scheme not allowed: s3 (allowed: file, https)"),
    ])
    def test_file_urls_refused_by_a_policy_with_roots(self, url: str, message: str) -> None:
        refused(lambda: D.check_url(url, FILES), INVALID, message)

    @pytest.mark.parametrize(("url", "message"), [
        ("", "relative URL without a base"),
        ("relative/path.enc", "relative URL without a base"),
        ("/abs/path", "relative URL without a base"),
        ("//host/path", "relative URL without a base"),
        ("1http://x/", "relative URL without a base"),
        ("://x", "relative URL without a base"),
        ("http://", "empty host"),
        ("https:///path", "empty host"),
        ("http://user@/x", "empty host"),
        ("http:host/x", "http URL without a host: expected http://HOST/..."),
        ("http://h:99999/x", "invalid port number"),
        ("http://h:8o/x", "invalid port number"),
        ("s3://bucket:-1/x", "invalid port number"),
        ("http://[::1/x", "invalid IPv6 address"),
        ("http://[not-ip]/x", "invalid IPv6 address"),
        ("http://[::1]x/", "invalid IPv6 address"),
        ("http://999.1.1.1/", "invalid IPv4 address"),
        ("http://ex<ample/", "invalid domain character"),
        ("http://ex%41mple.com/", "invalid domain character"),
        ("http://a b/", "invalid URL character U+0020 at position 8"),
        (" http://x/", "invalid URL character U+0020 at position 0"),
        ("http://x/\t", "invalid URL character U+0009 at position 9"),
        ("http://x/\n", "invalid URL character U+000A at position 9"),
        ("http://x/\0", "invalid URL character U+0000 at position 9"),
        ("http://x/\x7f", "invalid URL character U+007F at position 9"),
        ("http://x/\u200b", "invalid URL character U+200B at position 9"),
        ("http://x/\u2028", "invalid URL character U+2028 at position 9"),
        ("http://x/\udc80", "invalid URL character U+DC80 at position 9"),
    ])
    def test_refused_with_a_diagnostic(self, url: str, message: str) -> None:
        refused(lambda: D.check_url(url), INVALID, message)

    def test_length_bound(self) -> None:
        at_bound = "https://h/" + "a" * (D.MAX_URL_CHARS - 10)
        assert D.check_url(at_bound) == at_bound
        refused(lambda: D.check_url(at_bound + "a"), INVALID,
                f"URL is too long: {D.MAX_URL_CHARS + 1} characters, at most {D.MAX_URL_CHARS}")
        with pytest.raises(KettleError) as info:
            D.check_url("x" * 10_000_000)
        assert info.value.code == INVALID and len(info.value.message) < 100


class TestCmacAndCryptoInfo:
    @pytest.mark.parametrize("length", [0, 1, 15, 17, 32, 100_000])
    def test_cmac_is_16_bytes(self, length: int) -> None:
        refused(lambda: D.check_file_cmac(b"\1" * length), INVALID, f"Invalid cmac length: {length}")
        assert D.check_file_cmac(CMAC) == CMAC

    @pytest.mark.parametrize("info", [
        CryptoInfo("aes-gcm-128", KEY16, IV12), CryptoInfo("aes-gcm-256", KEY32, IV12),
        CryptoInfo("teaclave-file-128", KEY16, b""),
    ])
    def test_valid(self, info: CryptoInfo) -> None:
        assert D.check_crypto_info(info) == info

    def test_raw_ignores_and_drops_key_and_iv(self) -> None:
        assert D.check_crypto_info(CryptoInfo("raw", b"junk" * 100, b"x")) == CryptoInfo("raw", b"", b"")

    @pytest.mark.parametrize(("info", "message"), [
        (None, "missing crypto_info"),
        (CryptoInfo("aes-gcm-128", KEY32, IV12), "Invalid key length for AesGcm128: 32"),
        (CryptoInfo("aes-gcm-128", KEY16, b""), "Invalid iv length for AesGcm128: 0"),
        (CryptoInfo("aes-gcm-256", KEY16, IV12), "Invalid key length for AesGcm256: 16"),
        (CryptoInfo("teaclave-file-128", KEY16, IV12), "IV is not empty for teaclave_file_128"),
        (CryptoInfo("teaclave-file-128", KEY32, b""), "Invalid key length for TeaclaveFile128: 32"),
        (CryptoInfo("AES-GCM-128", KEY16, IV12), "Invalid crypto schema: AES-GCM-128"),
        (CryptoInfo("", b"", b""), "Invalid crypto schema: "),
    ])
    def test_refused_with_the_reference_texts(self, info: CryptoInfo | None, message: str) -> None:
        refused(lambda: D.check_crypto_info(info), INVALID, message)

    def test_huge_schema_is_not_echoed_whole(self) -> None:
        with pytest.raises(KettleError) as info:
            D.check_crypto_info(CryptoInfo("s" * 1_000_000, b"", b""))
        assert info.value.code == INVALID and info.value.message.startswith("Invalid crypto schema: sss")
        assert len(info.value.message) < 200


class TestRegister:
    def test_input(self) -> None:
        assert D.register_input_file(ALICE, "https://h/a", CMAC, GCM, U1) == FileRecord(U1, "https://h/a", GCM, ("alice",), CMAC)

    def test_output_has_no_cmac_and_may_be_raw(self) -> None:
        assert D.register_output_file(BOB, "https://h/o", GCM, U2) == FileRecord(U2, "https://h/o", GCM, ("bob",), None)
        assert D.register_output_file(BOB, "https://h/o", CryptoInfo("raw"), U2).crypto_info.schema == "raw"

    def test_order_url_then_cmac_then_crypto_info(self) -> None:
        refused(lambda: D.register_input_file(ALICE, "rel", b"", None, U1), INVALID, "relative URL without a base")
        refused(lambda: D.register_input_file(ALICE, "https://h/a", b"", None, U1), INVALID, "Invalid cmac length: 0")
        refused(lambda: D.register_input_file(ALICE, "https://h/a", CMAC, None, U1), INVALID, "missing crypto_info")
        refused(lambda: D.register_output_file(ALICE, "rel", None, U1), INVALID, "relative URL without a base")
        refused(lambda: D.register_output_file(ALICE, "https://h/a", None, U1), INVALID, "missing crypto_info")

    def test_urls_follow_the_policy(self) -> None:
        refused(lambda: D.register_input_file(ALICE, "gopher://h/x", CMAC, GCM, U1), INVALID,
                "URL scheme not allowed: gopher (allowed: data, http, https, s3)")
        refused(lambda: D.register_output_file(ALICE, "data:,x", GCM, U1), INVALID,
                "an output cannot be written to a data URL")
        made = D.register_input_file(ALICE, "file:///srv/data/in", CMAC, GCM, U1, FILES)
        assert made.url == "file:///srv/data/in"
        refused(lambda: D.register_output_file(ALICE, "file:///srv/data/../out", GCM, U1, FILES), INVALID,
                "a file URL must not contain '.' or '..' segments")


# === reading and changing files ==================================================================


class TestUpdate:
    def test_input_copy_keeps_cmac_crypto_and_owner(self) -> None:
        new = D.update_file(record(), ALICE, "https://h/new", U2, output=False)
        assert new == FileRecord(U2, "https://h/new", GCM, ("alice",), CMAC)

    def test_output_copy_has_no_cmac(self) -> None:
        new = D.update_file(record(cmac=CMAC), ALICE, "https://h/new", U2, output=True)
        assert new == FileRecord(U2, "https://h/new", GCM, ("alice",), None)

    def test_errors_in_order(self) -> None:
        refused(lambda: D.update_file(None, ALICE, "rel", U2, output=False), INVALID, NO_ID)
        refused(lambda: D.update_file(record(), BOB, "rel", U2, output=False), DENIED, PD)
        refused(lambda: D.update_file(record(owner=("alice", "bob")), ALICE, "https://h/n", U2, output=True), DENIED, PD)
        refused(lambda: D.update_file(record(), ADMIN, "https://h/n", U2, output=False), DENIED, PD)
        refused(lambda: D.update_file(record(), ALICE, "rel", U2, output=False), INVALID, "relative URL without a base")

    def test_new_url_follows_the_policy(self) -> None:
        refused(lambda: D.update_file(record(), ALICE, "file:///srv/data/x", U2, output=False), INVALID, NO_FILE_URLS)
        refused(lambda: D.update_file(record(), ALICE, "data:,x", U2, output=True), INVALID,
                "an output cannot be written to a data URL")
        moved = D.update_file(record(), ALICE, "file:///srv/data/x", U2, output=True, policy=FILES)
        assert moved.url == "file:///srv/data/x"


class TestFusion:
    def test_record(self) -> None:
        made = D.register_fusion_output(BOB, ["carol", "bob", "carol"], U1, U2, KEY16)
        assert made == FileRecord(U1, f"fusion:///TEACLAVE_FUSION_BASE/{U2}.fusion",
                                  CryptoInfo("teaclave-file-128", KEY16, b""), ("bob", "carol"), None)

    @pytest.mark.parametrize("owners", [[], ["alice"], ["bob", "carol"], ["Alice", "bob"], [""], ["alice "]])
    def test_more_than_one_entry_including_the_caller(self, owners: list[str]) -> None:
        refused(lambda: D.register_fusion_output(ALICE, owners, U1, U2, KEY16), DENIED, PD)

    @pytest.mark.parametrize(("owners", "message"), [
        (["alice", "alice"], "a fusion output needs at least two distinct owners"),
        (["alice", ""], "owner_list contains an empty user id"),
        (["alice", "b" * 257], "owner_list contains a user id longer than 256 characters"),
        (["alice"] + [f"u{i}" for i in range(300)], "owner_list has 301 entries, at most 256"),
    ])
    def test_kettle_bounds(self, owners: list[str], message: str) -> None:
        refused(lambda: D.register_fusion_output(ALICE, owners, U1, U2, KEY16), INVALID, message)

    def test_path_uuid_and_key_are_checked(self) -> None:
        with pytest.raises(ValueError):
            D.register_fusion_output(ALICE, ["alice", "bob"], U1, U1, KEY16)
        with pytest.raises(ValueError):
            D.register_fusion_output(ALICE, ["alice", "bob"], U1, U2, b"short")


class TestInputFromOutput:
    def test_same_uuid_and_contents(self) -> None:
        output = record(U3, owner=("alice", "bob"), cmac=CMAC)
        assert D.input_from_output(output, BOB) == output  # input-<same uuid>, same url/cmac/crypto/owners

    def test_errors_in_order(self) -> None:
        refused(lambda: D.input_from_output(None, ALICE), INVALID, NO_ID)
        refused(lambda: D.input_from_output(record(cmac=None), BOB), DENIED, PD)
        refused(lambda: D.input_from_output(record(cmac=CMAC), ADMIN), DENIED, PD)
        refused(lambda: D.input_from_output(record(cmac=None), ALICE), INVALID, NO_OUTPUT)


class TestFileView:
    def test_owners_and_cmac(self) -> None:
        assert D.file_view(record(owner=("alice", "bob")), BOB) == (("alice", "bob"), CMAC)
        assert D.file_view(record(cmac=None), ALICE) == (("alice",), b"")

    def test_refusals(self) -> None:
        refused(lambda: D.file_view(None, ALICE), INVALID, NO_ID)
        refused(lambda: D.file_view(record(), BOB), DENIED, PD)
        refused(lambda: D.file_view(record(), ADMIN), DENIED, PD)  # PlatformAdmin is not exempt


# === AssignData (§6.3) =============================================================================

FN = FunctionRecord(
    uuid="66666666-6666-4666-8666-666666666666", name="f", description="", public=True, executor_type="builtin",
    payload=b"", arguments=(FunctionArgument("a"),),
    inputs=(FunctionFile("in_a"), FunctionFile("in_b"), FunctionFile("in_opt", optional=True)),
    outputs=(FunctionFile("out_a"), FunctionFile("out_fused")),
    owner="fo", user_allowlist=(), usage_quota=None,
)
TASK = T.create_task(FN, ALICE, T.TaskDefinition(
    '{"a": 1}', "builtin",
    inputs_ownership=(("in_a", ("alice",)), ("in_b", ("bob",)), ("in_opt", ("alice",))),
    outputs_ownership=(("out_a", ("alice",)), ("out_fused", ("alice", "bob"))),
), TASK_UUID)

IN_A = record(U1, owner=("alice",))
IN_B = record(U2, owner=("bob",))
OUT_A = record(U3, owner=("alice",), cmac=None)
FUSED = record(U4, owner=("alice", "bob"), cmac=None, url=f"fusion:///TEACLAVE_FUSION_BASE/{U1}.fusion")
INPUTS = {U1: IN_A, U2: IN_B}
OUTPUTS = {U3: OUT_A, U4: FUSED}


def assign(task: TaskRecord, who: Caller, inputs: list[tuple[str, str]], outputs: list[tuple[str, str]] = (),  # type: ignore[assignment]
           input_files: dict[str, FileRecord] | None = None, output_files: dict[str, FileRecord] | None = None) -> TaskRecord:
    return T.assign_data(task, who, inputs, outputs, INPUTS if input_files is None else input_files,
                         OUTPUTS if output_files is None else output_files)


class TestAssignData:
    def test_every_owner_assigns_its_files_then_data_assigned(self) -> None:
        step1 = assign(TASK, ALICE, [("in_a", f"input-{U1}")], [("out_a", f"output-{U3}")])
        assert step1.status == TaskStatus.CREATED
        assert (step1.assigned_inputs, step1.assigned_outputs) == ({"in_a": IN_A}, {"out_a": OUT_A})
        step2 = assign(step1, BOB, [("in_b", f"input-{U2.upper()}")], [("out_fused", f"output-{U4}")])
        assert (step2.assigned_inputs["in_b"], step2.assigned_outputs["out_fused"]) == (IN_B, FUSED)
        # an optional input named in the ownership list must be assigned too (§6.3 step 8)
        assert step2.status == TaskStatus.CREATED
        step3 = assign(step2, ALICE, [("in_opt", f"input-{U1}")])
        assert step3.status == TaskStatus.DATA_ASSIGNED and T.data_complete(step3)

    def test_the_task_keeps_snapshot_copies(self) -> None:
        task = assign(TASK, ALICE, [("in_a", f"input-{U1}")])
        assert task.assigned_inputs["in_a"] is not None
        # what the task stored survives a round trip through its encoding unchanged
        assert TaskRecord.from_bytes(task.to_bytes()).assigned_inputs == {"in_a": IN_A}

    def test_fusion_output_by_either_owner(self) -> None:
        for who in (ALICE, BOB):
            assert assign(TASK, who, [], [("out_fused", f"output-{U4}")]).assigned_outputs == {"out_fused": FUSED}

    def test_one_file_may_fill_two_names_with_the_same_owners(self) -> None:
        task = assign(TASK, ALICE, [("in_a", f"input-{U1}"), ("in_opt", f"input-{U1}")])
        assert task.assigned_inputs == {"in_a": IN_A, "in_opt": IN_A}

    def test_participation_then_state_come_first(self) -> None:
        garbage = [("in_a", "input-not-a-uuid")]
        refused(lambda: assign(TASK, CAROL, garbage), DENIED, PD)
        refused(lambda: assign(TASK, ADMIN, garbage), DENIED, PD)
        for status in TaskStatus:
            if status != TaskStatus.CREATED:
                refused(lambda: assign(replace(TASK, status=status), ALICE, garbage), UNKNOWN,
                        "failed to assign data to task")

    def test_input_ids_are_parsed_before_any_lookup(self) -> None:
        refused(lambda: assign(TASK, ALICE, [("in_a", f"input-{U3}"), ("in_b", "input-not-a-uuid")]), INVALID,
                "malformed data id 'input-not-a-uuid'")

    def test_input_errors_come_before_output_parsing(self) -> None:
        refused(lambda: assign(TASK, ALICE, [("in_a", f"input-{U3}")], [("out_a", "garbage")]), INVALID, NO_ID)
        refused(lambda: assign(TASK, ALICE, [("in_a", f"input-{U1}")], [("out_a", "garbage")]), INVALID,
                "malformed data id 'garbage'")

    @pytest.mark.parametrize(("who", "inputs", "outputs", "code", "message"), [
        # unknown, or not an input ID
        (ALICE, [("in_a", f"input-{U3}")], [], INVALID, NO_ID),
        (ALICE, [("in_a", f"output-{U3}")], [], INVALID, NO_ID),
        (ALICE, [("in_a", f"function-{U1}")], [], INVALID, NO_ID),
        (ALICE, [], [("out_a", f"input-{U1}")], INVALID, NO_ID),
        # caller not an owner of the file
        (ALICE, [("in_b", f"input-{U2}")], [], DENIED, PD),
        # name not declared
        (ALICE, [("nope", f"input-{U1}")], [], DENIED, PD),
        (ALICE, [("out_a", f"input-{U1}")], [], DENIED, PD),
        # declared owners differ from the file's
        (ALICE, [("in_b", f"input-{U1}")], [], DENIED, PD),
        (ALICE, [], [("out_fused", f"output-{U3}")], DENIED, PD),
        (BOB, [], [("out_a", f"output-{U4}")], DENIED, PD),
        # the same name twice in one request
        (ALICE, [("in_a", f"input-{U1}"), ("in_a", f"input-{U1}")], [], DENIED, PD),
        # the first failing entry wins
        (ALICE, [("in_a", f"input-{U1}"), ("in_b", f"input-{U4}"), ("nope", f"input-{U1}")], [], INVALID, NO_ID),
        (ALICE, [("nope", f"input-{U1}"), ("in_b", f"input-{U4}")], [], DENIED, PD),
    ])
    def test_refusals(self, who: Caller, inputs: list[Any], outputs: list[Any], code: grpc.StatusCode, message: str) -> None:
        refused(lambda: assign(TASK, who, inputs, outputs), code, message)

    def test_a_name_assigned_earlier_cannot_be_reassigned(self) -> None:
        task = assign(TASK, ALICE, [("in_a", f"input-{U1}")])
        refused(lambda: assign(task, ALICE, [("in_a", f"input-{U1}")]), DENIED, PD)

    def test_an_output_that_already_has_a_cmac_is_refused(self) -> None:  # Kettle's choice on §12 #11
        written = {U3: replace(OUT_A, cmac=CMAC)}
        refused(lambda: assign(TASK, ALICE, [], [("out_a", f"output-{U3}")], output_files=written), DENIED, PD)

    def test_empty_lists_advance_a_task_without_files(self) -> None:
        no_files = replace(TASK, inputs_ownership={}, outputs_ownership={})
        assert T.assign_data(no_files, ALICE, [], []).status == TaskStatus.DATA_ASSIGNED
        assert T.assign_data(TASK, ALICE, [], []) == TASK

    def test_too_large_a_task_is_refused(self) -> None:
        huge = replace(IN_A, url="https://h/" + "a" * (MAX_RECORD_BYTES + 10))
        with pytest.raises(KettleError) as info:
            assign(TASK, ALICE, [("in_a", f"input-{U1}")], input_files={U1: huge})
        assert info.value.code == INVALID and "too large" in info.value.message

    def test_staged_task_carries_the_snapshots(self) -> None:
        task = assign(assign(TASK, ALICE, [("in_a", f"input-{U1}"), ("in_opt", f"input-{U1}")],
                             [("out_a", f"output-{U3}")]), BOB, [("in_b", f"input-{U2}")], [("out_fused", f"output-{U4}")])
        approved = T.approve_task(T.approve_task(task, ALICE, FN, now=1), BOB, FN, now=1)
        staged = T.build_staged_task(T.stage_task(approved, 1), FN)
        assert staged.input_data == {"in_a": IN_A, "in_b": IN_B, "in_opt": IN_A}
        assert staged.output_data == {"out_a": OUT_A, "out_fused": FUSED}


class TestFilesToRead:
    def test_parsable_ids_of_the_right_kind_deduplicated(self) -> None:
        inputs = [("in_a", f"input-{U1}"), ("x", "garbage"), ("y", f"output-{U3}"), ("in_a", f"input-{U1.upper()}")]
        outputs = [("out_a", f"output-{U3}"), ("out_fused", f"output-{U4}")]
        assert T.files_to_read(TASK, inputs, outputs) == ([U1], [U3, U4])

    def test_bounded_by_the_declared_names(self) -> None:
        many = [(f"n{i}", f"input-{i:08x}-0000-4000-8000-000000000000") for i in range(10_000)]
        to_read, _ = T.files_to_read(TASK, many, [])
        assert len(to_read) == len(TASK.inputs_ownership) + 1
        # ... which is enough to find the first error, whatever comes later
        found = {bare: record(bare) for bare in to_read}
        refused(lambda: T.assign_data(TASK, ALICE, many, [], found, {}), DENIED, PD)
