"""Static analysis against published figures and hand-computed small cases."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import LIGHT_ZOO, light_model
from engine.analysis import analyze
from engine.samples import mobileunet
from importers import open_model

# Published parameter / multiply-accumulate counts of these architectures at 224x224
# (torchvision / the original papers; BVLC AlexNet counted at the light model's 224 input).
# Tolerances cover the Caffe2 exports' differences (e.g. DenseNet's BN carries an extra
# scale/bias pair, GoogLeNet's 6.8 M is quoted without the auxiliary heads' absence).
PUBLISHED = {
    "resnet50": (25.557e6, 0.01, 4.09e9, 0.03),
    "vgg19": (143.67e6, 0.01, 19.6e9, 0.03),
    "bvlc_alexnet": (61.0e6, 0.01, 0.66e9, 0.10),
    "squeezenet": (1.248e6, 0.02, 0.35e9, 0.10),
    "inception_v1": (6.8e6, 0.04, 1.5e9, 0.06),
    "inception_v2": (11.2e6, 0.02, 2.0e9, 0.06),
    "densenet121": (7.98e6, 0.015, 2.87e9, 0.03),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_light_zoo_matches_published_counts(name):
    params, params_tol, macs, macs_tol = PUBLISHED[name]
    analysis = analyze(open_model(light_model(name)))
    assert analysis.totals.params == pytest.approx(params, rel=params_tol)
    assert analysis.totals.macs == pytest.approx(macs, rel=macs_tol)
    assert not analysis.totals.unknown_cost_nodes


@pytest.mark.parametrize("path", LIGHT_ZOO, ids=lambda p: p.stem)
def test_light_zoo_weights_come_from_folded_constants(path):
    analysis = analyze(open_model(path))
    constant_ops = {analysis.nodes[i].op_type for i in analysis.order if analysis.nodes[i].is_constant}
    # the weight generators fold, and so does what only reshapes them (Unsqueeze, Reshape of a weight)
    assert "ConstantOfShape" in constant_ops and constant_ops <= {"ConstantOfShape", "Unsqueeze", "Reshape"}
    assert analysis.totals.params > 1e6
    # every tensor has a static shape once constants are folded
    graph = analysis.graph
    for node in graph.nodes:
        for name in node.outputs:
            t = graph.value_type(name)
            consumed = any(name in n.inputs for n in graph.nodes) or name in graph.outputs
            if consumed:
                assert t is not None and t.is_static, (node.id, name)


def _model(nodes, inputs, outputs, initializers=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _analyse_proto(proto, tmp_path, name="m.onnx"):
    path = tmp_path / name
    onnx.save(proto, path)
    return analyze(open_model(path))


def _weight(name, shape):
    return numpy_helper.from_array(np.zeros(shape, np.float32), name)


def test_conv_macs_grouped_depthwise_and_dilated(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 56, 56])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [
        helper.make_node("Conv", ["x", "w_full", "b_full"], ["a"], name="full", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["a", "w_group"], ["b"], name="grouped", kernel_shape=[3, 3], pads=[1] * 4, group=4),
        helper.make_node("Conv", ["b", "w_dw"], ["c"], name="depthwise", kernel_shape=[3, 3], pads=[1] * 4,
                         group=64, strides=[2, 2]),
        helper.make_node("Conv", ["c", "w_dil"], ["y"], name="dilated", kernel_shape=[3, 3], dilations=[2, 2]),
    ]
    inits = [_weight("w_full", [64, 32, 3, 3]), _weight("b_full", [64]), _weight("w_group", [64, 16, 3, 3]),
             _weight("w_dw", [64, 1, 3, 3]), _weight("w_dil", [16, 64, 3, 3])]
    a = _analyse_proto(_model(nodes, [x], [y], inits), tmp_path)
    assert a.nodes["full"].macs == 56 * 56 * 64 * 32 * 9
    assert a.nodes["full"].params == 64 * 32 * 9 + 64
    assert a.nodes["grouped"].macs == 56 * 56 * 64 * 16 * 9
    assert a.nodes["depthwise"].macs == 28 * 28 * 64 * 9
    assert a.nodes["dilated"].macs == 24 * 24 * 16 * 64 * 9  # 28 - 2*(3-1) = 24
    assert a.nodes["full"].flops == 2 * a.nodes["full"].macs
    assert a.totals.params == sum(int(np.prod(t.dims)) for t in inits)


def test_convtranspose_gemm_matmul_macs(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 10, 10])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, None)
    nodes = [
        helper.make_node("ConvTranspose", ["x", "wt"], ["up"], name="up", kernel_shape=[4, 4], strides=[2, 2],
                         pads=[1, 1, 1, 1], output_padding=[0, 0]),
        helper.make_node("Flatten", ["up"], ["flat"], name="flat"),
        helper.make_node("Gemm", ["flat", "wg", "bg"], ["y"], name="fc", transB=1),
        helper.make_node("MatMul", ["y", "wm"], ["z"], name="mm"),
    ]
    inits = [_weight("wt", [16, 8, 4, 4]), _weight("wg", [10, 8 * 20 * 20]), _weight("bg", [10]),
             _weight("wm", [10, 5])]
    a = _analyse_proto(_model(nodes, [x], [y, z], inits), tmp_path)
    assert a.nodes["up"].macs == 16 * 10 * 10 * 8 * 16  # every input pixel scatters a Cout x k x k patch
    assert a.nodes["fc"].macs == 10 * 3200
    assert a.nodes["mm"].macs == 5 * 10
    assert a.nodes["flat"].flops == 0 and a.nodes["flat"].cost_known


def test_batchnorm_statistics_are_buffers_and_elementwise_flops(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["n"], name="bn"),
             helper.make_node("Relu", ["n"], ["r"], name="relu"),
             helper.make_node("Sigmoid", ["r"], ["y"], name="sig")]
    inits = [_weight(n, [8]) for n in "sbmv"]
    a = _analyse_proto(_model(nodes, [x], [y], inits), tmp_path)
    assert a.nodes["bn"].params == 16 and a.nodes["bn"].buffers == 16
    assert a.totals.params == 16 and a.totals.buffers == 16
    assert a.totals.weight_bytes == 32 * 4
    assert a.nodes["relu"].flops == 128 and a.nodes["sig"].flops == 4 * 128
    assert a.nodes["relu"].output_bytes == 128 * 4
    assert a.nodes["relu"].arithmetic_intensity == pytest.approx(128 / (2 * 128 * 4))


def test_peak_activation_memory_follows_lifetimes(tmp_path):
    # x(400 B) -> a(800) -> b(400); a and x are both read by `add`, so they live together.
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [100])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    shape = numpy_helper.from_array(np.array([200], np.int64), "shape")
    nodes = [helper.make_node("Concat", ["x", "x"], ["a"], name="cat", axis=0),
             helper.make_node("Slice", ["a", "st", "en"], ["b"], name="slice"),
             helper.make_node("Add", ["b", "x"], ["c"], name="add"),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    inits = [shape, numpy_helper.from_array(np.array([0], np.int64), "st"),
             numpy_helper.from_array(np.array([100], np.int64), "en")]
    a = _analyse_proto(_model(nodes, [x], [y], inits), tmp_path)
    # at `slice`: x (400) + a (800) + b (400) live
    assert a.totals.peak_activation_bytes == 1600
    assert a.totals.peak_node_id == "slice"
    assert a.totals.params == 0  # int64 arguments are not parameters


def test_unknown_op_is_kept_with_unknown_cost(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="relu"),
             helper.make_node("FancyOp", ["a"], ["y"], name="fancy", domain="com.example")]
    proto = helper.make_model(helper.make_graph(nodes, "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    a = _analyse_proto(proto, tmp_path)
    assert a.nodes["fancy"].macs is None and not a.nodes["fancy"].cost_known
    assert a.totals.unknown_cost_nodes == ("fancy",)
    assert any("FancyOp" in w for w in a.model.warnings)
    assert a.nodes["relu"].flops == 4


# ---------------------------------------------------------------------------- MobileUNet


def _sample_analysis(tmp_path, alpha, size):
    return _analyse_proto(mobileunet(alpha=alpha, size=size), tmp_path, f"mu_{alpha}_{size}.onnx")


@pytest.mark.parametrize("alpha,size", [(0.25, 96), (0.5, 160), (1.0, 128)])
def test_mobileunet_stages(tmp_path, alpha, size):
    a = _sample_analysis(tmp_path, alpha, size)
    kinds = [s.kind for s in a.stages]
    assert kinds == ["encoder", "bottleneck", "decoder", "head"]
    stage_by_id = {node_id: s.kind for s in a.stages for node_id in s.node_ids}
    ops = {n.id: n.op_type for n in a.graph.nodes}
    conv_transposes = [i for i, op in ops.items() if op == "ConvTranspose"]
    assert conv_transposes and all(stage_by_id[i] == "decoder" for i in conv_transposes)
    assert all(stage_by_id[i] == "encoder" for i in ops if i.startswith("/encoder/block1/"))
    assert stage_by_id["/head/conv/Conv"] == "head"
    assert sum(len(s.node_ids) for s in a.stages) == len(a.graph.nodes)
    assert sum(s.macs for s in a.stages) == a.totals.macs
    # namespaces come from the module scopes in the node names
    assert a.graph.node("/decoder/up2/ConvTranspose").namespace == "decoder/up2"


def test_mobileunet_macs_scale_with_size_and_alpha(tmp_path):
    base = _sample_analysis(tmp_path, 0.5, 128).totals.macs
    doubled_size = _sample_analysis(tmp_path, 0.5, 256).totals.macs
    doubled_alpha = _sample_analysis(tmp_path, 1.0, 128).totals.macs
    assert doubled_size == 4 * base  # MACs are proportional to H x W
    # pointwise layers dominate and scale with alpha^2; depthwise ones with alpha
    assert 3.0 < doubled_alpha / base < 4.0
    params_half = _sample_analysis(tmp_path, 0.5, 128).totals.params
    params_full = _sample_analysis(tmp_path, 1.0, 256).totals.params
    assert 3.0 < params_full / params_half < 4.2  # params do not depend on size


def test_classifier_has_encoder_and_head_only():
    a = analyze(open_model(light_model("resnet50")))
    assert [s.kind for s in a.stages] == ["encoder", "head"]
    head = next(s for s in a.stages if s.kind == "head")
    head_ops = {a.nodes[i].op_type for i in head.node_ids}
    assert {"Gemm", "Softmax"} <= head_ops and "Conv" not in head_ops


def test_core_ml_program_costs_use_the_same_formulas(tmp_path):
    ct = pytest.importorskip("coremltools")
    from coremltools.converters.mil import Builder as mb

    weight = np.random.default_rng(0).random((16, 3, 3, 3)).astype(np.float32)
    linear = np.random.default_rng(1).random((10, 16 * 30 * 30)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 3, 32, 32))], opset_version=ct.target.iOS15)
    def program(x):
        conv = mb.conv(x=x, weight=weight, pad_type="valid", name="conv")
        norm = mb.batch_norm(x=mb.relu(x=conv, name="relu"), mean=np.zeros(16, np.float32),
                             variance=np.ones(16, np.float32), gamma=np.ones(16, np.float32),
                             beta=np.zeros(16, np.float32), name="bn")
        return mb.linear(x=mb.reshape(x=norm, shape=[1, 16 * 30 * 30], name="flat"), weight=linear, name="fc")

    path = tmp_path / "program.mlpackage"
    ct.convert(program, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS15).save(str(path))
    a = analyze(open_model(path))
    assert a.totals.macs == 30 * 30 * 16 * 27 + 10 * 16 * 900
    # conv weight + BN gamma/beta + linear weight and its (zero) bias; mean/variance are buffers
    assert a.totals.params == weight.size + 32 + linear.size + 10
    assert a.totals.buffers == 32
