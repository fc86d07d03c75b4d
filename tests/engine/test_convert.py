"""ONNX -> Core ML conversion: real models, real packages on disk, re-opened by our importer.

Core ML prediction needs macOS, so Core ML's own outputs are compared only there (the
`coreml` check says "not run: needs macOS" elsewhere, which is asserted below).  The
`weights` and `values` checks (the package's weights against the source's, the program run
on the MIL reference evaluator against ONNX Runtime) run everywhere, as do: every tensor's MIL shape/dtype against ONNX shape inference, the saved
package re-imported through importers.coreml, compute layers and parameter totals
against engine.analysis of the source, and layer-map coverage.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import LIGHT_ZOO, PYTORCH_CONVERTED, light_model
from engine.analysis import analyze
from engine.convert import (ConversionError, FlexibleShape, ImageInput, LAYER_MAP_SCHEMA, LayerMapError,
                            check_convertible, convert, load_layer_map, parse_shape_options, sum_to_source,
                            unattributed_total)
from engine.samples import default_sample_path, mobileunet
from importers import open_model

ON_MAC = sys.platform == "darwin"


# ----------------------------------------------------------------------------- helpers

def assert_verified(result, values_run: bool = True):
    failed = {k: v["detail"] for k, v in result.verification.items() if v["status"] == "failed"}
    assert not failed, failed
    assert result.verified
    expected = {"shapes", "reimport", "compute_layers", "parameters", "weight_bytes", "layer_map", "weights",
                "values", "coreml"}
    assert set(result.verification) == expected
    if values_run:  # the value checks ran and passed: not run is not a pass
        assert result.verification["values"]["status"] == "passed", result.verification["values"]["detail"]
        if result.layer_map["options"]["optimize"] == "exact":
            assert result.verification["weights"]["status"] == "passed", result.verification["weights"]["detail"]
    if not ON_MAC:
        assert result.verification["coreml"]["status"] == "not run"
        assert result.outcomes()["coreml"].startswith("not run: needs macOS")


def assert_layer_map_covers_source(source_path, result, input_shapes=None):
    """Every compute node of the source (non-constant, not removed) has MIL ops in the map."""
    layer_map = load_layer_map(result.layer_map_path)
    assert layer_map["schema"] == LAYER_MAP_SCHEMA
    analysis = analyze(open_model(source_path, input_shapes=input_shapes))
    compute = [m.node_id for m in analysis.compute_nodes()]
    folded = [node_id for node_id in analysis.order if analysis.nodes[node_id].is_constant]
    assert sorted(layer_map["folded"]) == sorted(folded)
    removed = set(layer_map["removed"])
    assert removed <= {n for n in compute if analysis.graph.node(n).op_type in ("Dropout", "Identity")} | \
        set(layer_map["removed_reasons"])
    for node_id in compute:
        if node_id not in removed and node_id not in layer_map["fused"]:
            assert layer_map["nodes"].get(node_id), node_id
    # and the names are those of the saved program, as our importer shows it
    package = open_model(result.package_path)
    names = {n.name for n in package.main_graph.nodes}
    assert {name for ops in layer_map["nodes"].values() for name in ops} <= names
    return layer_map, package


def weight_bytes(package_path) -> int:
    return analyze(open_model(package_path)).totals.weight_bytes


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


# ----------------------------------------------------------------------------- real models

@pytest.mark.parametrize("path", LIGHT_ZOO, ids=lambda p: p.stem.replace("light_", ""))
def test_light_zoo_converts_and_verifies(path, tmp_path):
    # Value checks of the zoo: test_light_zoo_values below (a few models; they take seconds each).
    out = tmp_path / f"{path.stem}.mlpackage"
    result = convert(path, out, value_checks=False)
    assert_verified(result, values_run=False)
    assert result.outcomes()["values"] == "not run: value checks turned off (--no-value-checks)"
    assert out.is_dir() and (out / "Manifest.json").is_file()
    assert result.layer_map_path == tmp_path / f"{path.stem}.layermap.json"
    layer_map, package = assert_layer_map_covers_source(path, result)
    source_totals = analyze(open_model(path)).totals
    package_totals = analyze(package).totals
    # parameter totals, as engine.analysis counts them on both sides (BatchNorm statistics
    # are buffers in ONNX; MIL's batch_norm lists them in another order, so compare the sum)
    assert package_totals.params + package_totals.buffers == source_totals.params + source_totals.buffers
    assert package_totals.weight_bytes * 2 == source_totals.weight_bytes  # fp16 by default
    assert package.metadata["com.layerscope.layermap"] == result.layer_map_path.name
    dropouts = [n.id for n in open_model(path).main_graph.nodes if n.op_type == "Dropout"]
    assert layer_map["removed"] == dropouts
    shutil.rmtree(out)  # VGG-19 alone is 287 MB


@pytest.mark.parametrize("name, precision", [("inception_v1", "fp32"), ("shufflenet", "fp16"),
                                             ("inception_v2", "fp16")])
def test_light_zoo_values(name, precision, tmp_path):
    """Weights read back from the package equal the source's; the program on the MIL reference
    evaluator matches ONNX Runtime, outputs and every mapped intermediate.  (SqueezeNet in fp32
    agrees to 5e-6 up to its logits, which the generated weights make ~7e9: the final Softmax
    of such logits turns float32 rounding differences into different outputs, and the check
    says so at n65 -- a property of the test model, so it is not one of these.)"""
    result = convert(light_model(name), tmp_path / "m.mlpackage", precision=precision)
    assert_verified(result)
    values = result.verification["values"]
    assert values["compared_tensors"] == len(result.layer_map["tensors"]) > 50
    assert all(layer["max_rel_error"] <= values["tolerance"] for layer in values["layers"])
    assert result.verification["weights"]["compared"] > 0


def test_fp16_overflow_is_named_as_such(tmp_path):
    """The light zoo's generated weights (all 0.02) make SqueezeNet's activations exceed fp16's
    range: the fp16 program overflows where ONNX Runtime (fp32) does not, which is a finding
    about the model's precision, reported with the layer and a remedy."""
    result = convert(light_model("squeezenet"), tmp_path / "m.mlpackage", precision="fp16")
    values = result.verification["values"]
    assert result.failed_checks == ["values"]
    assert values["fp16_overflow"] == values["first_departure"]["node"]
    assert "beyond fp16's largest 65504: this fp16 program overflows; --precision fp32 avoids it" in values["detail"]


SAMPLE_VARIANTS = {
    "shipped": None,
    "alpha1_224": dict(alpha=1.0, size=224),
    "folded_bn_160x224_3cls": dict(alpha=0.5, size=(160, 224), num_classes=3, fold_batchnorm=True),
}


@pytest.mark.parametrize("variant", sorted(SAMPLE_VARIANTS))
def test_mobileunet_samples_convert_fp16_and_fp32(variant, tmp_path):
    params = SAMPLE_VARIANTS[variant]
    source = default_sample_path() if params is None else save(mobileunet(**params), tmp_path / "m.onnx")
    fp16 = convert(source, tmp_path / "m16.mlpackage", precision="fp16")
    fp32 = convert(source, tmp_path / "m32.mlpackage", precision="fp32")
    for result in (fp16, fp32):
        assert_verified(result)
        assert_layer_map_covers_source(source, result)
    # fp16 halves the weight bytes, exactly
    assert weight_bytes(fp16.package_path) * 2 == weight_bytes(fp32.package_path)
    assert weight_bytes(fp32.package_path) == analyze(open_model(source)).totals.weight_bytes
    graph = open_model(fp16.package_path).main_graph
    weight_dtypes = {v.type.dtype for v in graph.values.values() if v.is_constant and v.type.rank}
    assert "float32" not in weight_dtypes
    ops = {n.op_type for n in graph.nodes}
    assert {"conv", "relu6", "sigmoid", "concat"} <= ops
    assert ("conv_transpose" in ops) and ("batch_norm" in ops) == (variant != "folded_bn_160x224_3cls")
    # I/O keeps the ONNX names and stays fp32; the fp16 casts belong to no source node
    assert fp16.layer_map["inputs"] == {"image": "image"} and fp16.layer_map["outputs"] == {"mask": "mask"}
    assert all(fp16.layer_map["mil_ops"][name]["type"] == "cast" for name in fp16.layer_map["unattributed"])
    assert fp32.layer_map["unattributed"] == []


def test_mobileunet_layer_map_names_follow_node_ids(tmp_path):
    result = convert(default_sample_path(), tmp_path / "m.mlpackage")
    nodes = result.layer_map["nodes"]
    assert nodes["/encoder/block3/dw/Conv"] == ["encoder_block3_dw_Conv"]
    # coremltools renames an op it rewrites; the map holds the name in the saved program
    [up1] = nodes["/decoder/up1/ConvTranspose"]
    assert up1.startswith("decoder_up1_ConvTranspose")
    assert result.layer_map["mil_ops"]["encoder_block3_dw_Conv"] == {
        "type": "conv", "outputs": ["encoder_block3_dw_Conv"], "source": "/encoder/block3/dw/Conv"}


# ----------------------------------------------------------------------------- layer map use

def test_sum_to_source_lands_per_op_values_on_onnx_nodes(tmp_path):
    source = save(_single_op_model("Gemm", dict(transA=1, alpha=0.5, beta=2.0), x_shape=(5, 2),
                                   inits=[_w("w", 5, 3), _w("c", 2, 3)], extra_inputs=["w", "c"]),
                  tmp_path / "gemm.onnx")
    result = convert(source, tmp_path / "gemm.mlpackage", precision="fp16")
    layer_map = load_layer_map(tmp_path / "gemm.mlpackage")  # the package path finds its map
    assert layer_map == json.loads(result.layer_map_path.read_text())
    ops = layer_map["nodes"]["the_gemm"]
    assert len(ops) == 2  # matmul (alpha folded into the weight) + add of beta * C
    per_op = {name: 1.5 for name in ops}
    per_op[layer_map["unattributed"][0]] = 0.25  # an input cast: no source node
    per_op["not_an_op"] = 9.0
    assert sum_to_source(layer_map, per_op) == {"the_gemm": 3.0}
    assert unattributed_total(layer_map, per_op) == pytest.approx(9.25)
    # the compute plan keys operations by output name: those land as well
    by_output = {layer_map["mil_ops"][name]["outputs"][0]: 2.0 for name in ops}
    assert sum_to_source(layer_map, by_output) == {"the_gemm": 4.0}


def test_load_layer_map_errors_say_what_is_wrong(tmp_path):
    with pytest.raises(LayerMapError, match="no layer map here"):
        load_layer_map(tmp_path / "missing.mlpackage")
    bad = tmp_path / "x.layermap.json"
    bad.write_text(json.dumps({"schema": "something/9"}))
    with pytest.raises(LayerMapError, match="something/9"):
        load_layer_map(bad)


def test_optimize_default_records_fused_nodes(tmp_path):
    source = default_sample_path()
    result = convert(source, tmp_path / "opt.mlpackage", optimize="default")
    assert_verified(result)
    layer_map, package = assert_layer_map_covers_source(source, result)
    fused = layer_map["fused"]
    # coremltools folds every BatchNorm into its convolution; the conv owns the fused op
    bn = [n.id for n in open_model(source).main_graph.nodes if n.op_type == "BatchNormalization"]
    assert set(bn) <= set(fused)
    assert fused["/encoder/stem/bn/BatchNormalization"] == "/encoder/stem/conv/Conv"
    assert layer_map["mil_ops"][layer_map["nodes"]["/encoder/stem/conv/Conv"][0]]["type"] == "conv"
    assert "batch_norm" not in {n.op_type for n in package.main_graph.nodes}
    assert result.verification["parameters"]["status"] == "not run"


# ----------------------------------------------------------------------------- options

def test_image_input_with_scale_and_bias(tmp_path):
    result = convert(default_sample_path(), tmp_path / "cam.mlpackage",
                     image_inputs={"image": ImageInput(scale=1 / 127.5, bias=(-1.0, -1.0, -1.0))})
    assert_verified(result)  # parameters compare without the preprocessing constants
    from coremltools.proto import Model_pb2
    spec = Model_pb2.Model()
    spec.ParseFromString((tmp_path / "cam.mlpackage" / "Data" / "com.apple.CoreML" / "model.mlmodel").read_bytes())
    feature = spec.description.input[0]
    assert feature.name == "image" and feature.type.WhichOneof("Type") == "imageType"
    assert (feature.type.imageType.width, feature.type.imageType.height) == (160, 160)
    assert {"image__scaled__", "image__biased__"} <= set(result.layer_map["unattributed"])
    assert result.layer_map["options"]["image_inputs"]["image"]["bias"] == [-1.0, -1.0, -1.0]


@pytest.mark.parametrize("target, opset", [("iOS15", "CoreML5"), ("iOS17", "CoreML7"), ("iOS18", "CoreML8"),
                                           ("macOS13", "CoreML6")])
def test_deployment_targets(target, opset, tmp_path):
    result = convert(default_sample_path(), tmp_path / "t.mlpackage", target=target)
    assert_verified(result)
    assert open_model(result.package_path).metadata["opset"] == opset


def test_bad_options_write_nothing(tmp_path):
    not_a_package = tmp_path / "keep.mlpackage"
    not_a_package.mkdir()
    (not_a_package / "precious.txt").write_text("mine")
    with pytest.raises(ConversionError) as error:
        convert(default_sample_path(), not_a_package, precision="fp8", target="iOS12")
    reasons = " ".join(b.reason for b in error.value.blockers)
    assert "fp8" in reasons and "iOS12" not in reasons  # options are checked together, target after
    assert "refusing to replace" in reasons
    assert (not_a_package / "precious.txt").read_text() == "mine"
    with pytest.raises(ConversionError, match="iOS12"):
        convert(default_sample_path(), tmp_path / "x.mlpackage", target="iOS12")
    with pytest.raises(ConversionError, match="image"):
        convert(default_sample_path(), tmp_path / "x.mlpackage", image_inputs={"pixels": ImageInput()})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.mlpackage"]


def test_free_dimensions_need_shapes(tmp_path):
    model = mobileunet(alpha=0.25, size=64)
    for dim, name in ((model.graph.input[0].type.tensor_type.shape.dim[2], "height"),
                      (model.graph.input[0].type.tensor_type.shape.dim[3], "width")):
        dim.Clear()
        dim.dim_param = name
    for value_info in list(model.graph.value_info) + list(model.graph.output):
        value_info.type.tensor_type.ClearField("shape")
    source = save(model, tmp_path / "free.onnx")
    blockers = check_convertible(source)
    assert [(b.node_id, b.op_type) for b in blockers][:1] == [("image", "(input)")]
    assert "--shape image=" in blockers[0].reason
    result = convert(source, tmp_path / "free.mlpackage", input_shapes={"image": [1, 3, 96, 128]})
    assert_verified(result)
    assert open_model(result.package_path).main_graph.value_type("mask").shape == (1, 1, 96, 128)


def test_other_fixed_shape_than_the_file_was_exported_at(tmp_path):
    # The sample stores its 160x160 intermediate shapes (as exporters do); a new input shape
    # must not meet those stale shapes.
    result = convert(default_sample_path(), tmp_path / "m224.mlpackage", input_shapes={"image": [1, 3, 224, 192]})
    assert_verified(result)
    graph = open_model(result.package_path).main_graph
    assert graph.value_type("mask").shape == (1, 1, 224, 192)


def test_enumerated_input_shapes(tmp_path):
    shapes = [(1, 3, 160, 160), (1, 3, 224, 224), (1, 3, 320, 256)]
    result = convert(default_sample_path(), tmp_path / "enum.mlpackage",
                     flexible_shapes={"image": FlexibleShape.enumerated(shapes)})
    assert_verified(result)
    assert "programs built at 3 input shapes" in result.verification["shapes"]["detail"]
    from coremltools.proto import Model_pb2
    spec = Model_pb2.Model()
    spec.ParseFromString((tmp_path / "enum.mlpackage" / "Data" / "com.apple.CoreML" / "model.mlmodel").read_bytes())
    array = spec.description.input[0].type.multiArrayType
    assert [tuple(s.shape) for s in array.enumeratedShapes.shapes] == shapes
    assert result.layer_map["options"]["flexible_shapes"]["image"]["default"] == [1, 3, 160, 160]


def _flexible_model() -> onnx.ModelProto:
    """SAME conv, ceil-mode pool, linear and nearest Resize by scales, ConvTranspose, Concat."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="conv_same", auto_pad="SAME_UPPER", strides=[2, 2]),
        helper.make_node("MaxPool", ["a"], ["b"], name="pool_ceil", kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
        helper.make_node("Resize", ["b", "", "s2"], ["c"], name="up_linear", mode="linear"),
        helper.make_node("Resize", ["c", "", "s2"], ["d"], name="up_nearest", mode="nearest"),
        helper.make_node("ConvTranspose", ["a", "w2"], ["e"], name="deconv", strides=[2, 2], pads=[1, 1, 1, 1],
                         output_padding=[1, 1]),
        helper.make_node("Concat", ["d", "e"], ["f"], name="cat", axis=1),
        helper.make_node("Softmax", ["f"], ["y"], name="softmax", axis=1),
    ]
    graph = helper.make_graph(nodes, "flex", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "h", "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [_w("w1", 8, 3, 3, 3), _w("w2", 8, 4, 3, 3), _f32("s2", [1, 1, 2, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_ranged_input_shapes_through_the_cli(tmp_path):
    source = save(_flexible_model(), tmp_path / "flex.onnx")
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    out = tmp_path / "flex.mlpackage"
    done = subprocess.run([sys.executable, "-m", "engine", "convert", str(source), "-o", str(out), "-q",
                           "--shape", "x=1x3x64:256x64:256"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "programs built at 2 input shapes" in done.stdout
    layer_map = load_layer_map(out)
    assert layer_map["options"]["flexible_shapes"]["x"] == {"ranges": [[1, 1], [3, 3], [64, 256], [64, 256]],
                                                           "default": [1, 3, 64, 64]}
    assert set(layer_map["nodes"]) == {"conv_same", "pool_ceil", "up_linear", "up_nearest", "deconv", "cat", "softmax"}
    types = {layer_map["mil_ops"][ops[0]]["type"] for ops in layer_map["nodes"].values()}
    assert {"upsample_bilinear", "upsample_nearest_neighbor", "conv_transpose"} <= types
    from coremltools.proto import Model_pb2
    spec = Model_pb2.Model()
    spec.ParseFromString((out / "Data" / "com.apple.CoreML" / "model.mlmodel").read_bytes())
    ranges = spec.description.input[0].type.multiArrayType.shapeRange.sizeRanges
    assert [(r.lowerBound, r.upperBound) for r in ranges] == [(1, 1), (3, 3), (64, 256), (64, 256)]


def test_flexible_shapes_report_what_needs_fixed_sizes():
    [blocker] = check_convertible(LIGHT_ZOO[[p.stem for p in LIGHT_ZOO].index("light_resnet50")],
                                  flexible_shapes={"gpu_0/data_0": FlexibleShape.enumerated(
                                      [(1, 3, 224, 224), (1, 3, 256, 256)])})
    assert blocker.op_type == "Reshape" and "flexible axes [2, 3]" in blocker.reason
    assert "0 < lower <= upper" in check_convertible(default_sample_path(), flexible_shapes={
        "image": FlexibleShape.ranged([1, 3, (0, 64), 64])})[0].reason


def test_parse_shape_options():
    fixed, flexible = parse_shape_options(["a=1x3x224x224", "b=1x3x64x64", "b=1x3x128x96", "c=1x3x32:512x64"])
    assert fixed == {"a": [1, 3, 224, 224]}
    assert flexible["b"] == FlexibleShape.enumerated([(1, 3, 64, 64), (1, 3, 128, 96)])
    assert flexible["c"].ranges == ((1, 1), (3, 3), (32, 512), (64, 64))
    with pytest.raises(ValueError, match="NAME=DIMS"):
        parse_shape_options(["a=1x0"])


# ----------------------------------------------------------------------------- unsupported input

def _unsupported_model() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("GridSample", ["c", "grid"], ["g"], name="warp"),
             helper.make_node("Relu", ["g"], ["r"], name="relu"),
             helper.make_node("Det", ["r"], ["y"], name="pick")]
    inits = [numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w"),
             numpy_helper.from_array(np.zeros((1, 8, 8, 2), np.float32), "grid")]
    graph = helper.make_graph(nodes, "bad", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_unsupported_ops_are_all_listed_and_nothing_is_written(tmp_path):
    source = save(_unsupported_model(), tmp_path / "bad.onnx")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(ConversionError) as error:
        convert(source, out_dir / "bad.mlpackage")
    blockers = error.value.blockers
    assert [(b.node_id, b.op_type) for b in blockers] == [("warp", "GridSample"), ("pick", "Det")]
    assert "2 unsupported nodes" in str(error.value) and "warp (GridSample)" in str(error.value)
    assert list(out_dir.iterdir()) == []
    assert check_convertible(source) == blockers


def test_unsupported_attributes_are_listed_with_the_reason(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])
    nodes = [helper.make_node("Resize", ["x", "", "scales"], ["a"], name="cubic", mode="cubic"),
             helper.make_node("MaxPool", ["a"], ["b"], name="column_major", kernel_shape=[3, 3], storage_order=1),
             helper.make_node("Pad", ["b", "pads"], ["y"], name="wrap", mode="wrap")]
    inits = [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
             numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads")]
    graph = helper.make_graph(nodes, "attrs", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              inits)
    source = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]), tmp_path / "a.onnx")
    blockers = check_convertible(source)
    assert [b.node_id for b in blockers] == ["cubic", "column_major", "wrap"]
    assert "cubic" in blockers[0].reason and "storage_order" in blockers[1].reason and "wrap" in blockers[2].reason


def test_cli_convert_and_unsupported(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    out = tmp_path / "cli.mlpackage"
    done = subprocess.run([sys.executable, "-m", "engine", "convert", str(default_sample_path()), "-o", str(out),
                           "--precision", "fp32", "--target", "iOS17"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "built 92/92 ONNX nodes" in done.stderr  # progress lines
    assert f"wrote {out}" in done.stdout and "cli.layermap.json" in done.stdout
    for check in ("shapes", "reimport", "compute_layers", "parameters", "weight_bytes", "layer_map"):
        assert any(line.split()[:2] == [check, "passed"] for line in done.stdout.splitlines()), check
    assert "coreml" in done.stdout and ("needs macOS" in done.stdout or ON_MAC)
    assert "Failed to load" not in done.stderr
    bad = save(_unsupported_model(), tmp_path / "bad.onnx")
    failed = subprocess.run([sys.executable, "-m", "engine", "convert", str(bad), "-o", str(tmp_path / "b.mlpackage"),
                             "-q"], capture_output=True, text=True, env=env, timeout=120)
    assert failed.returncode == 2
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("layerscope: ") and "warp (GridSample)" in lines[0] \
        and "pick (Det)" in lines[0]
    assert not (tmp_path / "b.mlpackage").exists()


# ----------------------------------------------------------------------------- op coverage

RNG = np.random.default_rng(0)


def _w(name, *shape):
    return numpy_helper.from_array(RNG.standard_normal(shape).astype(np.float32), name)


def _i64(name, values):
    return numpy_helper.from_array(np.asarray(values, dtype=np.int64), name)


def _f32(name, values):
    return numpy_helper.from_array(np.asarray(values, dtype=np.float32), name)


def _single_op_model(op, attrs=None, x_shape=(1, 4, 8, 8), inits=(), extra_inputs=(), opset=17, n_outputs=1,
                     second_input=None):
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))]
    names = ["x"]
    if second_input is not None:
        inputs.append(helper.make_tensor_value_info("x2", TensorProto.FLOAT, list(second_input)))
        names.append("x2")
    names += list(extra_inputs)
    outputs = [f"y{i}" for i in range(n_outputs)]
    node = helper.make_node(op, names, outputs, name=f"the_{op.lower()}", **(attrs or {}))
    graph = helper.make_graph([node], op, inputs,
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
                              list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def _op_cases() -> dict:
    m = _single_op_model
    c = {
        "conv_asymmetric_pads_strided": m("Conv", dict(pads=[1, 2, 0, 1], strides=[2, 1]),
                                          inits=[_w("w", 6, 4, 3, 3), _w("b", 6)], extra_inputs=["w", "b"]),
        "conv_grouped_dilated": m("Conv", dict(group=2, dilations=[2, 2], pads=[2, 2, 2, 2]),
                                  inits=[_w("w", 6, 2, 3, 3)], extra_inputs=["w"]),
        "conv_depthwise_same_upper": m("Conv", dict(group=4, auto_pad="SAME_UPPER", strides=[2, 2]),
                                       x_shape=(1, 4, 9, 9), inits=[_w("w", 4, 1, 4, 4)], extra_inputs=["w"]),
        "conv_same_lower": m("Conv", dict(auto_pad="SAME_LOWER", strides=[2, 2]), x_shape=(1, 4, 9, 9),
                             inits=[_w("w", 4, 4, 2, 2)], extra_inputs=["w"]),
        "conv_1d_valid": m("Conv", dict(auto_pad="VALID"), x_shape=(1, 4, 10), inits=[_w("w", 3, 4, 3)],
                           extra_inputs=["w"]),
        "convtranspose_pads": m("ConvTranspose", dict(strides=[2, 2], pads=[1, 1, 1, 1]),
                                inits=[_w("w", 4, 3, 4, 4), _w("b", 3)], extra_inputs=["w", "b"]),
        "convtranspose_output_padding": m("ConvTranspose", dict(strides=[2, 2], pads=[1, 1, 1, 1],
                                                                output_padding=[1, 1]),
                                          inits=[_w("w", 4, 3, 3, 3), _w("b", 3)], extra_inputs=["w", "b"]),
        "convtranspose_output_padding_past_pads": m("ConvTranspose", dict(strides=[2, 2], output_padding=[1, 0]),
                                                    inits=[_w("w", 4, 3, 3, 3), _w("b", 3)],
                                                    extra_inputs=["w", "b"]),
        "convtranspose_output_shape": m("ConvTranspose", dict(strides=[2, 2], output_shape=[15, 16]),
                                        inits=[_w("w", 4, 2, 3, 3)], extra_inputs=["w"]),
        "convtranspose_grouped_same_upper": m("ConvTranspose", dict(strides=[2, 2], group=2, auto_pad="SAME_UPPER"),
                                              inits=[_w("w", 4, 3, 3, 3)], extra_inputs=["w"]),
        "batchnorm": m("BatchNormalization", dict(epsilon=1e-3),
                       inits=[_w("s", 4), _w("b", 4), _w("m", 4), _f32("v", np.ones(4))],
                       extra_inputs=["s", "b", "m", "v"]),
        "batchnorm_rank2": m("BatchNormalization", x_shape=(2, 4),
                             inits=[_w("s", 4), _w("b", 4), _w("m", 4), _f32("v", np.ones(4))],
                             extra_inputs=["s", "b", "m", "v"]),
        "clip_relu6_inputs": m("Clip", inits=[_f32("lo", 0.0), _f32("hi", 6.0)], extra_inputs=["lo", "hi"]),
        "clip_range": m("Clip", inits=[_f32("lo", -1.0), _f32("hi", 2.0)], extra_inputs=["lo", "hi"]),
        "clip_min_only": m("Clip", inits=[_f32("lo", -1.0)], extra_inputs=["lo"]),
        "clip_opset6_attributes": m("Clip", dict(min=0.0, max=6.0), opset=6),
        "leakyrelu": m("LeakyRelu", dict(alpha=0.1)),
        "hardsigmoid": m("HardSigmoid", dict(alpha=0.3, beta=0.4)),
        "elu": m("Elu", dict(alpha=0.7)),
        "gelu_tanh_opset20": m("Gelu", dict(approximate="tanh"), opset=20),
        "gelu_exact_opset20": m("Gelu", opset=20),
        "prelu_per_channel": m("PRelu", inits=[_w("s", 4, 1, 1)], extra_inputs=["s"]),
        "prelu_one_slope": m("PRelu", inits=[_f32("s", [0.25])], extra_inputs=["s"]),
        "prelu_broadcast_last_axis": m("PRelu", inits=[_w("s", 8)], extra_inputs=["s"]),
        "maxpool_ceil": m("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1), x_shape=(1, 4, 10, 10)),
        "maxpool_ceil_asymmetric_pads": m("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1,
                                                          pads=[0, 0, 1, 1]), x_shape=(1, 4, 9, 9)),
        "maxpool_same_upper": m("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
                                x_shape=(1, 4, 9, 9)),
        "avgpool_count_include_pad": m("AveragePool", dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                                                           count_include_pad=1)),
        "avgpool_ceil_exclude_pad": m("AveragePool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                                                          ceil_mode=1), x_shape=(1, 4, 10, 10)),
        "globalaveragepool": m("GlobalAveragePool"),
        "globalmaxpool": m("GlobalMaxPool"),
        "gemm_transb_bias": m("Gemm", dict(transB=1), x_shape=(2, 5), inits=[_w("w", 3, 5), _w("c", 3)],
                              extra_inputs=["w", "c"]),
        "gemm_transa_alpha_beta_matrix_c": m("Gemm", dict(transA=1, alpha=0.5, beta=2.0), x_shape=(5, 2),
                                             inits=[_w("w", 5, 3), _w("c", 2, 3)], extra_inputs=["w", "c"]),
        "gemm_one_element_c": m("Gemm", x_shape=(2, 5), inits=[_w("w", 5, 3), _f32("c", [1.5])],
                                extra_inputs=["w", "c"]),
        "gemm_runtime_b": m("Gemm", dict(transB=1, alpha=2.0), x_shape=(2, 5), second_input=(3, 5)),
        "matmul_constant": m("MatMul", x_shape=(1, 7, 5), inits=[_w("w", 5, 3)], extra_inputs=["w"]),
        "matmul_batched_runtime": m("MatMul", x_shape=(2, 7, 5), second_input=(2, 5, 3)),
        "add_broadcast": m("Add", second_input=(4, 1, 1)),
        "sub_constant": m("Sub", inits=[_w("k", 8)], extra_inputs=["k"]),
        "mul_channel_constant": m("Mul", inits=[_w("k", 1, 4, 1, 1)], extra_inputs=["k"]),
        "div": m("Div", second_input=(1, 1, 8, 8)),
        "sum_of_three": m("Sum", second_input=(1, 4, 8, 8), inits=[_w("k", 8)], extra_inputs=["k"]),
        "max": m("Max", second_input=(1, 4, 8, 8)),
        "min_constant": m("Min", inits=[_w("k", 1)], extra_inputs=["k"]),
        "concat_negative_axis": m("Concat", dict(axis=-3), second_input=(1, 2, 8, 8), inits=[_w("k", 1, 1, 8, 8)],
                                  extra_inputs=["k"]),
        "split_attribute_opset11": m("Split", dict(axis=1, split=[1, 3]), opset=11, n_outputs=2),
        "split_input_opset13": m("Split", dict(axis=-1), inits=[_i64("s", [2, 6])], extra_inputs=["s"], opset=13,
                                 n_outputs=2),
        "split_equal": m("Split", dict(axis=1), n_outputs=2),
        "split_num_outputs_opset18": m("Split", dict(axis=2, num_outputs=3), opset=18, n_outputs=3),
        "slice_negative_start_clamped_end": m("Slice", inits=[_i64("s", [1, -6]), _i64("e", [3, 100]),
                                                              _i64("a", [1, 3])], extra_inputs=["s", "e", "a"]),
        "slice_negative_steps": m("Slice", inits=[_i64("s", [-1, 0]), _i64("e", [-9999, 8]), _i64("a", [2, 3]),
                                                  _i64("st", [-2, 3])], extra_inputs=["s", "e", "a", "st"]),
        "slice_opset9_attributes": m("Slice", dict(starts=[1], ends=[3], axes=[1]), opset=9),
        "reshape_zero_and_minus_one": m("Reshape", inits=[_i64("shape", [0, 0, -1])], extra_inputs=["shape"]),
        "reshape_flat": m("Reshape", inits=[_i64("shape", [1, -1])], extra_inputs=["shape"]),
        "flatten_axis2": m("Flatten", dict(axis=2)),
        "flatten_axis0": m("Flatten", dict(axis=0)),
        "transpose_perm": m("Transpose", dict(perm=[0, 2, 3, 1])),
        "transpose_default_reverses": m("Transpose"),
        "squeeze_attribute_opset11": m("Squeeze", dict(axes=[0]), opset=11),
        "squeeze_input": m("Squeeze", x_shape=(1, 4, 1, 8), inits=[_i64("ax", [2])], extra_inputs=["ax"]),
        "squeeze_all_ones": m("Squeeze", x_shape=(1, 4, 1, 8)),
        "unsqueeze_attribute_opset11": m("Unsqueeze", dict(axes=[0, 3]), x_shape=(4, 8), opset=11),
        "unsqueeze_input_negative": m("Unsqueeze", x_shape=(4, 8, 8), inits=[_i64("ax", [-1, 1])],
                                      extra_inputs=["ax"]),
        "pad_constant_value": m("Pad", inits=[_i64("p", [0, 0, 1, 2, 0, 0, 3, 0]), _f32("v", 0.5)],
                                extra_inputs=["p", "v"]),
        "pad_reflect": m("Pad", dict(mode="reflect"), inits=[_i64("p", [0, 0, 2, 1, 0, 0, 1, 2])],
                         extra_inputs=["p"]),
        "pad_edge_opset10": m("Pad", dict(mode="edge", pads=[0, 0, 1, 1, 0, 0, 1, 1]), opset=10),
        "resize_nearest_scales": m("Resize", inits=[_f32("sc", [1, 1, 2, 3])], extra_inputs=["", "sc"], opset=13),
        "resize_nearest_asymmetric_floor": m("Resize", dict(coordinate_transformation_mode="asymmetric",
                                                            nearest_mode="floor"),
                                             inits=[_i64("sz", [1, 4, 16, 16])], extra_inputs=["", "", "sz"],
                                             opset=13),
        "resize_linear_half_pixel_sizes": m("Resize", dict(mode="linear"), inits=[_i64("sz", [1, 4, 12, 20])],
                                            extra_inputs=["", "", "sz"], opset=13),
        "resize_linear_align_corners": m("Resize", dict(mode="linear",
                                                        coordinate_transformation_mode="align_corners"),
                                         inits=[_f32("sc", [1, 1, 2, 2])], extra_inputs=["", "sc"], opset=13),
        "resize_linear_asymmetric": m("Resize", dict(mode="linear", coordinate_transformation_mode="asymmetric"),
                                      inits=[_f32("sc", [1, 1, 2, 2])], extra_inputs=["", "sc"], opset=13),
        "resize_opset10": m("Resize", inits=[_f32("sc", [1, 1, 2, 2])], extra_inputs=["sc"], opset=10),
        "upsample_opset9": m("Upsample", inits=[_f32("sc", [1, 1, 2, 2])], extra_inputs=["sc"], opset=9),
        "upsample_linear_opset7": m("Upsample", dict(mode="linear", scales=[1.0, 1.0, 2.0, 2.0]), opset=7),
        "lrn": m("LRN", dict(size=3, alpha=1e-3, beta=0.5, bias=2.0)),
        "softmax_opset13_axis1": m("Softmax", dict(axis=1)),
        "softmax_opset11_flattens": m("Softmax", dict(axis=1), opset=11),
        "softmax_opset9_trailing_ones": m("Softmax", dict(axis=1), x_shape=(1, 10, 1, 1), opset=9),
        "logsoftmax": m("LogSoftmax", dict(axis=-1)),
        "dropout_opset12": m("Dropout", inits=[_f32("r", 0.3)], extra_inputs=["r"], opset=12),
        "identity": m("Identity"),
        "reducemean_opset13": m("ReduceMean", dict(axes=[2, 3], keepdims=1), opset=13),
        "reducesum_axes_input": m("ReduceSum", dict(keepdims=0), inits=[_i64("ax", [1])], extra_inputs=["ax"],
                                  opset=13),
    }
    for op in ("Relu", "Sigmoid", "Tanh", "Softplus", "HardSwish", "Abs", "Exp", "Neg"):
        c[op.lower()] = m(op)
    return c


OP_CASES = _op_cases()


@pytest.mark.parametrize("case", sorted(OP_CASES))
def test_op_coverage(case, tmp_path):
    source = save(OP_CASES[case], tmp_path / f"{case}.onnx")
    result = convert(source, tmp_path / f"{case}.mlpackage", precision="fp32")
    assert_verified(result)
    layer_map, _ = assert_layer_map_covers_source(source, result)
    op_type = OP_CASES[case].graph.node[0].op_type
    node_id = OP_CASES[case].graph.node[0].name
    if op_type in ("Dropout", "Identity"):
        # Removed inside a graph (the light zoo's Dropouts are); as the graph output here, an
        # identity op carries the output name and belongs to the node.
        [name] = layer_map["nodes"][node_id]
        assert layer_map["mil_ops"][name]["type"] == "identity" and layer_map["outputs"] == {"y0": "y0"}
    else:
        assert layer_map["nodes"][node_id]


# What Core ML itself cannot do: rank-6 tensors (PixelShuffle's reshape).  (Dilated max pooling,
# test_MaxPool{1,2}d_stride_padding_dilation, is written out with strided slices and converts.)
PYTORCH_CONVERTED_BLOCKED = {
    "test_PixelShuffle": [("Reshape_1", "rank 6"), ("Transpose_2", "rank 6")],
}


@pytest.mark.parametrize("path", PYTORCH_CONVERTED, ids=lambda p: p.parent.name.replace("test_", ""))
def test_pytorch_converted_models(path, tmp_path):
    blocked = PYTORCH_CONVERTED_BLOCKED.get(path.parent.name)
    if blocked:
        blockers = check_convertible(path)
        assert len(blockers) == len(blocked)
        for blocker, (node_id, reason) in zip(blockers, blocked):
            assert blocker.node_id == node_id and reason in blocker.reason
        return
    result = convert(path, tmp_path / "m.mlpackage", precision="fp32")
    assert_verified(result)
    assert_layer_map_covers_source(path, result)


def test_pooling_ambiguity_between_onnx_and_onnx_runtime_is_reported(tmp_path):
    # ONNX shape inference says 6x6, ONNX Runtime (and Core ML) 5x5: refuse rather than guess.
    model = _single_op_model("AveragePool", dict(kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1],
                                                 ceil_mode=1), x_shape=(1, 4, 9, 9))
    source = save(model, tmp_path / "p.onnx")
    session = onnxruntime.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    assert session.run(None, {"x": np.ones((1, 4, 9, 9), np.float32)})[0].shape == (1, 4, 5, 5)
    [blocker] = check_convertible(source)
    assert "ONNX Runtime computes [5, 5]" in blocker.reason


@pytest.mark.parametrize("attrs, in_size", [
    (dict(), 4), (dict(pads=[1, 0, 2, 0]), 4), (dict(output_padding=[1, 0]), 3),
    (dict(pads=[1, 0, 1, 0], output_padding=[1, 0]), 4), (dict(output_shape=[6, 1]), 3),
    (dict(output_shape=[8, 1]), 3), (dict(output_shape=[7, 1], auto_pad="SAME_UPPER"), 4),
    (dict(output_shape=[7, 1], auto_pad="SAME_LOWER"), 4), (dict(auto_pad="SAME_UPPER"), 3),
    (dict(auto_pad="SAME_LOWER"), 3),
])
def test_conv_transpose_crop_follows_onnx_runtime(attrs, in_size, tmp_path):
    """The part of the full transposed convolution that ONNX keeps, as the converter computes it,
    equals ONNX Runtime's output (an impulse response makes the kept window visible)."""
    from engine.convert import ops
    from engine.convert.source import load_source

    kernel, stride = 3, 2
    weight = np.arange(1, kernel + 1, dtype=np.float32).reshape(1, 1, kernel, 1)
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="ct", kernel_shape=[kernel, 1],
                            strides=[stride, 1], **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                          [1, 1, in_size, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what the installed ONNX Runtime reads
    source_path = save(model, tmp_path / "ct.onnx")
    x = np.zeros((1, 1, in_size, 1), np.float32)
    x[0, 0, :, 0] = np.arange(1, in_size + 1)
    session = onnxruntime.InferenceSession(str(source_path), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"x": x})[0][0, 0, :, 0]
    source = load_source(source_path)
    heads, fulls, outs = ops.conv_transpose_head_and_size(ops.NodeContext(source.graph.node("ct"), source))
    # the unpadded result, extended by output_padding (and past it when output_shape asks for more)
    full = np.zeros(max(fulls[0], heads[0] + outs[0]), np.float32)
    for i in range(in_size):
        full[i * stride:i * stride + kernel] += x[0, 0, i, 0] * weight[0, 0, :, 0]
    assert outs[0] == expected.shape[0]
    np.testing.assert_allclose(full[heads[0]:heads[0] + outs[0]], expected)
