"""Every built-in added with the function library, against a baseline measured in the same run.

Each row runs the built-in end to end through ``FileRuntime`` (read and parse
its files, compute, format and write its outputs) on generated data, and a
baseline on the same data already in memory:

* gbdt-train / gbdt-predict: Kettle's own exact core (``train`` / ``predict``)
  on in-memory float32 arrays — the cost of reading, checking and writing;
* logistic-regression-train: plain NumPy gradient descent (``X @ w``, NumPy's
  ``exp``/``log`` and pairwise sums), i.e. what bit-exactness with the
  reference's 8-lane sums and the C library's ``exp`` costs, plus the file work;
* logistic-regression-predict: ``1 / (1 + np.exp(-X1 @ w))`` in memory;
* PCA: ``numpy.linalg.svd`` and the projection on the in-memory array;
* ordered-set-join: the same merge over records already split in memory;
* password-check: ``password in set(lines)`` on the lines in memory;
* rsa-sign / online-decrypt: calling ``cryptography`` directly (per call);
* face-detection: OpenCV's ``detectMultiScale2`` on the already-decoded
  grayscale image with the same parameters.

    .venv/bin/python bench/bench_builtins.py [--quick]
"""

from __future__ import annotations

import argparse
import base64
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from kettle.executors.runtime import FileRuntime
from kettle.functions import lookup
from kettle.functions._gbdt import read_model
from kettle.functions.face_detection import CASCADE, grayscale
from kettle.functions.gbdt_predict import predict as gbdt_predict_core
from kettle.functions.gbdt_train import config_of
from kettle.functions.gbdt_train import train as gbdt_train_core

FACE = Path(__file__).parent.parent / "tests" / "data" / "functions" / "faces" / "astronaut.jpg"


def best_of(repeat: int, work: Callable[[], Any]) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def table_text(matrix: np.ndarray) -> bytes:
    return "".join(",".join(repr(float(v)) for v in row) + "\n" for row in matrix).encode()


class Bench:
    def __init__(self, folder: Path, repeat: int) -> None:
        self.folder, self.repeat = folder, repeat
        print(f"{'built-in':42} {'kettle s':>9} {'baseline s':>11} {'ratio':>7}")

    def run(self, name: str, arguments: dict[str, Any], inputs: dict[str, bytes], outputs: list[str]) -> Callable[[], str]:
        paths = {}
        for input_name, data in inputs.items():
            paths[input_name] = self.folder / f"{name}.{input_name}"
            paths[input_name].write_bytes(data)
        runtime = FileRuntime(paths, {o: self.folder / f"{name}.{o}" for o in outputs})
        function = lookup(name)
        assert function is not None
        return lambda: function.call(arguments, runtime)

    def row(self, label: str, kettle: Callable[[], Any], baseline: Callable[[], Any]) -> None:
        kettle()  # warm caches and imports once
        ours, theirs = best_of(self.repeat, kettle), best_of(self.repeat, baseline)
        print(f"{label:42} {ours:9.3f} {theirs:11.3f} {ours / theirs:7.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small sizes, one repetition")
    options = parser.parse_args()
    scale, repeat = (0.1, 1) if options.quick else (1.0, 3)
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(Path(tmp), repeat)

        # GBDT: 20k × 8 features, 10 trees of depth 4
        rows = int(20_000 * scale)
        features = rng.normal(size=(rows, 8)).astype(np.float32)
        labels = (features[:, 0] * 2 + np.sin(features[:, 1]) + rng.normal(size=rows) * 0.1).astype(np.float32)
        arguments = {"feature_size": 8, "max_depth": 4, "iterations": 10, "shrinkage": 0.1,
                     "feature_sample_ratio": 1.0, "data_sample_ratio": 1.0, "min_leaf_size": 1,
                     "loss": "SquaredError", "training_optimization_level": 2}
        training = table_text(np.hstack([features, labels[:, None]]))
        train = bench.run("builtin-gbdt-train", arguments, {"training_data": training}, ["trained_model"])
        bench.row(f"gbdt-train {rows}×8, 10 trees", train,
                  lambda: gbdt_train_core(features, labels, config_of(arguments)))
        model_text = (bench.folder / "builtin-gbdt-train.trained_model").read_bytes()
        model = read_model(model_text)
        predict_rows = int(200_000 * scale)
        data = rng.normal(size=(predict_rows, 8)).astype(np.float32)
        predict = bench.run("builtin-gbdt-predict", {}, {"model_file": model_text, "data_file": table_text(data)},
                            ["result_file"])
        widths = np.full(predict_rows, 8)
        bench.row(f"gbdt-predict {predict_rows}×8", predict, lambda: gbdt_predict_core(model, data, widths))

        # logistic regression: 20k × 30, 100 iterations
        rows = int(20_000 * scale)
        x = rng.normal(size=(rows, 30))
        y = (x @ rng.normal(size=30) > 0).astype(float)
        lr = bench.run("builtin-logistic-regression-train", {"alg_alpha": 0.3, "alg_iters": 100, "feature_size": 30},
                       {"training_data": table_text(np.hstack([x, y[:, None]]))}, ["model_file"])

        def plain_descent() -> np.ndarray:
            design = np.hstack([np.ones((rows, 1)), x])
            w = np.full(31, 0.5)
            for _ in range(100):
                o = 1 / (1 + np.exp(-(design @ w)))
                _cost = -np.sum(y * np.log(o) + (1 - y) * np.log(1 - o)) / rows
                w = w - design.T @ (o - y) / rows * 0.3
            return w

        bench.row(f"logistic-regression-train {rows}×30, 100 it.", lr, plain_descent)
        model_text = (bench.folder / "builtin-logistic-regression-train.model_file").read_bytes()
        predict_rows = int(200_000 * scale)
        data = rng.normal(size=(predict_rows, 30))
        lr_predict = bench.run("builtin-logistic-regression-predict", {},
                               {"model_file": model_text, "data_file": table_text(data)}, ["result_file"])
        w = plain_descent()
        bench.row(f"logistic-regression-predict {predict_rows}×30", lr_predict,
                  lambda: 1 / (1 + np.exp(-(np.hstack([np.ones((predict_rows, 1)), data]) @ w))))

        # PCA: 100k × 30, 5 components
        rows = int(100_000 * scale)
        x = rng.normal(size=(rows, 30)) @ rng.normal(size=(30, 30))
        pca = bench.run("builtin_principal_components_analysis", {"n": 5, "center": True, "feature_size": 30},
                        {"input_data": table_text(np.hstack([x, np.zeros((rows, 1))]))}, ["output_data"])

        def plain_pca() -> np.ndarray:
            centred = x - x.mean(axis=0)
            return centred @ np.linalg.svd(centred, full_matrices=False)[2][:5].T

        bench.row(f"principal-components-analysis {rows}×30", pca, plain_pca)

        # ordered-set join: 500k × 500k rows, every other key shared
        rows = int(500_000 * scale)
        left = [[f"{2 * i:09d}", f"l{i}", str(i)] for i in range(rows)]
        right = [[f"{3 * i:09d}", f"r{i}"] for i in range(rows)]
        join = bench.run("builtin-ordered-set-join", {"left_column": 0, "right_column": 0, "ascending": True,
                                                      "drop": True},
                         {"input_data1": "".join(",".join(r) + "\n" for r in left).encode(),
                          "input_data2": "".join(",".join(r) + "\n" for r in right).encode()}, ["output_result"])

        def plain_merge() -> list[list[str]]:
            joined, i, j = [], 0, 0
            while i < len(left) and j < len(right):
                if left[i][0] == right[j][0]:
                    joined.append(left[i][1:] + right[j][1:])
                    i, j = i + 1, j + 1
                elif left[i][0] < right[j][0]:
                    i += 1
                else:
                    j += 1
            return joined

        bench.row(f"ordered-set-join {rows}+{rows} rows", join, plain_merge)

        # password check: 1M exposed passwords, the password not among them
        lines = [f"password{i}" for i in range(int(1_000_000 * scale))]
        check = bench.run("builtin-password-check", {}, {"password": b"not-there",
                                                         "exposed_passwords": "\n".join(lines).encode()}, [])
        bench.row(f"password-check {len(lines)} lines", check, lambda: "not-there" in set(lines))

        # RSA sign and online decrypt, per call
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        der = key.private_bytes(Encoding.DER, PrivateFormat.TraditionalOpenSSL, NoEncryption())
        sign = bench.run("builtin-rsa-sign", {"data": "hello"}, {"rsa_key": der}, [])
        bench.row("rsa-sign 2048 bits (per call)", sign,
                  lambda: key.sign(b"hello", padding.PKCS1v15(), hashes.SHA256()))
        aes_key, nonce = bytes(32), bytes(12)
        sealed = AESGCM(aes_key).encrypt(nonce, b"x" * 1000, None)
        decrypt = bench.run("builtin_online_decrypt", {
            "key": base64.b64encode(aes_key).decode(), "nonce": base64.b64encode(nonce).decode(),
            "encrypted_data": base64.b64encode(sealed).decode(), "algorithm": "aes256gcm"}, {}, [])
        bench.row("online-decrypt 1000 bytes (per call)", decrypt, lambda: AESGCM(aes_key).decrypt(nonce, sealed, None))

        # face detection: the test image tiled 3×3 (1536×1536)
        tiled = np.tile(cv2.imread(str(FACE)), (3, 3, 1))
        encoded = cv2.imencode(".jpg", tiled)[1].tobytes()
        faces = bench.run("builtin-face-detection", {"image": list(encoded), "score_thresh": 2.0}, {}, [])
        gray = grayscale(tiled)
        classifier = cv2.CascadeClassifier(cv2.data.haarcascades + CASCADE)
        bench.row("face-detection 1536×1536", faces,
                  lambda: classifier.detectMultiScale2(gray, scaleFactor=1.25, minNeighbors=1, minSize=(40, 40)))


if __name__ == "__main__":
    main()
