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


def layer_norm_runtime_scale(path):
    # scale and bias as graph inputs (the node tests' form): applied after layer_norm
    return _model(path, [helper.make_node("LayerNormalization", ["x", "scale", "bias"], ["y"], name="ln", axis=2)],
                  [_x("x", [2, 3, 4, 5]), _x("scale", [4, 5]), _x("bias", [5])], [_x("y", [2, 3, 4, 5])])


def reciprocal(path):
    # MIL's inverse adds epsilon 1e-4 unless given 0: visible at x near 1e-2
    return _model(path, [helper.make_node("Abs", ["x"], ["a"], name="abs"),
                         helper.make_node("Add", ["a", "small"], ["b"], name="shift"),
                         helper.make_node("Reciprocal", ["b"], ["y"], name="reciprocal")],
                  [_x("x", [3, 4])], [_x("y", [3, 4])], [_const("small", np.float32(0.01))])


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


CASES = [layer_norm, layer_norm_two_axes_broadcast_scale, layer_norm_runtime_scale, reciprocal, rms_norm, where_mask, where_constant_condition, expand,
         cast_like, trilu_cases, comparisons]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__)
def test_op_converts_and_matches_onnx_runtime_by_value(case, precision, tmp_path):
    source = case(tmp_path / f"{case.__name__}.onnx")
    result = convert(source, tmp_path / "out.mlpackage", precision=precision, target="iOS17")
    values = result.verification["values"]
    assert values["status"] == "passed", values["detail"]
    assert result.verified


# ----------------------------------------------------------------------------- the shape-fixing pass

def legacy_repeat_kv(path):
    """repeat_kv as the legacy exporter writes it: the Expand target is computed from Shape through
    Gather/Unsqueeze/Concat and then Equal/Where (which ONNX shape inference does not propagate
    values through), and a Reshape whose target is another Shape chain of the expanded tensor.
    The batch dimension is free in the file; --shape fixes it."""
    c = lambda name, values: _const(name, np.array(values, np.int64))  # noqa: E731
    nodes = [
        helper.make_node("Unsqueeze", ["k", "axis2"], ["k5"], name="/attn/Unsqueeze"),
        helper.make_node("Shape", ["k"], ["k_shape"], name="/attn/Shape"),
        helper.make_node("Gather", ["k_shape", "zero"], ["batch"], name="/attn/Gather", axis=0),
        helper.make_node("Gather", ["k_shape", "two"], ["length"], name="/attn/Gather_1", axis=0),
        helper.make_node("Unsqueeze", ["batch", "axis0"], ["batch1"], name="/attn/Unsqueeze_1"),
        helper.make_node("Unsqueeze", ["length", "axis0"], ["length1"], name="/attn/Unsqueeze_2"),
        helper.make_node("Concat", ["batch1", "heads_groups", "length1", "head_dim"], ["target"], name="/attn/Concat",
                         axis=0),
        helper.make_node("Equal", ["target", "minus_one"], ["is_free"], name="/attn/Equal"),
        helper.make_node("Where", ["is_free", "ones", "target"], ["expand_to"], name="/attn/Where"),
        helper.make_node("Expand", ["k5", "expand_to"], ["expanded"], name="/attn/Expand"),
        helper.make_node("Shape", ["expanded"], ["e_shape"], name="/attn/Shape_1"),
        helper.make_node("Gather", ["e_shape", "zero"], ["e_batch"], name="/attn/Gather_2", axis=0),
        helper.make_node("Unsqueeze", ["e_batch", "axis0"], ["e_batch1"], name="/attn/Unsqueeze_3"),
        helper.make_node("Concat", ["e_batch1", "heads_tail"], ["reshape_to"], name="/attn/Concat_1", axis=0),
        helper.make_node("Reshape", ["expanded", "reshape_to"], ["k_all"], name="/attn/Reshape"),
        helper.make_node("LayerNormalization", ["k_all", "gamma", "beta"], ["y"], name="/attn/norm"),
    ]
    inits = [c("axis2", [2]), c("axis0", [0]), c("zero", 0), c("two", 2), c("heads_groups", [2, 3]),
             c("head_dim", [4]), c("minus_one", [-1, -1, -1, -1, -1]), c("ones", [1, 1, 1, 1, 1]),
             c("heads_tail", [6, 5, 4]), _const("gamma", RNG.standard_normal(4).astype(np.float32)),
             _const("beta", RNG.standard_normal(4).astype(np.float32))]
    return _model(path, nodes, [_x("k", ["batch", 2, 5, 4])], [_x("y", ["batch", 6, 5, 4])], inits)


def test_shape_chains_through_where_fold_and_the_layer_map_says_where(tmp_path):
    source = legacy_repeat_kv(tmp_path / "repeat_kv.onnx")
    assert check_convertible(source, {"k": [1, 2, 5, 4]}) == []
    result = convert(source, tmp_path / "out.mlpackage", precision="fp32", input_shapes={"k": [1, 2, 5, 4]})
    assert result.verification["values"]["status"] == "passed", result.verification["values"]["detail"]
    layer_map = result.layer_map
    # the compute nodes that remain, and every shape node folded into the node that used its value
    assert set(layer_map["nodes"]) == {"/attn/Unsqueeze", "/attn/Expand", "/attn/Reshape", "/attn/norm"}
    assert layer_map["folded_into"]["/attn/Where"] == ["/attn/Expand"]
    assert layer_map["folded_into"]["/attn/Shape"] == ["/attn/Expand"]
    assert layer_map["folded_into"]["/attn/Shape_1"] == ["/attn/Reshape"]
    assert result.folded_summary() == ("folded 12 constant nodes (3 Gather, 3 Unsqueeze, 2 Shape, 2 Concat, 1 Equal, "
                                       "1 Where) into the 2 nodes that use them")


def test_legacy_exported_decoder_block_converts_after_folding(tmp_path):
    """A Llama-style decoder block from the transformer generator (RMSNorm as Pow/ReduceMean/Sqrt/
    Reciprocal, rotary embedding, grouped K/V repeated with Expand, SiLU MLP, the
    Shape -> Gather -> Concat -> Reshape chains of a dynamic export), small dimensions, random
    weights stored in the file and a free batch dimension fixed by --shape."""
    from engine.transformer_samples import TransformerConfig, transformer_model

    config = TransformerConfig(layers=1, hidden=32, heads=4, kv_heads=2, intermediate=64, vocab=50, sequence=3,
                               past=5)
    model, _ = transformer_model(config)
    for index, tensor in enumerate(model.graph.initializer):
        if tensor.data_location == TensorProto.EXTERNAL:
            values = (RNG.standard_normal(list(tensor.dims)) * 0.1).astype(np.float32)
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(values, tensor.name))
    for value in list(model.graph.input) + list(model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    path = tmp_path / "decoder.onnx"
    onnx.save(model, str(path))
    shapes = {value.name: [1] + [d.dim_value for d in value.type.tensor_type.shape.dim[1:]]
              for value in model.graph.input}
    result = convert(path, tmp_path / "decoder.mlpackage", precision="fp32", input_shapes=shapes)
    assert result.verified, result.failed_checks
    assert result.verification["values"]["status"] == "passed", result.verification["values"]["detail"]
    folded_types = set(result.layer_map["folded_op_types"].values())
    assert {"Shape", "Gather", "Concat"} <= folded_types
    # every Reshape that read a Shape chain is where that chain was folded into
    reshapes = {users[0] for node_id, users in result.layer_map["folded_into"].items()
                if result.layer_map["folded_op_types"][node_id] == "Shape"}
    assert len(reshapes) == 4  # three head splits and the head merge
    assert all(result.layer_map["source_nodes"][node_id]["op_type"] == "Reshape" for node_id in reshapes)
