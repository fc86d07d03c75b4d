"""General ops converted to Core ML and verified by value (issue 17: corpus coverage).

Each case is one small ONNX model built with onnx.helper; it must convert and pass the `values`
check (the saved ML Program run on the MIL reference evaluator against ONNX Runtime or, for
opsets ONNX Runtime does not know, the onnx reference evaluator) in fp32 and fp16.  The last
tests run the coverage benchmark's harness on a few node-test models of the onnx package.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from engine.convert import check_convertible, convert

F32 = TensorProto.FLOAT
RNG = np.random.default_rng(23)
ROOT = Path(__file__).resolve().parents[2]


def _const(name: str, array) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def _model(path: Path, nodes, inputs, outputs, inits=(), opset: int = 17) -> Path:
    graph = helper.make_graph(nodes, "case", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 13 if opset >= 28 else 10 if opset >= 21 else 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _x(name: str, shape, dtype=F32):
    return helper.make_tensor_value_info(name, dtype, list(shape))


def _one(op_type: str, shape, out_shape=None, out_dtype=F32, opset: int = 17, **attributes):
    def build(path):
        return _model(path, [helper.make_node(op_type, ["x"], ["y"], name="n", **attributes)],
                      [_x("x", shape)], [_x("y", out_shape or shape, out_dtype)], opset=opset)
    return build


def arg_max_last_index(path):
    # ties on purpose (x rounded to one decimal after scaling): the last of equal maxima is taken
    return _one("ArgMax", [3, 5, 4], [3, 1, 4], TensorProto.INT64, axis=1, keepdims=1, select_last_index=1)(path)


def layer_norm_with_statistics(path):
    scale, bias = RNG.standard_normal(6).astype(np.float32), RNG.standard_normal(6).astype(np.float32)
    node = helper.make_node("LayerNormalization", ["x", "scale", "bias"], ["y", "mean", "inv_std"], name="ln",
                            axis=-1, epsilon=1e-3)
    return _model(path, [node], [_x("x", [2, 3, 6])],
                  [_x("y", [2, 3, 6]), _x("mean", [2, 3, 1]), _x("inv_std", [2, 3, 1])],
                  [_const("scale", scale), _const("bias", bias)])


def instance_norm(path):
    node = helper.make_node("InstanceNormalization", ["x", "s", "b"], ["y"], name="in", epsilon=1e-2)
    return _model(path, [node], [_x("x", [2, 3, 4, 5])], [_x("y", [2, 3, 4, 5])],
                  [_const("s", RNG.standard_normal(3).astype(np.float32)),
                   _const("b", RNG.standard_normal(3).astype(np.float32))])


def group_norm(path):
    node = helper.make_node("GroupNormalization", ["x", "s", "b"], ["y"], name="gn", num_groups=2, epsilon=1e-3)
    return _model(path, [node], [_x("x", [2, 4, 3, 3]), _x("s", [4]), _x("b", [4])], [_x("y", [2, 4, 3, 3])],
                  opset=21)


def lp_norm(path):
    return _one("LpNormalization", [3, 4], axis=0, p=1)(path)


def lp_pool_p3_padded(path):
    return _one("LpPool", [1, 2, 6, 6], [1, 2, 3, 3], opset=18, kernel_shape=[3, 3], strides=[2, 2],
                pads=[1, 1, 0, 0], p=3)(path)


def batch_norm_runtime_statistics(path):
    node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], name="bn", epsilon=1e-2)
    return _model(path, [node], [_x("x", [2, 3, 4, 5]), _x("s", [3]), _x("m", [3]), _x("v", [3])],
                  [_x("y", [2, 3, 4, 5])], [_const("b", np.array([0.5, 1.0, 2.0], dtype=np.float32))])


def prelu_runtime_slope(path):
    node = helper.make_node("PRelu", ["x", "slope"], ["y"], name="prelu")
    return _model(path, [node], [_x("x", [2, 3, 4]), _x("slope", [3, 1])], [_x("y", [2, 3, 4])])


def depth_to_space_and_back(path):
    # DCR DepthToSpace, CRD DepthToSpace, CRD SpaceToDepth (pixel_unshuffle), DCR SpaceToDepth
    nodes = [helper.make_node("DepthToSpace", ["x"], ["a"], name="d2s_dcr", blocksize=2),
             helper.make_node("SpaceToDepth", ["a"], ["b"], name="s2d_crd", blocksize=2, mode="CRD"),
             helper.make_node("DepthToSpace", ["b"], ["c"], name="d2s_crd", blocksize=2, mode="CRD"),
             helper.make_node("SpaceToDepth", ["c"], ["y"], name="s2d_dcr", blocksize=2)]
    return _model(path, nodes, [_x("x", [1, 8, 2, 3])], [_x("y", [1, 8, 2, 3])], opset=28)  # mode: SpaceToDepth-28


def cast_like_of_constant_mask(path):
    # coremltools folds the CastLike of a constant bool mask: the package holds the float mask,
    # which the parameters and weights checks trace back through the removed CastLike
    mask = np.triu(np.ones((4, 6), dtype=bool))
    nodes = [helper.make_node("CastLike", ["mask", "x"], ["m"], name="cast_mask"),
             helper.make_node("Add", ["x", "m"], ["y"], name="add_mask")]
    return _model(path, nodes, [_x("x", [2, 4, 6])], [_x("y", [2, 4, 6])], [_const("mask", mask)])


def hardmax_opset11(path):
    return _one("Hardmax", [2, 3, 4], opset=11, axis=1)(path)


def unary_chain(path):
    # Swish(Mish(Celu(Shrink(x)))) + Atan + Asinh + Cosh: the composite unary translations
    nodes = [helper.make_node("Shrink", ["x"], ["s"], name="shrink", lambd=0.3, bias=0.1),
             helper.make_node("Celu", ["s"], ["c"], name="celu", alpha=0.7),
             helper.make_node("Mish", ["c"], ["m"], name="mish"),
             helper.make_node("Swish", ["m"], ["w"], name="swish", alpha=1.5),
             helper.make_node("Atan", ["w"], ["a"], name="atan"),
             helper.make_node("Asinh", ["a"], ["h"], name="asinh"),
             helper.make_node("Cosh", ["h"], ["y"], name="cosh")]
    return _model(path, nodes, [_x("x", [2, 7])], [_x("y", [2, 7])], opset=24)


def float_mod(path):
    node = helper.make_node("Mod", ["x", "d"], ["y"], name="mod", fmod=1)
    return _model(path, [node], [_x("x", [3, 4]), _x("d", [4])], [_x("y", [3, 4])])


def div_by_constant_tensor(path):
    # coremltools' divide_to_multiply stores the reciprocal: the weights check knows that form
    node = helper.make_node("Div", ["x", "d"], ["y"], name="div")
    return _model(path, [node], [_x("x", [3, 4])], [_x("y", [3, 4])],
                  [_const("d", np.array([0.7, -0.4, 1.3, -2.0], dtype=np.float32))])


def conv_runtime_weight_and_bias(path):
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", pads=[1, 1, 1, 1], strides=[2, 2])
    return _model(path, [node], [_x("x", [1, 3, 7, 7]), _x("w", [4, 3, 3, 3]), _x("b", [4])],
                  [_x("y", [1, 4, 4, 4])])


def clip_runtime_bounds(path):
    node = helper.make_node("Clip", ["x", "lo", "hi"], ["y"], name="clip")
    return _model(path, [node], [_x("x", [3, 4]), _x("lo", []), _x("hi", [])], [_x("y", [3, 4])])


def matmul_vector_batch(path):
    node = helper.make_node("MatMul", ["v", "x"], ["y"], name="mm")
    return _model(path, [node], [_x("v", [3]), _x("x", [2, 3, 4])], [_x("y", [2, 4])])


def flatten_negative_axis(path):
    return _one("Flatten", [2, 3, 4, 5], [6, 20], axis=-2)(path)


def shape_output_beside_a_computed_one(path):
    # At fixed shapes Shape(x) is a constant graph output: an identity op of the value carries it
    shape = helper.make_node("Shape", ["x"], ["s"], name="shape", start=1)
    relu = helper.make_node("Relu", ["x"], ["y"], name="relu")
    return _model(path, [shape, relu], [_x("x", [2, 3, 4])], [_x("s", [2], TensorProto.INT64), _x("y", [2, 3, 4])])


def constant_only_output(path):
    # The only output is a Constant; the input is read by nothing (coremltools gives it "x_tmp")
    value = helper.make_tensor("v", F32, [2, 2], [1.5, -2.0, 0.25, 8.0])
    node = helper.make_node("Constant", [], ["y"], name="const", value=value)
    return _model(path, [node], [_x("x", [3])], [_x("y", [2, 2])])


def dilated_max_pool_padded_ceil(path):
    # Core ML pooling has no dilation: written out as strided slices; pads and a ceil_mode overhang
    return _one("MaxPool", [1, 2, 7, 6], [1, 2, 4, 2], kernel_shape=[2, 3], dilations=[2, 2], strides=[2, 2],
                pads=[1, 0, 0, 1], ceil_mode=1)(path)


def dilated_average_pool_excluding_pads(path):
    # the divisor counts only the taps inside the input (count_include_pad=0), 3-D, with a last
    # axis of kernel size 1
    return _one("AveragePool", [1, 2, 5, 6, 4], [1, 2, 3, 5, 4], kernel_shape=[3, 2, 1], dilations=[2, 3, 1],
                pads=[1, 1, 0, 1, 1, 0], count_include_pad=0, opset=19)(path)


def dilated_average_pool_including_pads(path):
    return _one("AveragePool", [1, 1, 6, 6], [1, 1, 4, 4], kernel_shape=[2, 2], dilations=[2, 2],
                strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1, ceil_mode=1, opset=19)(path)


def dilated_lp_pool(path):
    return _one("LpPool", [1, 2, 6, 6], [1, 2, 4, 4], kernel_shape=[2, 2], dilations=[2, 2], p=3, opset=19)(path)


def conv_transpose_runtime_weight_grouped(path):
    # MIL's conv_transpose needs a constant weight: zeros inserted, padded, conv with the weight's
    # channels swapped per group and its taps reversed; strides, pads, output_padding, dilation
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], name="up", group=2, strides=[2, 3],
                            pads=[1, 0, 0, 2], output_padding=[1, 1], dilations=[2, 1])
    return _model(path, [node], [_x("x", [1, 4, 3, 4]), _x("w", [4, 3, 3, 2]), _x("b", [6])],
                  [_x("y", [1, 6, 9, 10])])


def conv_transpose_runtime_weight_1d_same(path):
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="up", strides=[2], auto_pad="SAME_UPPER")
    return _model(path, [node], [_x("x", [2, 3, 5]), _x("w", [3, 2, 4])], [_x("y", [2, 2, 10])])


def lstm_peepholes_initial_state(path):
    # unrolled: every step's gates are MIL ops; bidirectional, peepholes, initial h and c
    hidden, size = 3, 2
    node = helper.make_node("LSTM", ["x", "w", "r", "b", "", "h0", "c0", "p"], ["y", "y_h", "y_c"], name="lstm",
                            hidden_size=hidden, direction="bidirectional")
    return _model(path, [node], [_x("x", [4, 2, size]), _x("w", [2, 4 * hidden, size]), _x("r", [2, 4 * hidden, hidden]),
                                 _x("b", [2, 8 * hidden]), _x("h0", [2, 2, hidden]), _x("c0", [2, 2, hidden]),
                                 _x("p", [2, 3 * hidden])],
                  [_x("y", [4, 2, 2, hidden]), _x("y_h", [2, 2, hidden]), _x("y_c", [2, 2, hidden])])


def gru_linear_before_reset_reverse(path):
    hidden, size = 4, 3
    node = helper.make_node("GRU", ["x", "w", "r", "b"], ["", "y_h"], name="gru", hidden_size=hidden,
                            linear_before_reset=1, direction="reverse")
    return _model(path, [node], [_x("x", [3, 2, size]), _x("w", [1, 3 * hidden, size]), _x("r", [1, 3 * hidden, hidden]),
                                 _x("b", [1, 6 * hidden])], [_x("y_h", [1, 2, hidden])])


def rnn_relu_runtime_weights(path):
    node = helper.make_node("RNN", ["x", "w", "r"], ["y"], name="rnn", hidden_size=3, activations=["Relu"])
    return _model(path, [node], [_x("x", [3, 2, 2]), _x("w", [1, 3, 2]), _x("r", [1, 3, 3])], [_x("y", [3, 1, 2, 3])])


def swiglu_alpha(path):
    node = helper.make_node("SwiGLU", ["a", "b"], ["y"], name="swiglu", alpha=0.5)
    return _model(path, [node], [_x("a", [2, 5]), _x("b", [2, 5])], [_x("y", [2, 5])], opset=28)


def size_of_fixed_input_scales(path):
    # Size folds at fixed shapes like Shape: here it feeds a Mul (a constant output is covered above)
    nodes = [helper.make_node("Size", ["x"], ["n"], name="size"),
             helper.make_node("Cast", ["n"], ["n_float"], name="to_float", to=F32),
             helper.make_node("Mul", ["x", "n_float"], ["y"], name="scale")]
    return _model(path, nodes, [_x("x", [2, 3])], [_x("y", [2, 3])])


CASES = {fn.__name__: fn for fn in (swiglu_alpha, size_of_fixed_input_scales,
                                    lstm_peepholes_initial_state, gru_linear_before_reset_reverse,
                                    rnn_relu_runtime_weights,
                                    conv_transpose_runtime_weight_grouped, conv_transpose_runtime_weight_1d_same,
                                    dilated_max_pool_padded_ceil, dilated_average_pool_excluding_pads,
                                    dilated_average_pool_including_pads, dilated_lp_pool,
                                    shape_output_beside_a_computed_one, constant_only_output,
                                    arg_max_last_index, layer_norm_with_statistics, instance_norm, group_norm,
                                     lp_norm, hardmax_opset11, unary_chain, float_mod, conv_runtime_weight_and_bias,
                                     clip_runtime_bounds, matmul_vector_batch, flatten_negative_axis,
                                     div_by_constant_tensor, lp_pool_p3_padded, batch_norm_runtime_statistics,
                                     prelu_runtime_slope, depth_to_space_and_back, cast_like_of_constant_mask)}


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_op_family_converts_and_verifies_by_value(case, precision, tmp_path):
    path = CASES[case](tmp_path / f"{case}.onnx")
    assert check_convertible(path) == []
    result = convert(path, tmp_path / f"{case}.mlpackage", precision=precision)
    values = result.verification["values"]
    assert values["status"] == "passed", values["detail"]
    assert values["compared_tensors"] >= 1
    assert not result.failed_checks, result.outcomes()


def test_is_nan_and_is_inf_give_booleans_that_match(tmp_path):
    # Inputs are random normals (no NaN or inf): both outputs all false on both sides, compared as
    # values; the translation is checked on special values through the MIL reference evaluator.
    nodes = [helper.make_node("IsNaN", ["x"], ["nan"], name="isnan"),
             helper.make_node("IsInf", ["x"], ["neg_inf"], name="isinf", detect_positive=0)]
    path = _model(tmp_path / "special.onnx", nodes, [_x("x", [2, 3])],
                  [_x("nan", [2, 3], TensorProto.BOOL), _x("neg_inf", [2, 3], TensorProto.BOOL)], opset=20)
    result = convert(path, tmp_path / "special.mlpackage", precision="fp32")
    assert result.verification["values"]["status"] == "passed", result.verification["values"]["detail"]
    from engine.convert.mil_reference import evaluate, load_program
    program = load_program(result.package_path)
    special = np.array([[np.nan, -np.inf, np.inf], [0.0, -1.0, 2.0]], dtype=np.float32)
    outputs = evaluate(program, {result.layer_map["inputs"]["x"]: special})
    assert outputs[result.layer_map["outputs"]["nan"]].tolist() == [[True, False, False], [False, False, False]]
    assert outputs[result.layer_map["outputs"]["neg_inf"]].tolist() == [[False, True, False], [False, False, False]]


def test_refusals_keep_their_reasons(tmp_path):
    # a grouped 3-D ConvTranspose with a run-time weight would need a rank-6 reshape; integer Mod
    # is not translated
    convt = helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="up", group=2)
    path = _model(tmp_path / "convt.onnx", [convt], [_x("x", [1, 2, 3, 3, 3]), _x("w", [2, 1, 2, 2, 2])],
                  [_x("y", [1, 2, 4, 4, 4])])
    (blocker,) = check_convertible(path)
    assert blocker.op_type == "ConvTranspose" and "grouped 3-D ConvTranspose with a run-time weight" in blocker.reason
    mod = helper.make_node("Mod", ["a", "b"], ["y"], name="mod")
    path = _model(tmp_path / "mod.onnx", [mod], [_x("a", [3], TensorProto.INT32), _x("b", [3], TensorProto.INT32)],
                  [_x("y", [3], TensorProto.INT32)])
    reasons = [b.reason for b in check_convertible(path)]
    assert any("integer Mod is not translated" in r for r in reasons), reasons
    gru = helper.make_node("GRU", ["x", "w", "r"], ["y"], name="gru", hidden_size=2)
    path = _model(tmp_path / "gru.onnx", [gru], [_x("x", [2, 1, 2]), _x("r", [1, 6, 2])], [_x("y", [2, 1, 1, 2])],
                  [_const("w", np.ones((1, 6, 2), np.float32))])
    (blocker,) = check_convertible(path)
    assert blocker.node_id == "gru" and "constant weights (inputs 1) are not translated yet" in blocker.reason
    bn = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], name="bn")
    path = _model(tmp_path / "bn.onnx", [bn], [_x("x", [1, 2, 3]), _x("m", [2])], [_x("y", [1, 2, 3])],
                  [_const(name, np.ones(2, np.float32)) for name in ("s", "b", "v")])
    (blocker,) = check_convertible(path)
    assert blocker.node_id == "bn" and "a constant variance beside" in blocker.reason


# ----------------------------------------------------------------------------- the coverage harness

@pytest.fixture(scope="module")
def harness():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_convert_coverage
    cases = {case.name: case for case in bench_convert_coverage.float32_cases()}
    return bench_convert_coverage, cases


EXPECTED = {
    # passes: pre-check, conversion and the value check
    "test_argmax_default_axis_example_select_last_index": "passed",
    "test_layer_normalization_4d_axis_negative_2_expanded": "passed",  # Flatten with a negative axis
    "test_basic_conv_with_padding": "passed",  # the weight is a graph input
    "test_clip_splitbounds_expanded": "passed",  # scalar graph inputs
    "test_celu": "passed",  # IR version ONNX Runtime refuses: the onnx reference evaluator
    # refused, with the op and the reason
    "test_gru_batchwise": "passed",  # unrolled; ONNX Runtime refuses layout=1: the onnx reference evaluator
    "test_dynamicquantizelinear": "pre-check",
    "test_cast_FLOAT_to_BFLOAT16": "pre-check",
    "test_convtranspose": "passed",  # a run-time weight, written out with conv
    "test_maxpool_2d_dilations": "passed",  # dilated pooling, written out with strided slices
    "test_shape": "passed",  # a constant output
    "test_size": "passed",  # Size folded at fixed shapes, a constant output
    "test_bernoulli_seed": "pre-check",
}


def test_coverage_harness_counts_a_pass_only_after_the_value_check(harness, tmp_path):
    module, cases = harness
    outcomes = [module.run_case(cases[name], tmp_path, "iOS18") for name in EXPECTED]
    assert {o.name: o.stage for o in outcomes} == EXPECTED
    refusals = {o.name: o.blockers for o in outcomes if o.stage != "passed"}
    assert refusals["test_dynamicquantizelinear"] == [("DynamicQuantizeLinear", "no Core ML translation for this op")]
    assert refusals["test_cast_FLOAT_to_BFLOAT16"][0][0] == "Cast"
    assert "type 16 is not supported" in refusals["test_cast_FLOAT_to_BFLOAT16"][0][1]
    assert refusals["test_bernoulli_seed"] == [("Bernoulli", "no Core ML translation for this op")]


def test_coverage_table_names_the_stage_and_the_blocking_op(harness, capsys):
    module, _ = harness
    outcomes = [module.Outcome("a", "passed"), module.Outcome("b", "pre-check", [("GRU", "no translation")]),
                module.Outcome("c", "checks", [("RMSNormalization", "first departing layer: x")]),
                module.Outcome("d", "checks", [("(check: values)", "values not run: evaluator")])]
    module.print_table(outcomes, "iOS18", 1.0, show_reasons=False, listing=False)
    text = capsys.readouterr().out
    assert "1 of 4 convert and verify by value (25.0 %)" in text
    assert "stopped by the pre-check: 1, by the build: 0, by a failed or unrun check: 2" in text
    assert "RMSNormalization" in text and "(check: values)" in text
