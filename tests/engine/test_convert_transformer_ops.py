"""Transformer ops converted to Core ML and verified by value (issue 17, item 2).

Each case is one small ONNX model built with onnx.helper around the op; it must convert
and pass the `values` check (the saved ML Program run on the MIL reference evaluator against
ONNX Runtime, every tensor) in fp32 and fp16.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from engine.convert import check_convertible, convert

F32 = TensorProto.FLOAT
RNG = np.random.default_rng(17)


def _const(name: str, array) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def _model(path: Path, nodes, inputs, outputs, inits=(), opset: int = 17) -> Path:
    graph = helper.make_graph(nodes, "case", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10 if opset >= 21 else 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _x(name: str, shape, dtype=F32):
    return helper.make_tensor_value_info(name, dtype, list(shape))


def layer_norm(path):
    scale = RNG.standard_normal(8).astype(np.float32)
    bias = RNG.standard_normal(8).astype(np.float32)
    return _model(path, [helper.make_node("LayerNormalization", ["x", "scale", "bias"], ["y"], name="ln",
                                          axis=-1, epsilon=1e-3)],
                  [_x("x", [2, 5, 8])], [_x("y", [2, 5, 8])], [_const("scale", scale), _const("bias", bias)])


def layer_norm_two_axes_broadcast_scale(path):
    # axis=1 over [4, 6]; the scale is given as [6] and broadcast by ONNX; no bias
    scale = RNG.standard_normal(6).astype(np.float32)
    return _model(path, [helper.make_node("LayerNormalization", ["x", "scale"], ["y"], name="ln", axis=1)],
                  [_x("x", [3, 4, 6])], [_x("y", [3, 4, 6])], [_const("scale", scale)])


def rms_norm(path):
    scale = RNG.standard_normal(16).astype(np.float32)
    return _model(path, [helper.make_node("RMSNormalization", ["x", "scale"], ["y"], name="rms", epsilon=1e-6)],
                  [_x("x", [1, 4, 16])], [_x("y", [1, 4, 16])], [_const("scale", scale)], opset=23)


def where_mask(path):
    # the causal-mask pattern: Where(mask, scores, -inf-ish) on a runtime condition
    return _model(path, [helper.make_node("Greater", ["a", "zero"], ["cond"], name="cmp"),
                         helper.make_node("Where", ["cond", "x", "fill"], ["y"], name="where")],
                  [_x("a", [2, 1, 4]), _x("x", [2, 3, 4])], [_x("y", [2, 3, 4])],
                  [_const("zero", np.float32(0)), _const("fill", np.float32(-1e4))])


def where_constant_condition(path):
    cond = RNG.random((3, 4)) > 0.5
    return _model(path, [helper.make_node("Where", ["cond", "x", "y0"], ["y"], name="where")],
                  [_x("x", [2, 3, 4]), _x("y0", [4])], [_x("y", [2, 3, 4])], [_const("cond", cond)])


def expand(path):
    # repeat_kv: [1, 2, 1, 3, 4] -> [1, 2, 3, 3, 4], and a rank-raising broadcast
    return _model(path, [helper.make_node("Expand", ["x", "shape"], ["y"], name="expand"),
                         helper.make_node("Expand", ["v", "shape2"], ["w"], name="expand_rank")],
                  [_x("x", [1, 2, 1, 3, 4]), _x("v", [3, 1])], [_x("y", [1, 2, 3, 3, 4]), _x("w", [2, 3, 5])],
                  [_const("shape", np.array([1, 2, 3, 3, 4], np.int64)), _const("shape2", np.array([2, 1, 5], np.int64))])


def cast_like(path):
    return _model(path, [helper.make_node("Cast", ["x"], ["i"], name="to_int", to=TensorProto.INT64),
                         helper.make_node("CastLike", ["i", "x"], ["y"], name="back")],
                  [_x("x", [3, 4])], [_x("y", [3, 4])])


def comparisons(path):
    # the boolean ops feeding masks: every comparison, then And/Or/Xor/Not of two of them
    nodes = [helper.make_node(op_type, ["a", "b"], [op_type], name=op_type)
             for op_type in ("Greater", "Less", "Equal", "GreaterOrEqual", "LessOrEqual")]
    nodes += [helper.make_node(op_type, ["Greater", "Equal"], [f"{op_type}_b"], name=f"{op_type}_b")
              for op_type in ("And", "Or", "Xor")]
    nodes += [helper.make_node("Not", ["Xor_b"], ["not"], name="not"),
              helper.make_node("Where", ["not", "a", "b"], ["y"], name="where")]
    return _model(path, nodes, [_x("a", [3, 4]), _x("b", [4])], [_x("y", [3, 4]), _x("Less", [3, 4], TensorProto.BOOL),
                                                               _x("LessOrEqual", [3, 4], TensorProto.BOOL)])


def trilu_cases(path):
    nodes, outputs, inits = [], [], []
    for index, (upper, k) in enumerate([(1, 0), (1, -1), (1, 2), (0, 0), (0, 1), (0, -2)]):
        inits.append(_const(f"k{index}", np.array(k, np.int64)))
        nodes.append(helper.make_node("Trilu", ["x", f"k{index}"], [f"y{index}"], name=f"trilu{index}", upper=upper))
        outputs.append(_x(f"y{index}", [2, 4, 5]))
    return _model(path, nodes, [_x("x", [2, 4, 5])], outputs, inits)


CASES = [layer_norm, layer_norm_two_axes_broadcast_scale, rms_norm, where_mask, where_constant_condition, expand,
         cast_like, trilu_cases, comparisons]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__)
def test_op_converts_and_matches_onnx_runtime_by_value(case, precision, tmp_path):
    source = case(tmp_path / f"{case.__name__}.onnx")
    result = convert(source, tmp_path / "out.mlpackage", precision=precision, target="iOS17")
    values = result.verification["values"]
    assert values["status"] == "passed", values["detail"]
    assert result.verified
