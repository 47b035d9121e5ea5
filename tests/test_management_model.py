"""Management's pure rules: functions (spec §4, §12) and tasks (§6), as tables, without sockets.

Each refusal is checked with its gRPC code and exact text (Appendix B), and
where several checks could fail at once, that the spec's first one wins.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import grpc
import pytest

from kettle.errors import KettleError
from kettle.model import functions as F
from kettle.model import tasks as T
from kettle.model.consent import task_digest
from kettle.model.functions import (
    Caller,
    FunctionDefinition,
    FunctionIndex,
    UsageRecord,
)
from kettle.model.records import (
    Approval,
    CryptoInfo,
    FileRecord,
    FunctionArgument,
    FunctionFile,
    FunctionRecord,
    TaskRecord,
    TaskResult,
    TaskStatus,
)
from kettle.model.users import Role

UNKNOWN, INVALID, DENIED = (
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.PERMISSION_DENIED,
)

NOW = 1_800_000_000
"""A fixed wall-clock time (Unix seconds) for approvals and invocations."""
FN_UUID = "11111111-1111-4111-8111-111111111111"
TASK_UUID = "22222222-2222-4222-8222-222222222222"


def caller(user: str, role: str) -> Caller:
    return Caller(user, Role.parse(role))


ADMIN = caller("admin", "PlatformAdmin")
OWNER = caller("fo", "FunctionOwner")
OTHER_FO = caller("fo2", "FunctionOwner")
ALICE = caller("alice", "DataOwner-bank")  # group attribute "bank"
BOB = caller("bob", "DataOwnerManager-bank")
CAROL = caller("carol", "DataOwner-hospital")
NOBODY = caller("mallory", "Nonsense")


def refused(action: Callable[[], Any], code: grpc.StatusCode, message: str) -> None:
    with pytest.raises(KettleError) as info:
        action()
    assert (info.value.code, info.value.message) == (code, message)


def function(**changes: Any) -> FunctionRecord:
    base = FunctionRecord(
        uuid=FN_UUID,
        name="mock-echo",
        description="echo",
        public=True,
        executor_type="builtin",
        payload=b"",
        arguments=(FunctionArgument("message", "", True),),
        inputs=(),
        outputs=(),
        owner="fo",
        user_allowlist=(),
        usage_quota=None,
    )
    return replace(base, **changes)


def definition(**changes: Any) -> FunctionDefinition:
    base = FunctionDefinition(
        name="mock-echo",
        description="echo",
        executor_type="python",
        public=True,
        payload=b"def entrypoint(argv):\n    return ''\n",
        arguments=(FunctionArgument("message", "", True),),
        inputs=(),
        outputs=(),
        user_allowlist=(),
        usage_quota=-1,
    )
    return replace(base, **changes)


def task_def(arguments: str = '{"message": "hi"}', executor: str = "builtin", **changes: Any) -> T.TaskDefinition:
    return T.TaskDefinition(function_arguments=arguments, executor=executor, **changes)


def new_task(fn: FunctionRecord | None = None, who: Caller = ALICE, **changes: Any) -> TaskRecord:
    return T.create_task(fn or function(), who, task_def(**changes), TASK_UUID)


def file_record(name: str) -> FileRecord:
    return FileRecord(uuid=name, url="file:///x", crypto_info=CryptoInfo("raw"), owner=("alice",))


# === functions ===========================================================================


class TestExecutorTypeAndQuota:
    @pytest.mark.parametrize("executor_type", ["builtin", "python", "wamr"])
    def test_accepted(self, executor_type: str) -> None:
        assert F.validate_executor_type(executor_type) == executor_type

    @pytest.mark.parametrize("executor_type", ["", "Builtin", "mesapy", "python ", "WAMR"])
    def test_refused_with_the_reference_text(self, executor_type: str) -> None:
        refused(lambda: F.validate_executor_type(executor_type), INVALID, f"Invalid executor type: {executor_type}")

    def test_huge_executor_type_is_not_echoed_whole(self) -> None:
        with pytest.raises(KettleError) as info:
            F.validate_executor_type("x" * 100_000)
        assert info.value.code == INVALID and len(info.value.message) < 200

    @pytest.mark.parametrize(("wire", "stored", "back"), [
        (-1, None, -1), (-2**31, None, -1), (0, 0, 0), (1, 1, 1), (2**31 - 1, 2**31 - 1, 2**31 - 1),
    ])
    def test_quota_mapping(self, wire: int, stored: int | None, back: int) -> None:
        assert F.quota_from_wire(wire) == stored
        assert F.quota_to_wire(stored) == back

    @pytest.mark.parametrize(("quota", "uses", "ok"), [
        (None, 10**6, True), (0, 0, False), (1, 0, True), (1, 1, False), (2, 1, True), (2, 5, False),
    ])
    def test_quota_check(self, quota: int | None, uses: int, ok: bool) -> None:
        check = lambda: F.check_quota(function(usage_quota=quota), UsageRecord(FN_UUID, uses))
        if ok:
            check()
        else:
            refused(check, UNKNOWN, "function quota has been used up")


class TestRegisterAndUpdate:
    def test_register_sets_owner_and_maps_quota(self) -> None:
        record = F.register_function(definition(usage_quota=-5, user_allowlist=("u1",)), OWNER, FN_UUID)
        assert (record.uuid, record.owner, record.usage_quota, record.disabled) == (FN_UUID, "fo", None, False)
        assert F.register_function(definition(usage_quota=0), OWNER, FN_UUID).usage_quota == 0

    @pytest.mark.parametrize(("changes", "message"), [
        ({"arguments": (FunctionArgument("a"), FunctionArgument("a", "x", False))}, "argument key 'a' is declared twice"),
        ({"inputs": (FunctionFile("in"), FunctionFile("x"), FunctionFile("in", optional=True))},
         "input name 'in' is declared twice"),
        ({"outputs": (FunctionFile(""), FunctionFile(""))}, "output name '' is declared twice"),
        ({"outputs": (FunctionFile("o" * 200), FunctionFile("o" * 200))},
         f"output name '{'o' * 64}…' is declared twice"),
    ])
    def test_names_are_declared_once(self, changes: dict[str, Any], message: str) -> None:
        """Teaclave accepts duplicates; a task could never tell the two apart (Kettle refuses them)."""
        refused(lambda: F.register_function(definition(**changes), OWNER, FN_UUID), INVALID, message)
        refused(lambda: F.update_function(function(), OWNER, definition(**changes)), INVALID, message)

    def test_the_same_name_may_be_an_argument_an_input_and_an_output(self) -> None:
        record = F.register_function(definition(
            arguments=(FunctionArgument("x"),), inputs=(FunctionFile("x"),), outputs=(FunctionFile("x"),)
        ), OWNER, FN_UUID)
        assert (record.arguments[0].key, record.inputs[0].name, record.outputs[0].name) == ("x", "x", "x")

    @pytest.mark.parametrize(("name", "message"), [
        ("", "a builtin function needs the name of the built-in it runs, like builtin-echo"),
        ("\0", "no built-in function is named '\\x00' (docs/builtins.md lists them)"),
        ("builtin-echo\0", "no built-in function is named 'builtin-echo\\x00' (docs/builtins.md lists them)"),
        ("builtin-nonexistent", "no built-in function is named 'builtin-nonexistent' (docs/builtins.md lists them)"),
        ("echo", "no built-in function is named 'echo' (docs/builtins.md lists them)"),
        ("builtin_echo", "no built-in function is named 'builtin_echo' (docs/builtins.md lists them)"),
        ("builtin-../echo", "no built-in function is named 'builtin-../echo' (docs/builtins.md lists them)"),
        ("Builtin-Echo", "no built-in function is named 'Builtin-Echo' (docs/builtins.md lists them)"),
        ("builtin-" + "e" * 300, f"no built-in function is named 'builtin-{'e' * 56}…' (docs/builtins.md lists them)"),
    ])
    def test_a_builtin_must_name_a_builtin(self, name: str, message: str) -> None:
        builtin = definition(name=name, executor_type="builtin", payload=b"")
        refused(lambda: F.register_function(builtin, OWNER, FN_UUID), INVALID, message)
        refused(lambda: F.update_function(function(), OWNER, builtin), INVALID, message)

    @pytest.mark.parametrize("name", ["builtin-echo", "builtin_online_decrypt", "builtin-private-join-and-compute"])
    def test_known_builtins_register(self, name: str) -> None:
        record = F.register_function(definition(name=name, executor_type="builtin", payload=b""), OWNER, FN_UUID)
        assert (record.name, record.executor_type) == (name, "builtin")

    def test_other_executor_types_take_any_name(self) -> None:
        for executor_type in ("python", "wamr"):
            assert F.register_function(definition(name="", executor_type=executor_type), OWNER, FN_UUID).name == ""

    @pytest.mark.parametrize(("changes", "fragment"), [
        ({"name": "n" * 257}, "function name"),
        ({"arguments": tuple(FunctionArgument(f"a{i}") for i in range(257))}, "256 arguments"),
        ({"inputs": tuple(FunctionFile(f"i{i}") for i in range(257))}, "256 inputs"),
        ({"outputs": tuple(FunctionFile(f"o{i}") for i in range(257))}, "256 outputs"),
        ({"user_allowlist": tuple(f"u{i}" for i in range(257))}, "256 user_allowlist"),
        ({"arguments": (FunctionArgument("k" * 257),)}, "at most 256 characters"),
        ({"inputs": (FunctionFile("k" * 257),)}, "at most 256 characters"),
        ({"user_allowlist": ("u" * 257,)}, "at most 256 characters"),
        ({"payload": b"\0" * (F.MAX_PAYLOAD_BYTES + 1)}, "function payload is too large (16777217 bytes, at most"),
        ({"description": "d" * (4 * 1024 * 1024)}, "function is too large to store"),
    ])
    def test_register_bounds(self, changes: dict[str, Any], fragment: str) -> None:
        with pytest.raises(KettleError) as info:
            F.register_function(definition(**changes), OWNER, FN_UUID)
        assert info.value.code == INVALID and fragment in info.value.message

    def test_bounds_are_inclusive(self) -> None:
        record = F.register_function(definition(
            name="n" * 256,
            arguments=tuple(FunctionArgument(f"{i:0256d}") for i in range(256)),
            user_allowlist=tuple(f"u{i}" for i in range(256)),
            payload=b"\xff" * F.MAX_PAYLOAD_BYTES,
        ), OWNER, FN_UUID)
        assert len(record.arguments) == 256 and len(record.payload) == F.MAX_PAYLOAD_BYTES

    def test_register_checks_executor_type_before_bounds(self) -> None:
        refused(lambda: F.register_function(definition(executor_type="x", name="n" * 999), OWNER, FN_UUID),
                INVALID, "Invalid executor type: x")

    @pytest.mark.parametrize(("current", "who", "executor_type", "code", "message"), [
        (None, OWNER, "bad", INVALID, "invalid function id"),
        (function(), ADMIN, "bad", DENIED, "permission denied"),  # PlatformAdmin is not exempt
        (function(), OTHER_FO, "builtin", DENIED, "permission denied"),
        (function(), OWNER, "bad", INVALID, "Invalid executor type: bad"),
    ])
    def test_update_refusals_in_order(
        self, current: FunctionRecord | None, who: Caller, executor_type: str, code: grpc.StatusCode, message: str
    ) -> None:
        refused(lambda: F.update_function(current, who, definition(executor_type=executor_type)), code, message)

    def test_update_replaces_all_but_identity_counter_and_flag(self) -> None:
        current = function(disabled=True, user_allowlist=("x",), usage_quota=3)
        new = F.update_function(current, OWNER, definition(
            name="new", description="d2", executor_type="python", public=False, payload=b"code",
            arguments=(), inputs=(FunctionFile("in"),), outputs=(FunctionFile("out", optional=True),),
            user_allowlist=("y",), usage_quota=-1,
        ))
        assert (new.uuid, new.owner, new.disabled) == (FN_UUID, "fo", True)
        assert (new.name, new.description, new.executor_type, new.public, new.payload) == (
            "new", "d2", "python", False, b"code")
        assert (new.inputs, new.outputs, new.user_allowlist, new.usage_quota) == (
            (FunctionFile("in"),), (FunctionFile("out", optional=True),), ("y",), None)

    @pytest.mark.parametrize(("old", "new", "disabled", "added", "removed"), [
        (("a", "b"), ("b", "c"), False, ("c",), ("a",)),
        ((), ("a", "a"), False, ("a",), ()),
        (("a",), ("a",), False, (), ()),
        (("a",), ("b",), True, (), ("a",)),  # a disabled function stays out of the indexes
    ])
    def test_allowlist_changes(
        self, old: tuple[str, ...], new: tuple[str, ...], disabled: bool,
        added: tuple[str, ...], removed: tuple[str, ...],
    ) -> None:
        before = function(user_allowlist=old)
        after = function(user_allowlist=new, disabled=disabled)
        assert F.allowlist_changes(before, after) == (added, removed)


class TestVisibility:
    """GetFunction (§4.2) and GetFunctionUsageStats, with Kettle's SHOULD #10 for owners."""

    PRIVATE = function(public=False, payload=b"secret", user_allowlist=("alice", "hospital"))

    @pytest.mark.parametrize(("record", "who", "view"), [
        (function(payload=b"p"), CAROL, "full"),  # public: anyone
        (PRIVATE, ADMIN, "full"),
        (PRIVATE, OWNER, "full"),
        (PRIVATE, ALICE, "restricted"),  # user ID allowlisted
        (PRIVATE, CAROL, "denied"),  # only her role attribute "hospital" is listed: not enough here (§4.3)
        (PRIVATE, OTHER_FO, "denied"),
        (PRIVATE, NOBODY, "denied"),
    ])
    def test_get_function(self, record: FunctionRecord, who: Caller, view: str) -> None:
        if view == "denied":
            refused(lambda: F.function_view(record, who), DENIED, "permission denied")
            return
        shown = F.function_view(record, who)
        if view == "full":
            assert shown == record
        else:
            assert shown == replace(record, payload=b"", user_allowlist=())

    def test_get_function_unknown(self) -> None:
        refused(lambda: F.function_view(None, ADMIN), INVALID, "invalid function id")

    @pytest.mark.parametrize(("record", "who", "allowed"), [
        (function(), CAROL, True),
        (PRIVATE, ADMIN, True),
        (PRIVATE, ALICE, True),
        (PRIVATE, OWNER, True),  # Kettle: the owner reads its own stats (Teaclave refuses)
        (PRIVATE, CAROL, False),
        (PRIVATE, OTHER_FO, False),
    ])
    def test_usage_stats(self, record: FunctionRecord, who: Caller, allowed: bool) -> None:
        if allowed:
            assert F.check_may_read_usage(record, who) is record
        else:
            refused(lambda: F.check_may_read_usage(record, who), DENIED, "permission denied")
        refused(lambda: F.check_may_read_usage(None, who), INVALID, "invalid function id")


class TestOwnershipDisableDelete:
    @pytest.mark.parametrize(("who", "allowed"), [(OWNER, True), (ADMIN, False), (OTHER_FO, False)])
    def test_update_and_delete_need_the_owner(self, who: Caller, allowed: bool) -> None:
        if allowed:
            F.check_owner(function(), who)
        else:
            refused(lambda: F.check_owner(function(), who), DENIED, "permission denied")
        refused(lambda: F.check_owner(None, who), INVALID, "invalid function id")

    @pytest.mark.parametrize(("who", "allowed"), [(OWNER, True), (ADMIN, True), (OTHER_FO, False), (ALICE, False)])
    def test_disable(self, who: Caller, allowed: bool) -> None:
        record = function(user_allowlist=("alice",))
        if allowed:
            disabled = F.disable_function(record, who)
            assert (disabled.user_allowlist, disabled.disabled) == ((), True)
            assert replace(disabled, user_allowlist=record.user_allowlist, disabled=False) == record
        else:
            refused(lambda: F.disable_function(record, who), DENIED, "permission denied")
        refused(lambda: F.disable_function(None, who), INVALID, "invalid function id")


class TestListFunctions:
    INDEX = FunctionIndex("fo", ("function-b", "function-a"), ("function-c",))

    def test_own_index_in_registration_order(self) -> None:
        assert F.list_functions(OWNER, "fo", self.INDEX) == (["function-b", "function-a"], ["function-c"])

    def test_no_index_is_empty(self) -> None:
        assert F.list_functions(OWNER, "fo", None) == ([], [])
        assert F.list_functions(ADMIN, "fo", None, ["function-z"]) == ([], [])  # §12 #19, kept

    def test_admin_sees_every_function_as_allowed(self) -> None:
        assert F.list_functions(ADMIN, "fo", self.INDEX, ["function-z", "function-a"]) == (
            ["function-b", "function-a"], ["function-a", "function-z"])

    @pytest.mark.parametrize("who", [OTHER_FO, ALICE, NOBODY])
    def test_others_may_not_list(self, who: Caller) -> None:
        refused(lambda: F.list_functions(who, "fo", self.INDEX), DENIED, "permission denied")

    def test_function_ids_from_keys(self) -> None:
        keys = [f"function-{FN_UUID}".encode(), b"function-garbage", b"functionx"]
        assert F.function_ids_from_keys(keys) == [f"function-{FN_UUID}"]


class TestRecords:
    def test_index_operations(self) -> None:
        index = FunctionIndex("u").with_registered("f1").with_registered("f1").with_allowed("f2").with_allowed("f1")
        assert index == FunctionIndex("u", ("f1",), ("f2", "f1"))
        assert index.without_allowed("f1") == FunctionIndex("u", ("f1",), ("f2",))
        assert index.without("f1") == FunctionIndex("u", (), ("f2",))
        assert FunctionIndex.from_bytes(index.to_bytes()) == index

    def test_usage_record(self) -> None:
        usage = UsageRecord(FN_UUID).incremented().incremented()
        assert UsageRecord.from_bytes(usage.to_bytes()) == UsageRecord(FN_UUID, 2)

    @pytest.mark.parametrize("raw", [b"", b"[]", b'{"function_id": "x"}', b'{"function_id": "x", "use_numbers": -1}',
                                     b'{"function_id": "x", "use_numbers": true}'])
    def test_usage_decoding_is_strict(self, raw: bytes) -> None:
        with pytest.raises(ValueError):
            UsageRecord.from_bytes(raw)


class TestCreateTaskPermission:
    """The allowlist table of §4.3 (CreateTask compares the role *attribute*) and SHOULD #7."""

    @pytest.mark.parametrize(("record", "who", "allowed"), [
        (function(), ALICE, True),
        (function(), BOB, True),
        (function(), ADMIN, True),
        (function(), OWNER, False),  # FunctionOwner never creates tasks
        (function(), NOBODY, False),
        (function(public=False, user_allowlist=("bank",)), ALICE, True),
        (function(public=False, user_allowlist=("bank",)), BOB, True),
        (function(public=False, user_allowlist=("bank",)), CAROL, False),
        (function(public=False, user_allowlist=("alice",)), ALICE, False),  # a user ID is not a group
        (function(public=False), ADMIN, True),
        (function(public=False, user_allowlist=("fo",)), OWNER, False),
        (function(disabled=True), ADMIN, False),
        (function(disabled=True), ALICE, False),
        (function(public=False, user_allowlist=("bank",), disabled=True), ALICE, False),
    ])
    def test_table(self, record: FunctionRecord, who: Caller, allowed: bool) -> None:
        if allowed:
            assert F.check_may_create_task(record, who) is record
        else:
            refused(lambda: F.check_may_create_task(record, who), DENIED, "permission denied")


# === tasks ====================================================================================


class TestIdsAndStrings:
    @pytest.mark.parametrize(("text", "bare"), [
        (f"task-{TASK_UUID}", TASK_UUID),
        (f"task-{TASK_UUID.upper()}", TASK_UUID),
        (f"task-{TASK_UUID.replace('-', '')}", TASK_UUID),
    ])
    def test_task_ids(self, text: str, bare: str) -> None:
        assert T.parse_task_id(text) == bare

    @pytest.mark.parametrize("text", [
        "", "task", "task-", f"output-{TASK_UUID}", f"function-{TASK_UUID}", f"Task-{TASK_UUID}",
        "task-not-a-uuid", TASK_UUID, f"task-{TASK_UUID}" + "0" * 300,
    ])
    def test_bad_task_ids(self, text: str) -> None:
        refused(lambda: T.parse_task_id(text), INVALID, "invalid task id")

    @pytest.mark.parametrize("text", ["", f"task-{FN_UUID}", "function-x", "function-" + "a" * 1000])
    def test_bad_function_ids(self, text: str) -> None:
        refused(lambda: F.parse_function_id(text), INVALID, "invalid function id")

    @pytest.mark.parametrize("executor", ["mesapy", "builtin", "wamr"])
    def test_executors(self, executor: str) -> None:
        assert T.validate_executor(executor) == executor

    @pytest.mark.parametrize(("alias", "engine"), [("python", "mesapy"), ("wasm", "wamr")])
    def test_executor_aliases_become_the_reference_names(self, alias: str, engine: str) -> None:
        assert T.validate_executor(alias) == engine

    @pytest.mark.parametrize("executor", ["", "Python", "MesaPy", "Builtin", "WASM", "wasm32", " python"])
    def test_bad_executors(self, executor: str) -> None:
        refused(lambda: T.validate_executor(executor), INVALID, f"Unsupported executor: {executor}")


class TestArguments:
    @pytest.mark.parametrize("text", [
        "", "   ", "[]", "null", "1", '"text"', "{", "{'a': 1}", '{"a": NaN}', '{"a": Infinity}',
        '{"a": 1e400}', '{"a": "\\ud800"}', "[" * 100_000,
    ])
    def test_not_a_json_object_is_internal(self, text: str) -> None:
        with pytest.raises(KettleError) as info:
            T.parse_arguments(text)
        assert info.value.code == INVALID

    def test_duplicate_keys_last_wins(self) -> None:
        assert T.parse_arguments('{"a": 1, "a": 2}') == {"a": 2}

    def test_spec_merge_rule(self) -> None:
        """Overwritable arguments take the caller's values (any JSON type), the others
        their defaults as JSON strings; compact, sorted at every level, UTF-8 kept."""
        fn = function(arguments=(
            FunctionArgument("num_user", "", True),
            FunctionArgument("save_log", "false", True),
            FunctionArgument("fixed", "42", False),
            FunctionArgument("nested", "", True),
        ))
        merged = T.merge_arguments(fn, {"save_log": "true", "num_user": 3, "nested": {"z": [1, 2.5], "a": "é"}})
        assert merged == '{"fixed":"42","nested":{"a":"é","z":[1,2.5]},"num_user":3,"save_log":"true"}'

    def test_non_overwritable_default_wins_over_a_same_key(self) -> None:
        fn = function(arguments=(FunctionArgument("k", "x", True), FunctionArgument("k", "fixed", False)))
        assert T.merge_arguments(fn, {"k": 1}) == '{"k":"fixed"}'

    def test_created_task_stores_the_merged_text(self) -> None:
        fn = function(arguments=(FunctionArgument("message", "", True), FunctionArgument("mode", "fast", False)))
        task = T.create_task(fn, ALICE, task_def('{"message": {"b": 1, "a": null}}'), TASK_UUID)
        assert task.function_arguments == '{"message":{"a":null,"b":1},"mode":"fast"}'
        assert json.loads(task.function_arguments) == {"message": {"a": None, "b": 1}, "mode": "fast"}


class TestBuiltinTasks:
    """CreateTask refuses a task its built-in could never run (Kettle's check, before any approval)."""

    ECHO = function(name="builtin-echo")
    PSI = function(
        name="builtin-ordered-set-intersect",
        arguments=(FunctionArgument("order", "", True),),
        inputs=(FunctionFile("input_data1"), FunctionFile("input_data2", optional=True)),
        outputs=(FunctionFile("output_result1"), FunctionFile("output_result2")),
    )
    PSI_FILES = {
        "inputs_ownership": (("input_data1", ("alice",)), ("input_data2", ("bob",))),
        "outputs_ownership": (("output_result1", ("alice",)), ("output_result2", ("bob",))),
    }
    PJC = function(
        name="builtin-private-join-and-compute",
        arguments=(FunctionArgument("num_user", "", True),),
        inputs=(FunctionFile("input_data0"), FunctionFile("input_data1"), FunctionFile("input_data2", optional=True)),
        outputs=(FunctionFile("output_data0"), FunctionFile("output_data1")),
    )
    PJC_FILES = {
        "inputs_ownership": (("input_data0", ("alice",)), ("input_data1", ("bob",))),
        "outputs_ownership": (("output_data0", ("alice",)), ("output_data1", ("bob",))),
    }

    @pytest.mark.parametrize(("fn", "arguments", "files", "message"), [
        (ECHO, '{"message": 3}', {}, "arguments do not fit builtin-echo: message: expected a string, got int"),
        # a fixed argument's default is a JSON string (§3.1), which is all right here…
        (function(name="builtin-ordered-set-intersect", arguments=(FunctionArgument("order", "ascending", False),)),
         "{}", {}, "builtin-ordered-set-intersect needs an input file named 'input_data1'"),
        # …and not here
        (function(name="builtin-private-join-and-compute", arguments=(FunctionArgument("num_user", "2", False),)),
         "{}", {}, "arguments do not fit builtin-private-join-and-compute: num_user: expected an unsigned integer, got str"),
        # a deferred argument (read by the function after its files) is checked at once
        (PSI, '{"order": 1}', PSI_FILES, "arguments do not fit builtin-ordered-set-intersect: order: expected a string, got int"),
        # an optional file a built-in opens unconditionally must be assigned
        (PSI, '{"order": "ascending"}', {**PSI_FILES, "inputs_ownership": (("input_data1", ("alice",)),)},
         "builtin-ordered-set-intersect needs an input file named 'input_data2'"),
        (PJC, '{"num_user": 1}', PJC_FILES, "arguments refused by builtin-private-join-and-compute: "
         "The demo requires at least two parties!"),
        (PJC, '{"num_user": 2.0}', PJC_FILES, "arguments do not fit builtin-private-join-and-compute: "
         "num_user: expected an unsigned integer, got float"),
        (PJC, '{"num_user": 3}', PJC_FILES, "builtin-private-join-and-compute needs an input file named 'input_data2'"),
        # the file list depends on num_user and is built lazily: a huge count costs nothing
        (PJC, '{"num_user": 1000000000000}', PJC_FILES,
         "builtin-private-join-and-compute needs an input file named 'input_data2'"),
    ])
    def test_a_task_its_builtin_cannot_run_is_refused(
        self, fn: FunctionRecord, arguments: str, files: dict[str, Any], message: str
    ) -> None:
        refused(lambda: new_task(fn, arguments=arguments, **files), INVALID, f"invalid task: {message}")

    def test_runnable_tasks_and_tasks_left_to_fail_at_run_time_are_created(self) -> None:
        assert new_task(self.PJC, arguments='{"num_user": 2}', **self.PJC_FILES).function_arguments == '{"num_user":2}'
        assert new_task(self.PSI, arguments='{"order": "desending"}', **self.PSI_FILES)
        # value checks the reference makes later (an unknown order) stay at run time, like a
        # name that is no built-in in a record stored before RegisterFunction refused such names
        assert new_task(self.PSI, arguments='{"order": "sideways"}', **self.PSI_FILES)
        assert new_task(function(name="builtin-no-such"), arguments='{"message": 3}')
        refused(lambda: new_task(self.ECHO, arguments='{"message": 3}', executor="mesapy"), INVALID,
                "executor mesapy cannot run a builtin function (its executor is builtin)")


FILES_FN = function(
    arguments=(FunctionArgument("a", "", True), FunctionArgument("fixed", "v", False)),
    inputs=(FunctionFile("in1"), FunctionFile("in_opt", optional=True)),
    outputs=(FunctionFile("out1"), FunctionFile("out_opt", optional=True)),
)
GOOD_INPUTS = (("in1", ("alice",)),)
GOOD_OUTPUTS = (("out1", ("bob",)),)


class TestCreateTask:
    @pytest.mark.parametrize(("fn", "who", "arguments", "executor", "inputs", "outputs", "code", "message"), [
        # 1. unknown function, even with everything else wrong
        (None, NOBODY, "x", "bad", (), (), INVALID, "invalid function id"),
        # 2. role, before the executor
        (FILES_FN, OWNER, "x", "bad", (), (), DENIED, "permission denied"),
        (function(public=False), CAROL, "x", "bad", (), (), DENIED, "permission denied"),
        # 3. executor, before the JSON
        (FILES_FN, ALICE, "x", "Python", (), (), INVALID, "Unsupported executor: Python"),
        # (Kettle) the executor runs the function's executor type, before the JSON
        (FILES_FN, ALICE, "x", "mesapy", (), (), INVALID, "executor mesapy cannot run a builtin function (its executor is builtin)"),
        (FILES_FN, ALICE, "x", "wasm", (), (), INVALID, "executor wamr cannot run a builtin function (its executor is builtin)"),
        (replace(FILES_FN, executor_type="python"), ALICE, "x", "builtin", (), (), INVALID,
         "executor builtin cannot run a python function (its executor is mesapy)"),
        (replace(FILES_FN, executor_type="wamr"), ALICE, "x", "python", (), (), INVALID,
         "executor mesapy cannot run a wamr function (its executor is wamr)"),
        # 4. JSON object, before the keys
        (FILES_FN, ALICE, "[]", "builtin", (), (), INVALID, "function_arguments is not a JSON object"),
        # 5. argument keys = overwritable keys exactly
        (FILES_FN, ALICE, "{}", "builtin", GOOD_INPUTS, GOOD_OUTPUTS, INVALID, "invalid task"),
        (FILES_FN, ALICE, '{"a": 1, "b": 2}', "builtin", GOOD_INPUTS, GOOD_OUTPUTS, INVALID, "invalid task"),
        (FILES_FN, ALICE, '{"a": 1, "fixed": 2}', "builtin", GOOD_INPUTS, GOOD_OUTPUTS, INVALID, "invalid task"),
        # 6. inputs: every required one, nothing undeclared
        (FILES_FN, ALICE, '{"a": 1}', "builtin", (), GOOD_OUTPUTS, INVALID, "invalid task"),
        (FILES_FN, ALICE, '{"a": 1}', "builtin", (*GOOD_INPUTS, ("zz", ("a",))), GOOD_OUTPUTS, INVALID,
         "invalid task"),
        # 7. outputs likewise
        (FILES_FN, ALICE, '{"a": 1}', "builtin", GOOD_INPUTS, (), INVALID, "invalid task"),
        (FILES_FN, ALICE, '{"a": 1}', "builtin", GOOD_INPUTS, (("in1", ("a",)),), INVALID, "invalid task"),
        # Kettle's bounds on owner lists
        (FILES_FN, ALICE, '{"a": 1}', "builtin", (("in1", tuple(f"u{i}" for i in range(257))),), GOOD_OUTPUTS,
         INVALID, "invalid task"),
        (FILES_FN, ALICE, '{"a": 1}', "builtin", (("in1", ("u" * 257,)),), GOOD_OUTPUTS, INVALID, "invalid task"),
    ])
    def test_validation_order(
        self, fn: FunctionRecord | None, who: Caller, arguments: str, executor: str,
        inputs: tuple[Any, ...], outputs: tuple[Any, ...], code: grpc.StatusCode, message: str,
    ) -> None:
        definition = T.TaskDefinition(arguments, executor, inputs, outputs)
        refused(lambda: T.create_task(fn, who, definition, TASK_UUID), code, message)

    @pytest.mark.parametrize(("inputs", "outputs"), [
        (GOOD_INPUTS, GOOD_OUTPUTS),
        ((*GOOD_INPUTS, ("in_opt", ("carol",))), (*GOOD_OUTPUTS, ("out_opt", ()))),
        ((("in1", ("x",)), ("in1", ("alice", "alice"))), GOOD_OUTPUTS),  # last entry wins, owners a set
    ])
    def test_accepted_files(self, inputs: tuple[Any, ...], outputs: tuple[Any, ...]) -> None:
        task = T.create_task(FILES_FN, ALICE, T.TaskDefinition('{"a": 1}', "builtin", inputs, outputs), TASK_UUID)
        assert task.inputs_ownership["in1"] == ("alice",)
        assert task.status == TaskStatus.CREATED and not task.result.ready

    @pytest.mark.parametrize(("executor_type", "given", "stored"), [
        ("python", "python", "mesapy"), ("wamr", "wasm", "wamr"), ("python", "mesapy", "mesapy"), ("wamr", "wamr", "wamr"),
    ])
    def test_an_engine_alias_is_stored_as_the_reference_name(self, executor_type: str, given: str, stored: str) -> None:
        fn = replace(FILES_FN, executor_type=executor_type)
        task = T.create_task(fn, ALICE, T.TaskDefinition('{"a": 1}', given, GOOD_INPUTS, GOOD_OUTPUTS), TASK_UUID)
        assert task.executor == stored

    def test_ownership_map(self) -> None:
        assert T.ownership_map([("a", ["x", "y"]), ("b", []), ("a", ["z", "z"])]) == {"a": ("z",), "b": ()}

    def test_record(self) -> None:
        fn = replace(FILES_FN, executor_type="wamr")
        task = T.create_task(fn, BOB, T.TaskDefinition('{"a": 1}', "wamr", GOOD_INPUTS, GOOD_OUTPUTS), TASK_UUID)
        assert (task.uuid, task.creator, task.function_id, task.function_owner, task.executor) == (
            TASK_UUID, "bob", FN_UUID, "fo", "wamr")
        assert (task.approved_users, task.assigned_inputs, task.assigned_outputs) == ((), {}, {})

    @pytest.mark.parametrize(("public", "participants"), [
        (True, ("alice", "bob", "carol", "dave")),
        (False, ("alice", "bob", "carol", "dave", "fo")),  # the owner of a private function takes part
    ])
    def test_participants(self, public: bool, participants: tuple[str, ...]) -> None:
        fn = replace(FILES_FN, public=public, user_allowlist=("bank",))
        definition = T.TaskDefinition('{"a": 1}', "builtin", (("in1", ("alice", "carol")),), (("out1", ("dave",)),))
        assert T.create_task(fn, BOB, definition, TASK_UUID).participants == participants

    def test_huge_argument_values_are_refused_cleanly(self) -> None:
        text = json.dumps({"message": '"' * (3 * 1024 * 1024)})
        with pytest.raises(KettleError) as info:
            T.create_task(function(), ALICE, task_def(text), TASK_UUID)
        assert info.value.code == INVALID and "too large" in info.value.message


# --- the state machine (§6.8) ------------------------------------------------------------------

ALL_STATUSES = list(TaskStatus)
PRE_STAGED = [TaskStatus.CREATED, TaskStatus.DATA_ASSIGNED, TaskStatus.APPROVED]
SCHEDULED = [TaskStatus.STAGED, TaskStatus.RUNNING]
TERMINAL = [TaskStatus.FINISHED, TaskStatus.CANCELED, TaskStatus.FAILED]

SOLO = new_task()  # public function, no files: alice is the only participant
PRIVATE_FN = function(public=False, user_allowlist=("bank",))
DUO = new_task(PRIVATE_FN)  # alice and the function owner "fo"
WITH_FILES = T.create_task(FILES_FN, ALICE, T.TaskDefinition('{"a": 1}', "builtin", GOOD_INPUTS, GOOD_OUTPUTS),
                           TASK_UUID)


def at(task: TaskRecord, status: TaskStatus, **changes: Any) -> TaskRecord:
    return replace(task, status=status, **changes)


def approved_by(task: TaskRecord, *users: str) -> TaskRecord:
    """The task with an approval of each user on its current digest."""
    return replace(task, approvals=tuple(Approval(u, task_digest(task), NOW) for u in users))


class TestAssignData:
    def test_no_files_completes_at_once(self) -> None:
        assert T.assign_data(SOLO, ALICE, [], []).status == TaskStatus.DATA_ASSIGNED
        assert T.assign_data(DUO, OWNER, [], []).status == TaskStatus.DATA_ASSIGNED

    def test_missing_files_stay_created(self) -> None:
        assert T.assign_data(WITH_FILES, ALICE, [], []) == WITH_FILES

    @pytest.mark.parametrize("status", [s for s in ALL_STATUSES if s != TaskStatus.CREATED])
    def test_only_created(self, status: TaskStatus) -> None:
        refused(lambda: T.assign_data(at(SOLO, status), ALICE, [], []), UNKNOWN, "failed to assign data to task")

    def test_participation_before_state(self) -> None:
        refused(lambda: T.assign_data(at(SOLO, TaskStatus.FINISHED), ADMIN, [], []), DENIED, "permission denied")

    def test_files_complete_the_data(self) -> None:
        """The full rules are in test_data_model.py; here: files move the state machine."""
        mine = replace(file_record(IN_UUID), uuid=IN_UUID)
        theirs = replace(file_record(OUT_UUID), uuid=OUT_UUID, owner=("bob",))
        half = T.assign_data(WITH_FILES, ALICE, [("in1", f"input-{IN_UUID}")], [], {IN_UUID: mine})
        assert (half.status, half.assigned_inputs) == (TaskStatus.CREATED, {"in1": mine})
        full = T.assign_data(half, BOB_OWNER, [], [("out1", f"output-{OUT_UUID}")], {}, {OUT_UUID: theirs})
        assert (full.status, full.assigned_outputs) == (TaskStatus.DATA_ASSIGNED, {"out1": theirs})
        # ... but the state check comes first
        refused(lambda: T.assign_data(at(WITH_FILES, TaskStatus.APPROVED), ALICE, [("in1", "input-x")], []),
                UNKNOWN, "failed to assign data to task")


IN_UUID = "33333333-3333-4333-8333-333333333333"
OUT_UUID = "44444444-4444-4444-8444-444444444444"
BOB_OWNER = caller("bob", "DataOwner-bank")


class TestApproveTask:
    @pytest.mark.parametrize("status", [TaskStatus.CREATED, TaskStatus.DATA_ASSIGNED])
    def test_single_participant_is_approved_at_once(self, status: TaskStatus) -> None:
        approved = T.approve_task(at(SOLO, status), ALICE, None, now=NOW)
        assert (approved.status, approved.approved_users) == (TaskStatus.APPROVED, ("alice",))

    def test_every_participant_must_approve(self) -> None:
        first = T.approve_task(DUO, ALICE, None, now=NOW)
        assert (first.status, first.approved_users) == (TaskStatus.DATA_ASSIGNED, ("alice",))
        again = T.approve_task(first, ALICE, None, now=NOW)  # idempotent
        assert again == first
        second = T.approve_task(first, OWNER, None, now=NOW)
        assert (second.status, second.approved_users) == (TaskStatus.APPROVED, ("alice", "fo"))

    @pytest.mark.parametrize("status", [TaskStatus.APPROVED, *SCHEDULED, *TERMINAL])
    def test_wrong_state(self, status: TaskStatus) -> None:
        refused(lambda: T.approve_task(at(SOLO, status), ALICE, None, now=NOW), UNKNOWN, "failed to approve task")

    def test_data_missing(self) -> None:
        refused(lambda: T.approve_task(WITH_FILES, ALICE, None, now=NOW), UNKNOWN, "failed to approve task")

    def test_state_is_checked_before_participation(self) -> None:
        refused(lambda: T.approve_task(WITH_FILES, CAROL, None, now=NOW), UNKNOWN, "failed to approve task")
        refused(lambda: T.approve_task(SOLO, CAROL, None, now=NOW), DENIED, "permission denied")
        refused(lambda: T.approve_task(SOLO, ADMIN, None, now=NOW), DENIED, "permission denied")


USAGE = UsageRecord(FN_UUID, 0)


class TestInvokeTask:
    @pytest.mark.parametrize("task", [
        SOLO,  # Created, single participant, no files: straight to Staged
        at(SOLO, TaskStatus.DATA_ASSIGNED),
        at(SOLO, TaskStatus.APPROVED),
        approved_by(at(DUO, TaskStatus.APPROVED), "alice", "fo"),
        approved_by(at(DUO, TaskStatus.DATA_ASSIGNED), "alice", "fo"),
    ])
    def test_staged(self, task: TaskRecord) -> None:
        fn = PRIVATE_FN if task.participants == DUO.participants else function()
        assert T.invoke_task(task, ALICE, fn, USAGE, NOW) == at(task, TaskStatus.STAGED)

    @pytest.mark.parametrize("task", [
        DUO,  # approvals missing
        approved_by(at(DUO, TaskStatus.DATA_ASSIGNED), "alice"),
        WITH_FILES,  # data missing
        *(at(SOLO, s) for s in [*SCHEDULED, *TERMINAL]),
    ])
    def test_not_ready(self, task: TaskRecord) -> None:
        fn = next(f for f in (function(), PRIVATE_FN, FILES_FN) if F.function_digest(f) == task.function_digest)
        refused(lambda: T.invoke_task(task, ALICE, fn, USAGE, NOW), UNKNOWN, "failed to invoke task")

    @pytest.mark.parametrize(("task", "who", "fn", "usage", "code", "message"), [
        # 2. the creator only (admins included), before anything else
        (at(SOLO, TaskStatus.FINISHED), ADMIN, None, None, DENIED, "permission denied"),
        (DUO, OWNER, PRIVATE_FN, USAGE, DENIED, "permission denied"),
        # 3. function or usage record gone
        (at(SOLO, TaskStatus.FINISHED), ALICE, None, USAGE, INVALID, "invalid function id"),
        (at(SOLO, TaskStatus.FINISHED), ALICE, function(), None, INVALID, "invalid function id"),
        # 4. quota, before the state
        (at(SOLO, TaskStatus.FINISHED), ALICE, function(usage_quota=0), USAGE, UNKNOWN,
         "function quota has been used up"),
        (SOLO, ALICE, function(usage_quota=3), UsageRecord(FN_UUID, 3), UNKNOWN, "function quota has been used up"),
    ])
    def test_refusal_order(
        self, task: TaskRecord, who: Caller, fn: FunctionRecord | None, usage: UsageRecord | None,
        code: grpc.StatusCode, message: str,
    ) -> None:
        refused(lambda: T.invoke_task(task, who, fn, usage, NOW), code, message)

    def test_staged_task_comes_from_the_pinned_function(self) -> None:
        staged = T.build_staged_task(at(SOLO, TaskStatus.STAGED), function())
        assert (staged.task_id, staged.function_id, staged.user_id, staged.executor) == (
            TASK_UUID, FN_UUID, "alice", "builtin")
        assert (staged.executor_type, staged.function_name, staged.function_payload) == (
            "builtin", function().name, function().payload)
        assert staged.function_arguments == SOLO.function_arguments == '{"message":"hi"}'
        assert (staged.input_data, staged.output_data) == ({}, {})
        # Kettle deviates from §6.5 step 6: another function than the pinned one is never staged
        updated = function(name="builtin-other", executor_type="python", payload=b"def entrypoint(argv): pass")
        with pytest.raises(KettleError) as info:
            T.build_staged_task(at(SOLO, TaskStatus.STAGED), updated)
        assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "the function changed since the task was created" in info.value.message

    def test_staged_task_carries_file_snapshots(self) -> None:
        task = at(WITH_FILES, TaskStatus.STAGED, assigned_inputs={"in1": file_record("i")},
                  assigned_outputs={"out1": file_record("o")})
        staged = T.build_staged_task(task, FILES_FN)
        assert (staged.input_data, staged.output_data) == ({"in1": file_record("i")}, {"out1": file_record("o")})

    def test_too_large_to_stage(self) -> None:
        big = function(payload=b"x" * F.MAX_PAYLOAD_BYTES)
        pinned = at(SOLO, TaskStatus.STAGED, function_digest=F.function_digest(big))
        assert T.build_staged_task(pinned, big).function_payload == big.payload
        bigger = function(payload=b"x" * (F.MAX_STAGED_BYTES * 3 // 4))  # no longer registrable
        with pytest.raises(KettleError) as info:
            T.build_staged_task(at(SOLO, TaskStatus.STAGED, function_digest=F.function_digest(bigger)), bigger)
        assert info.value.code == INVALID and "too large to stage" in info.value.message


class TestCancelTask:
    @pytest.mark.parametrize("status", PRE_STAGED)
    @pytest.mark.parametrize("who", [ALICE, ADMIN])
    def test_before_staging(self, status: TaskStatus, who: Caller) -> None:
        canceled = T.cancel_task(at(SOLO, status), who)
        assert canceled == at(SOLO, TaskStatus.CANCELED, result=TaskResult(failure="Task canceled"))

    @pytest.mark.parametrize("status", SCHEDULED)
    def test_in_the_scheduler_a_request_is_needed(self, status: TaskStatus) -> None:
        assert T.cancel_task(at(SOLO, status), ALICE) is None

    @pytest.mark.parametrize(("status", "reason"), [
        (TaskStatus.FINISHED, "task has already finished"),
        (TaskStatus.FAILED, "task has already failed"),
        (TaskStatus.CANCELED, "task has already been canceled"),  # the reference's exact text
    ])
    def test_terminal_says_what_is_true(self, status: TaskStatus, reason: str) -> None:
        refused(lambda: T.cancel_task(at(SOLO, status), ALICE), UNKNOWN, f"failed to cancel task, reason: {reason}")

    @pytest.mark.parametrize("status", ALL_STATUSES)
    def test_only_creator_or_admin(self, status: TaskStatus) -> None:
        refused(lambda: T.cancel_task(at(DUO, status), OWNER), DENIED, "permission denied")  # a participant


class TestGetTask:
    def test_participants_only(self) -> None:
        assert T.check_may_read_task(DUO, OWNER) is DUO
        assert T.check_may_read_task(DUO, ALICE) is DUO
        refused(lambda: T.check_may_read_task(DUO, ADMIN), DENIED, "permission denied")  # admin not exempt
        refused(lambda: T.check_may_read_task(None, ALICE), INVALID, "invalid task id")


def test_full_path_of_a_task_without_files() -> None:
    """Created → DataAssigned → Approved → Staged, and each step's record is what the next one reads."""
    task = DUO
    task = T.assign_data(task, ALICE, [], [])
    assert task.status == TaskStatus.DATA_ASSIGNED
    task = T.approve_task(task, OWNER, None, now=NOW)
    assert task.status == TaskStatus.DATA_ASSIGNED
    refused(lambda: T.invoke_task(task, ALICE, PRIVATE_FN, USAGE, NOW), UNKNOWN, "failed to invoke task")
    task = T.approve_task(task, ALICE, None, now=NOW)
    assert task.status == TaskStatus.APPROVED
    task = T.invoke_task(task, ALICE, PRIVATE_FN, USAGE, NOW)
    assert task.status == TaskStatus.STAGED
    assert T.cancel_task(task, ALICE) is None
    assert TaskRecord.from_bytes(task.to_bytes()) == task
