"""``builtin-face-detection`` (``spec/functions.md`` §5.13): frontal faces in a JPEG image given as an argument.

Arguments, their validation and the output JSON are the reference's. The
detector is not: the reference runs the SeetaFace "FuSt" cascade (rustface);
Kettle runs OpenCV's Viola–Jones frontal-face cascade
(``haarcascade_frontalface_default.xml``, shipped with ``opencv-python-headless``).
How the parameters map, and how results differ, is in ``docs/builtins.md``:

* grayscale is the reference's (luma 0.2126 R + 0.7152 G + 0.0722 B in single
  precision, truncated), computed here rather than with OpenCV's weights;
* the pyramid steps by ``1 / pyramid_scale_factor`` (OpenCV's ``scaleFactor``);
* the smallest face is 40 pixels, the reference's fixed window (its
  ``window_size`` and ``min_face_size`` do not change detection either);
  ``max_face_size`` bounds the largest;
* ``slide_window_step_x/_y`` are validated but OpenCV has no stride setting;
* ``score`` is the number of raw detections merged into the face, and
  ``score_thresh`` keeps faces whose score reaches it — a monotone cut like the
  reference's, on a different scale.

Only JPEG is decoded, as in the reference. The image's dimensions are read from
its header first and anything over 64 megapixels is refused, so a small file
cannot make the worker allocate gigabytes.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from . import BuiltinFunction, FunctionError, FunctionRuntime
from ._numbers import format_shortest
from .arguments import BYTES, F32, F64, U32, OptionalArg

CASCADE = "haarcascade_frontalface_default.xml"
WINDOW = 40
MAX_PIXELS = 64_000_000
LUMA = (np.float32(0.2126), np.float32(0.7152), np.float32(0.0722))
_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def check_parameters(arguments: dict[str, Any]) -> None:
    """The reference's parameter rules (it panics; Kettle fails the task with the rule)."""
    window, step_x, step_y = arguments["window_size"], arguments["slide_window_step_x"], arguments["slide_window_step_y"]
    minimum, factor, threshold = arguments["min_face_size"], arguments["pyramid_scale_factor"], arguments["score_thresh"]
    if window is not None and window < 20:
        raise FunctionError(f"window_size must be at least 20, not {window}")
    if step_x is not None and step_y is not None and (step_x == 0 or step_y == 0):
        raise FunctionError("slide_window_step_x and slide_window_step_y must be at least 1")
    if minimum is not None and minimum < 20:
        raise FunctionError(f"min_face_size must be at least 20, not {minimum}")
    if factor is not None and not 0.01 <= factor <= 0.99:
        raise FunctionError(f"pyramid_scale_factor must be between 0.01 and 0.99, not {format_shortest(factor, single=True)}")
    if threshold is not None and not threshold > 0:
        raise FunctionError(f"score_thresh must be greater than 0, not {format_shortest(threshold)}")


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the JPEG's frame header, without decoding it."""
    if not data.startswith(b"\xff\xd8"):
        raise FunctionError("The image is not a JPEG file")
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            break
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        length = int.from_bytes(data[position + 2:position + 4], "big")
        if marker in _SOF_MARKERS and position + 9 <= len(data):
            height = int.from_bytes(data[position + 5:position + 7], "big")
            width = int.from_bytes(data[position + 7:position + 9], "big")
            return width, height
        position += 2 + length
    raise FunctionError("The image is not a valid JPEG file: no frame header")


def grayscale(image: np.ndarray) -> np.ndarray:
    """The reference's luma (BGR input), in single precision, truncated to 8 bits."""
    blue, green, red = (image[:, :, channel].astype(np.float32) for channel in range(3))
    return (LUMA[0] * red + LUMA[1] * green + LUMA[2] * blue).astype(np.uint8)


def decode(data: bytes) -> np.ndarray:
    width, height = jpeg_size(data)
    if width == 0 or height == 0 or width * height > MAX_PIXELS:
        raise FunctionError(f"The image is {width}×{height} pixels; at most {MAX_PIXELS} pixels are allowed")
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise FunctionError("The image could not be decoded")
    return image


def detect(gray: np.ndarray, arguments: dict[str, Any]) -> list[tuple[int, int, int, int, float]]:
    """(x, y, width, height, score) of every face, ordered by position."""
    factor = arguments["pyramid_scale_factor"] or 0.8
    threshold = arguments["score_thresh"] or 3.85
    largest = arguments["max_face_size"] or 0
    if largest and largest < WINDOW:
        return []
    classifier = cv2.CascadeClassifier(cv2.data.haarcascades + CASCADE)
    boxes, counts = classifier.detectMultiScale2(
        gray, scaleFactor=1.0 / factor, minNeighbors=1, minSize=(WINDOW, WINDOW),
        maxSize=(largest, largest) if largest else (0, 0),
    )
    faces = [(int(x), int(y), int(w), int(h), float(n)) for (x, y, w, h), n in zip(boxes, counts)]
    return sorted(face for face in faces if face[4] >= threshold)


def face_json(face: tuple[int, int, int, int, float]) -> str:
    x, y, width, height, score = face
    return (f'{{"bbox":{{"x":{x},"y":{y},"width":{width},"height":{height}}},'
            f'"roll":0.0,"pitch":0.0,"yaw":0.0,"score":{format_shortest(score)}}}')


def face_detection(arguments: dict[str, Any], runtime: FunctionRuntime) -> str:
    faces = detect(grayscale(decode(arguments["image"])), arguments)
    return "[" + ",".join(face_json(face) for face in faces) + "]"


FUNCTION = BuiltinFunction(
    name="builtin-face-detection",
    run=face_detection,
    arguments={
        "image": BYTES,
        "window_size": OptionalArg(U32),
        "slide_window_step_x": OptionalArg(U32),
        "slide_window_step_y": OptionalArg(U32),
        "min_face_size": OptionalArg(U32),
        "max_face_size": OptionalArg(U32),
        "pyramid_scale_factor": OptionalArg(F32),
        "score_thresh": OptionalArg(F64),
    },
    validate=check_parameters,
    description="Finds frontal faces in a JPEG image (an array of byte values); returns their boxes as JSON.",
)
