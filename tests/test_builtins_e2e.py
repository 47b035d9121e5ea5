"""Every built-in end to end through the SDK, with encrypted inputs and outputs.

A publisher registers each built-in exactly as the SDK's catalogue describes it;
data owners (alice, and bob where a second party makes sense) encrypt and
register their files, assign them, approve; the task runs on a real platform
and each owner decrypts its own output, checked against the recorded tag.
Expected results are the reference's vectors where they exist.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
import task_world
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)

from kettle.errors import KettleError
from kettle.sdk import builtin_function

VECTORS = Path("/work/shared/vectors/functions")
DATA = Path(__file__).parent / "data" / "functions"


class Builtins:
    """The platform's users, and each built-in registered as the SDK's catalogue describes it (once per shape)."""

    def __init__(self, world: task_world.World) -> None:
        self.world = world
        self.owners = world.owners
        self.function_ids: dict[str, str] = {}

    def function_id(self, name: str, arguments: Mapping[str, Any]) -> str:
        spec = builtin_function(name)
        declared = spec.function_arguments(arguments)
        inputs, outputs = spec.function_inputs(arguments), spec.function_outputs(arguments)
        key = f"{name}/{[a.key for a in declared]}/{len(inputs)}/{len(outputs)}"
        if key not in self.function_ids:
            self.function_ids[key] = self.world.publisher.register_function(
                name, spec.description, "builtin", arguments=declared, inputs=inputs, outputs=outputs)
        return self.function_ids[key]

    def run(self, name: str, arguments: Mapping[str, Any], inputs: Mapping[str, bytes] | None = None,
            outputs: Sequence[str] = ()) -> task_world.Run:
        """One task: its files alternate between alice and bob (and, in the scaffold, between file schemes)."""
        inputs = inputs or {}
        owner_of = {n: ("alice", "bob")[i % 2] for i, n in enumerate([*inputs, *outputs])}
        return self.world.run(self.function_id(name, arguments), arguments, inputs, outputs, "builtin", owner_of)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, _auditor_cache: Path) -> Iterator[Builtins]:
    with task_world.world(tmp_path_factory.mktemp("builtins-e2e"), _auditor_cache) as started:
        yield Builtins(started)


GBDT_ARGUMENTS = {
    "feature_size": 4, "max_depth": 4, "iterations": 100, "shrinkage": 0.1, "feature_sample_ratio": 1.0,
    "data_sample_ratio": 1.0, "min_leaf_size": 1, "loss": "LAD", "training_optimization_level": 2,
}


# --- models: the reference's vectors ------------------------------------------------------------


def test_gbdt_training_reproduces_the_reference_model_and_predicts(world: Builtins) -> None:
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


def test_logistic_regression_training_and_prediction_match_the_vectors(world: Builtins) -> None:
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


def test_principal_components_analysis(world: Builtins) -> None:
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


def test_ordered_set_join_of_two_parties_files(world: Builtins) -> None:
    left = b"1,apple,red\n2,banana,yellow\n4,date,brown\n"
    right = b"1,x\n3,y\n4,z\n"
    outcome = world.run("builtin-ordered-set-join",
                        {"left_column": 0, "right_column": 0, "ascending": True, "drop": False},
                        {"input_data1": left, "input_data2": right}, ["output_result"])
    assert outcome.return_value == "2 records"
    assert outcome.outputs["output_result"] == b"1,apple,red,x\n4,date,brown,z\n"


def test_rsa_sign_with_a_data_owners_key(world: Builtins) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    der = key.private_bytes(Encoding.DER, PrivateFormat.TraditionalOpenSSL, NoEncryption())
    outcome = world.run("builtin-rsa-sign", {"data": "The message to sign"}, {"rsa_key": der})
    signature = base64.b64decode(outcome.return_value, validate=True)
    key.public_key().verify(signature, b"The message to sign", padding.PKCS1v15(), hashes.SHA256())


def test_password_check(world: Builtins) -> None:
    exposed = b"123456\nqwerty\n  password  \nletmein\n"
    assert world.run("builtin-password-check", {},
                     {"password": b"password", "exposed_passwords": exposed}).return_value == "true"
    assert world.run("builtin-password-check", {},
                     {"password": b"Password\n", "exposed_passwords": exposed}).return_value == "false"


def test_online_decrypt_of_the_reference_vectors(world: Builtins) -> None:
    for algorithm, key, data in (
        ("aes256gcm", "aqUdgZ0lJnuz9yiPkoDxM6ZcTcVVpd4KKLqzbHD88Lg=", "CaZd8qSMMlBp8SjSXj2I4dQIuC9KkZ5DI/ATo1sWJw=="),
        ("aes128gcm", "aqUdgZ0lJnuz9yiPkoDxMw==", "OqMscYqxk1CshHQZulTrrDlJjS/v6BE/clWJyTerUw=="),
    ):
        arguments = {"key": key, "nonce": "AAECAwQFBgcICQoL", "encrypted_data": data, "algorithm": algorithm}
        assert world.run("builtin_online_decrypt", arguments).return_value == "Hello Teaclave!"


def test_face_detection_finds_a_face(world: Builtins) -> None:
    image = next((DATA / "faces").glob("*.jpg"))
    outcome = world.run("builtin-face-detection", {"image": list(image.read_bytes())})
    faces = json.loads(outcome.return_value)
    assert faces and all(set(face) == {"bbox", "roll", "pitch", "yaw", "score"} for face in faces)


# --- refusals: before the task exists, and when it runs ------------------------------------------


def test_a_task_whose_arguments_do_not_fit_is_refused_at_creation(world: Builtins) -> None:
    alice = world.owners["alice"]
    arguments = {**GBDT_ARGUMENTS, "max_depth": 4.0}
    with pytest.raises(KettleError) as caught:
        alice.create_task(world.function_id("builtin-gbdt-train", arguments), arguments, "builtin",
                          inputs_ownership={"training_data": ["alice"]}, outputs_ownership={"trained_model": ["alice"]})
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.message == (
        "invalid task: arguments do not fit builtin-gbdt-train: max_depth: expected an unsigned integer, got float")


def test_a_malformed_training_file_fails_the_task_and_uploads_nothing(world: Builtins) -> None:
    training = (DATA / "gbdt_train_iris.txt").read_bytes().replace(b"\n", b"\n5.0,3.3,1.4\n", 1)
    outcome = world.run("builtin-gbdt-train", GBDT_ARGUMENTS, {"training_data": training}, ["trained_model"])
    assert outcome.failure == "Data format error: column len = 3, expected = 5"
    assert outcome.outputs == {"trained_model": None}
