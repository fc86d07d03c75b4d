"""Small ONNX models whose fp16 behaviour is known by construction (numerics tests, CLI, GUI, agent)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

F = TensorProto.FLOAT


def save_model(directory, name, nodes, inputs, outputs, initializers=()):
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = directory / f"{name}.onnx"
    onnx.save_model(model, str(path))
    return path


def constant(name, value):
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def overflow_model(directory):
    """x in [0, 1) * 1000 (fine in fp16), squared (up to 1e6 > 65504: overflows), * 1e-3 (fine in fp32)."""
    nodes = [helper.make_node("Mul", ["x", "k_up"], ["scaled"], name="scale_up"),
             helper.make_node("Mul", ["scaled", "scaled"], ["squared"], name="square"),
             helper.make_node("Mul", ["squared", "k_down"], ["y"], name="scale_down")]
    return save_model(directory, "overflow", nodes, [helper.make_tensor_value_info("x", F, [1, 64])],
                      [helper.make_tensor_value_info("y", F, [1, 64])],
                      [constant("k_up", 1000.0), constant("k_down", 1e-3)])


def softmax_model(directory):
    """Logits 3000 + 4x: fp16 spacing is 2 above 2048, so logits move by up to 1 and softmax by up to e."""
    nodes = [helper.make_node("Mul", ["x", "k"], ["spread"], name="spread"),
             helper.make_node("Add", ["spread", "offset"], ["logits"], name="logits"),
             helper.make_node("Softmax", ["logits"], ["p"], name="softmax", axis=-1)]
    return save_model(directory, "softmax", nodes, [helper.make_tensor_value_info("x", F, [1, 64])],
                      [helper.make_tensor_value_info("p", F, [1, 64])],
                      [constant("k", 4.0), constant("offset", 3000.0)])


def exact_model(directory):
    """Small integer weights on small integer inputs: every value is an integer below 2048, exact in fp16."""
    weight = np.random.default_rng(1).integers(-1, 2, size=(4, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Add", ["r", "c"], ["y"], name="add")]
    return save_model(directory, "exact", nodes, [helper.make_tensor_value_info("x", F, [1, 3, 8, 8])],
                      [helper.make_tensor_value_info("y", F, [1, 4, 8, 8])], [numpy_helper.from_array(weight, "w")])


def integer_inputs(directory, count=1, name="ints.npz"):
    """Inputs of exact_model: integers 0..3 (`count` > 1 stacks them on a leading axis)."""
    values = np.random.default_rng(7).integers(0, 4, size=(count, 1, 3, 8, 8)).astype(np.float32)
    path = directory / name
    np.savez(path, x=values if count > 1 else values[0])
    return path


def normalisation_model(directory, weight=200.0):
    """conv (x * weight per channel) -> square -> mean -> sqrt -> divide: the variance overflows fp16."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Mul", ["c", "c"], ["sq"], name="square"),
             helper.make_node("ReduceMean", ["sq"], ["var"], name="variance", axes=[1], keepdims=1),
             helper.make_node("Sqrt", ["var"], ["std"], name="std"),
             helper.make_node("Div", ["c", "std"], ["y"], name="normalise")]
    return save_model(directory, "normalisation", nodes, [helper.make_tensor_value_info("x", F, [1, 3, 4, 4])],
                      [helper.make_tensor_value_info("y", F, [1, 8, 4, 4])],
                      [numpy_helper.from_array(np.full((8, 3, 1, 1), weight, np.float32), "w")])
