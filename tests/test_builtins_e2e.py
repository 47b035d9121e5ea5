"""Every built-in end to end through the SDK, with encrypted inputs and outputs.

A publisher registers each built-in exactly as the SDK's catalogue describes it;
data owners (alice, and bob where a second party makes sense) encrypt and
register their files, assign them, approve; the task runs on a real platform
and each owner decrypts its own output, checked against the recorded tag.
Expected results are the reference's vectors where they exist.
"""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import ALL_SERVICES, Platform, make_home
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)

from kettle.errors import KettleError
from kettle.model.records import TaskStatus
from kettle.sdk import FrontendClient, TaskFailure, TaskInfo, builtin_function
from kettle.sdk.files import FileKey, decrypt_file, encrypt_file

VECTORS = Path("/work/shared/vectors/functions")
DATA = Path(__file__).parent / "data" / "functions"
SCHEMAS = itertools.cycle(["aes-gcm-128", "teaclave-file-128", "aes-gcm-256"])


@dataclass
class Outcome:
    task: TaskInfo
    outputs: dict[str, bytes | None]
    """Each output's plaintext as its owner decrypts it; None when nothing was uploaded."""

    @property
    def return_value(self) -> str:
        return self.task.outputs_or_raise().return_value.decode("utf-8")

    @property
    def failure(self) -> str:
        assert self.task.status == TaskStatus.FAILED and isinstance(self.task.result, TaskFailure), self.task
        return self.task.result.reason


@dataclass
class World:
    platform: Platform
    files: Path
    publisher: FrontendClient
    owners: dict[str, FrontendClient] = field(default_factory=dict)
    function_ids: dict[str, str] = field(default_factory=dict)
    serial: Iterator[int] = field(default_factory=itertools.count)

    def function_id(self, name: str, arguments: Mapping[str, Any]) -> str:
        """The built-in registered as the catalogue describes it (once per name and file set)."""
        spec = builtin_function(name)
        declared = spec.function_arguments(arguments)
        inputs, outputs = spec.function_inputs(arguments), spec.function_outputs(arguments)
        key = f"{name}/{[a.key for a in declared]}/{len(inputs)}/{len(outputs)}"
        if key not in self.function_ids:
            self.function_ids[key] = self.publisher.register_function(
                name, spec.description, "builtin", arguments=declared, inputs=inputs, outputs=outputs)
        return self.function_ids[key]

    def run(
        self, name: str, arguments: Mapping[str, Any], inputs: Mapping[str, bytes] | None = None,
        outputs: Sequence[str] = (),
    ) -> Outcome:
        """One task: inputs and outputs alternate between alice and bob and between file schemes."""
        inputs = inputs or {}
        owner_of = {n: ("alice", "bob")[i % 2] for i, n in enumerate([*inputs, *outputs])}
        folder = self.files / f"task{next(self.serial)}"
        folder.mkdir()
        input_ids, output_ids, output_keys = {}, {}, {}
        for data_name, plaintext in inputs.items():
            key = FileKey.generate(next(SCHEMAS))
            (folder / f"{data_name}.txt").write_bytes(plaintext)
            cmac = encrypt_file(folder / f"{data_name}.txt", folder / f"{data_name}.enc", key)
            input_ids[data_name] = self.owners[owner_of[data_name]].register_input_file(
                (folder / f"{data_name}.enc").as_uri(), key.schema, key.key, key.iv, cmac)
        for data_name in outputs:
            key = output_keys[data_name] = FileKey.generate(next(SCHEMAS))
            output_ids[data_name] = self.owners[owner_of[data_name]].register_output_file(
                (folder / f"{data_name}.out").as_uri(), key.schema, key.key, key.iv)
        alice = self.owners["alice"]
        task_id = alice.create_task(
            self.function_id(name, arguments), dict(arguments), "builtin",
            inputs_ownership={n: [owner_of[n]] for n in inputs}, outputs_ownership={n: [owner_of[n]] for n in outputs})
        parties = sorted(set(owner_of.values()))
        for user_id in parties:
            self.owners[user_id].assign_data(
                task_id, inputs={n: f for n, f in input_ids.items() if owner_of[n] == user_id},
                outputs={n: f for n, f in output_ids.items() if owner_of[n] == user_id})
        for user_id in parties:
            self.owners[user_id].approve_task(task_id)
        alice.invoke_task(task_id)
        task = alice.wait_task(task_id, timeout=120)
        produced: dict[str, bytes | None] = {}
        for data_name, file_id in output_ids.items():
            sealed = folder / f"{data_name}.out"
            if not sealed.exists():
                produced[data_name] = None
                continue
            owner = self.owners[owner_of[data_name]]
            cmac = owner.get_output_file(file_id).cmac
            assert cmac == task.outputs_or_raise().tags_map[data_name]
            decrypt_file(sealed, folder / f"{data_name}.plain", output_keys[data_name], cmac=cmac)
            produced[data_name] = (folder / f"{data_name}.plain").read_bytes()
        return Outcome(task, produced)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, _auditor_cache: Path) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("builtins-e2e")
    files = tmp / "files"
    files.mkdir()
    extra = f'[file_agent]\nallowed_schemes = ["file", "data"]\nfile_roots = ["{files}"]\n'
    platform = Platform(make_home(tmp / "home", _auditor_cache, extra=extra))
    platform.start(ALL_SERVICES)
    admin = platform.admin()
    clients = []
    for user_id, role in (("publisher", "FunctionOwner"), ("alice", "DataOwner"), ("bob", "DataOwner")):
        admin.user_register(user_id, "secret", role, "")
        token = platform.auth_client().user_login(user_id, "secret")
        clients.append(FrontendClient(platform.frontend_address, platform.trust(), user_id, token))
    world = World(platform, files, clients[0], {"alice": clients[1], "bob": clients[2]})
    try:
        yield world
    finally:
        for client in clients:
            client.close()
        platform.stop()


GBDT_ARGUMENTS = {
    "feature_size": 4, "max_depth": 4, "iterations": 100, "shrinkage": 0.1, "feature_sample_ratio": 1.0,
    "data_sample_ratio": 1.0, "min_leaf_size": 1, "loss": "LAD", "training_optimization_level": 2,
}


# --- models: the reference's vectors ------------------------------------------------------------


def test_gbdt_training_reproduces_the_reference_model_and_predicts(world: World) -> None:
    trained = world.run("builtin-gbdt-train", GBDT_ARGUMENTS, {"training_data": (DATA / "gbdt_train_iris.txt").read_bytes()},
                        ["trained_model"])
    assert trained.return_value == "Trained 120 lines of data."
    assert trained.task.outputs_or_raise().sandbox_layers == ()  # platform code: no sandbox to name
    assert trained.outputs["trained_model"] == (VECTORS / "gbdt_prediction" / "model.txt").read_bytes()
    predicted = world.run(
        "builtin-gbdt-predict", {},
        {"model_file": trained.outputs["trained_model"] or b"",
         "data_file": (VECTORS / "gbdt_prediction" / "test_data.txt").read_bytes()},
        ["result_file"])
    assert predicted.return_value == "Predict result has 30 lines of data."
    assert predicted.outputs["result_file"] == (VECTORS / "gbdt_prediction" / "expected_result.txt").read_bytes()


def test_logistic_regression_training_and_prediction_match_the_vectors(world: World) -> None:
    folder = VECTORS / "logistic_regression_training"
    trained = world.run("builtin-logistic-regression-train", {"alg_alpha": 0.3, "alg_iters": 100, "feature_size": 30},
                        {"training_data": (folder / "train.txt").read_bytes()}, ["model_file"])
    assert trained.return_value == "Trained 100 lines of data."
    assert trained.outputs["model_file"] == (folder / "expected_model.txt").read_bytes()
    folder = VECTORS / "logistic_regression_prediction"
    predicted = world.run("builtin-logistic-regression-predict", {},
                          {"model_file": (folder / "model.txt").read_bytes(),
                           "data_file": (folder / "predict_input.txt").read_bytes()}, ["result_file"])
    assert predicted.return_value == "Predicted 5 lines of data."
    assert predicted.outputs["result_file"] == (folder / "expected_result.txt").read_bytes()


def test_principal_components_analysis(world: World) -> None:
    rows = [[2.5, 2.4, 0.5, 1], [0.5, 0.7, 1.5, 0], [2.2, 2.9, 0.2, 1], [1.9, 2.2, 0.9, 1], [3.1, 3.0, 0.1, 0]]
    data = "".join(",".join(str(v) for v in row) + "\n" for row in rows).encode()
    outcome = world.run("builtin_principal_components_analysis", {"n": 2, "center": True, "feature_size": 3},
                        {"input_data": data}, ["output_data"])
    assert outcome.return_value == "transform 5 rows * 2 cols lines of data."
    lines = (outcome.outputs["output_data"] or b"").decode().splitlines()
    assert len(lines) == 5 and all(len(line.split(",")) == 2 for line in lines)
    # centred data projected on orthonormal components: the columns sum to zero
    for column in zip(*(map(float, line.split(",")) for line in lines), strict=True):
        assert abs(sum(column)) < 1e-9


# --- joins, secrets, images ------------------------------------------------------------------------


def test_ordered_set_join_of_two_parties_files(world: World) -> None:
    left = b"1,apple,red\n2,banana,yellow\n4,date,brown\n"
    right = b"1,x\n3,y\n4,z\n"
    outcome = world.run("builtin-ordered-set-join",
                        {"left_column": 0, "right_column": 0, "ascending": True, "drop": False},
                        {"input_data1": left, "input_data2": right}, ["output_result"])
    assert outcome.return_value == "2 records"
    assert outcome.outputs["output_result"] == b"1,apple,red,x\n4,date,brown,z\n"


def test_rsa_sign_with_a_data_owners_key(world: World) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    der = key.private_bytes(Encoding.DER, PrivateFormat.TraditionalOpenSSL, NoEncryption())
    outcome = world.run("builtin-rsa-sign", {"data": "The message to sign"}, {"rsa_key": der})
    signature = base64.b64decode(outcome.return_value, validate=True)
    key.public_key().verify(signature, b"The message to sign", padding.PKCS1v15(), hashes.SHA256())


def test_password_check(world: World) -> None:
    exposed = b"123456\nqwerty\n  password  \nletmein\n"
    assert world.run("builtin-password-check", {},
                     {"password": b"password", "exposed_passwords": exposed}).return_value == "true"
    assert world.run("builtin-password-check", {},
                     {"password": b"Password\n", "exposed_passwords": exposed}).return_value == "false"


def test_online_decrypt_of_the_reference_vectors(world: World) -> None:
    for algorithm, key, data in (
        ("aes256gcm", "aqUdgZ0lJnuz9yiPkoDxM6ZcTcVVpd4KKLqzbHD88Lg=", "CaZd8qSMMlBp8SjSXj2I4dQIuC9KkZ5DI/ATo1sWJw=="),
        ("aes128gcm", "aqUdgZ0lJnuz9yiPkoDxMw==", "OqMscYqxk1CshHQZulTrrDlJjS/v6BE/clWJyTerUw=="),
    ):
        arguments = {"key": key, "nonce": "AAECAwQFBgcICQoL", "encrypted_data": data, "algorithm": algorithm}
        assert world.run("builtin_online_decrypt", arguments).return_value == "Hello Teaclave!"


def test_face_detection_finds_a_face(world: World) -> None:
    image = next((DATA / "faces").glob("*.jpg"))
    outcome = world.run("builtin-face-detection", {"image": list(image.read_bytes())})
    faces = json.loads(outcome.return_value)
    assert faces and all(set(face) == {"bbox", "roll", "pitch", "yaw", "score"} for face in faces)


# --- refusals: before the task exists, and when it runs ------------------------------------------


def test_a_task_whose_arguments_do_not_fit_is_refused_at_creation(world: World) -> None:
    alice = world.owners["alice"]
    arguments = {**GBDT_ARGUMENTS, "max_depth": 4.0}
    with pytest.raises(KettleError) as caught:
        alice.create_task(world.function_id("builtin-gbdt-train", arguments), arguments, "builtin",
                          inputs_ownership={"training_data": ["alice"]}, outputs_ownership={"trained_model": ["alice"]})
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.message == (
        "invalid task: arguments do not fit builtin-gbdt-train: max_depth: expected an unsigned integer, got float")


def test_a_malformed_training_file_fails_the_task_and_uploads_nothing(world: World) -> None:
    training = (DATA / "gbdt_train_iris.txt").read_bytes().replace(b"\n", b"\n5.0,3.3,1.4\n", 1)
    outcome = world.run("builtin-gbdt-train", GBDT_ARGUMENTS, {"training_data": training}, ["trained_model"])
    assert outcome.failure == "Data format error: column len = 3, expected = 5"
    assert outcome.outputs == {"trained_model": None}
