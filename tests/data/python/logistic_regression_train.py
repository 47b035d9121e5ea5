# Logistic regression training in the style of Teaclave's mesapy_logistic_reg example.
#
# Input input_train: one sample per line, comma-separated features, the 0/1 label last.
# Outputs: output_params (marshalled {"w": weights, "b": bias}) and output_scaler (marshalled
# {"max": ..., "min": ...}, the per-feature range used to scale features to [0, 1]).
# Optional arguments: learning_rate (default 0.1) and iterations (default 1000).
import marshal

import _numpypy as np
from teaclave import open


def sigmoid(z):
    return 1.0 / (1.0 + np.umath.exp(-z))


def read_samples(name):
    f = open(name, "rb")
    features = []
    labels = []
    for line in f.readlines():
        line = line.strip()
        if not line:
            continue
        fields = line.split(",")
        features.append(fields[:-1])
        labels.append(fields[-1])
    f.close()
    return features, labels


def write_marshalled(name, value):
    f = open(name, "wb")
    f.write(marshal.dumps(value))
    f.close()


def entrypoint(argv):
    assert len(argv) % 2 == 0, "arguments come as key/value pairs"
    learning_rate = 0.1
    iterations = 1000
    for i in range(0, len(argv), 2):
        if argv[i] == "learning_rate":
            learning_rate = float(argv[i + 1])
        elif argv[i] == "iterations":
            iterations = int(argv[i + 1])

    features, labels = read_samples("input_train")
    x = np.multiarray.array(features, dtype="float64")
    y = np.multiarray.array(labels, dtype="float64").reshape(-1, 1)

    x_max = x.max(0)
    x_min = x.min(0)
    span = x_max - x_min
    for j in range(span.shape[0]):
        if span[j] == 0:
            span[j] = 1.0  # a constant feature scales to 0 instead of dividing by zero
    x = (x - x_min) / span

    m = x.shape[0]
    w = np.multiarray.zeros((x.shape[1], 1))
    b = 0.0
    for _ in range(iterations):
        error = sigmoid(x.dot(w) + b) - y
        w = w - learning_rate * x.T.dot(error) / m
        b = b - learning_rate * error.sum() / m

    write_marshalled("output_params", {"w": w, "b": b})
    write_marshalled("output_scaler", {"max": x_max, "min": x_min})
    return "Training is finished!"
