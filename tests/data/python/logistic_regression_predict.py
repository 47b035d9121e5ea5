# Logistic regression prediction in the style of Teaclave's mesapy_logistic_reg example.
#
# Inputs: input_params and input_scaler (written by logistic_regression_train.py) and
# input_predict (one sample per line, comma-separated features). Returns the predicted
# classes as a one-row array, printed MesaPy-style: "[1.0 1.0 0.0 0.0 0.0]".
import marshal

import _numpypy as np
from teaclave import open


def sigmoid(z):
    return 1.0 / (1.0 + np.umath.exp(-z))


def read_marshalled(name):
    f = open(name, "rb")
    value = marshal.loads(f.read())
    f.close()
    return value


def entrypoint(argv):
    params = read_marshalled("input_params")
    scaler = read_marshalled("input_scaler")
    w = np.multiarray.frombuffer(params["w"]).reshape(-1, 1)
    b = np.multiarray.frombuffer(params["b"])[0]
    x_max = np.multiarray.frombuffer(scaler["max"])
    x_min = np.multiarray.frombuffer(scaler["min"])

    f = open("input_predict", "rb")
    rows = []
    for line in f:
        line = line.strip()
        if line:
            rows.append(line.split(","))
    f.close()

    span = x_max - x_min
    for j in range(span.shape[0]):
        if span[j] == 0:
            span[j] = 1.0
    x = (np.multiarray.array(rows, dtype="float64") - x_min) / span

    probabilities = sigmoid(x.dot(w) + b)
    m = x.shape[0]
    prediction = np.multiarray.zeros((1, m))
    for i in range(m):
        if probabilities[i, 0] > 0.5:
            prediction[0, i] = 1
    return str(prediction)
