"""Writes models/partner.onnx: a linear policy (one MatMul and one Add) that scores the five moves toward the star.

No training framework: fixed weights, built with the `onnx` package.
Run `python server/examples/partners/make_model.py`.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

HERE = Path(__file__).resolve().parent

# Scores for up, down, left, right, stay from (x, y, partner x, partner y, star x, star y): the move that closes
# the larger gap scores highest; staying wins only when the agent is on the star.
WEIGHTS = [
    [0.0, 0.0, 1.0, -1.0, 0.0],  # x
    [1.0, -1.0, 0.0, 0.0, 0.0],  # y
    [0.0, 0.0, 0.0, 0.0, 0.0],  # partner x
    [0.0, 0.0, 0.0, 0.0, 0.0],  # partner y
    [0.0, 0.0, -1.0, 1.0, 0.0],  # star x
    [-1.0, 1.0, 0.0, 0.0, 0.0],  # star y
]
BIAS = [0.0, 0.0, 0.0, 0.0, 0.001]


def build(weights: list[list[float]] = WEIGHTS, bias: list[float] = BIAS, name: str = "observation") -> onnx.ModelProto:
    """scores = observation @ weights + bias, for a batch of one: input [1, inputs], output [1, actions]."""
    inputs, actions = len(weights), len(weights[0])
    graph = helper.make_graph(
        [helper.make_node("MatMul", [name, "W"], ["h"]), helper.make_node("Add", ["h", "B"], ["scores"])],
        "partner",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, inputs])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, actions])],
        [
            helper.make_tensor("W", TensorProto.FLOAT, [inputs, actions], [v for row in weights for v in row]),
            helper.make_tensor("B", TensorProto.FLOAT, [actions], bias),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # what onnxruntime-web 1.x reads
    onnx.checker.check_model(model)
    return model


if __name__ == "__main__":
    onnx.save(build(), HERE / "models" / "partner.onnx")
