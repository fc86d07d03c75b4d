"""Core ML importer: real .mlmodel / .mlpackage files built with coremltools in a temp dir."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("coremltools")

import coremltools as ct  # noqa: E402
from coremltools.models import datatypes  # noqa: E402
from coremltools.models.neural_network import NeuralNetworkBuilder  # noqa: E402

import importers  # noqa: E402
from engine.ir import FLOAT_DTYPES, Graph, ModelLoadError  # noqa: E402
from importers import coreml  # noqa: E402

CONV_W = 8 * 3 * 3 * 3 + 8          # conv1 weight + bias
BN_PARAMS = 8 + 8                   # gamma + beta (mean/variance are buffers)
FC_W = 10 * (8 * 16 * 16) + 10      # fc weight + bias
MIL_CONV = 4 * 3 * 3 * 3 + 4
MIL_LINEAR = 5 * 1024 + 5


def parameter_count(graph: Graph) -> int:
    """Elements of float constants read by nodes; batchnorm mean/variance are not parameters."""
    seen: set[str] = set()
    total = 0
    for node in graph.nodes:
        for index, name in enumerate(node.inputs):
            if node.op_type == "batchnorm" and index in (3, 4):
                continue
            value = graph.values.get(name)
            if name in seen or value is None or value.initializer is None:
                continue
            if value.type.dtype in FLOAT_DTYPES:
                seen.add(name)
                total += value.type.element_count
    return total


def shape(graph: Graph, value_name: str):
    return graph.value_type(value_name).shape


# ----------------------------------------------------------------------------- model builders

def build_nn(path: Path) -> Path:
    rng = np.random.default_rng(0)
    builder = NeuralNetworkBuilder([("image", datatypes.Array(3, 32, 32))], [("probs", None)])
    builder.add_convolution(
        "conv1", kernel_channels=3, output_channels=8, height=3, width=3, stride_height=1,
        stride_width=1, border_mode="same", groups=1,
        W=rng.random((3, 3, 3, 8), dtype=np.float32), b=np.zeros(8, np.float32), has_bias=True,
        input_name="image", output_name="c1")
    builder.add_batchnorm("bn1", 8, np.ones(8), np.zeros(8), mean=np.zeros(8),
                          variance=np.ones(8), input_name="c1", output_name="b1")
    builder.add_activation("relu1", "RELU", "b1", "r1")
    builder.add_pooling("pool1", 2, 2, 2, 2, "MAX", padding_type="VALID",
                        input_name="r1", output_name="p1")
    builder.add_flatten("flat", 0, "p1", "f1")
    builder.add_inner_product("fc", rng.random((10, 8 * 16 * 16), dtype=np.float32),
                              np.zeros(10, np.float32), 8 * 16 * 16, 10, True, "f1", "fc1")
    builder.add_softmax("sm", "fc1", "probs")
    builder.spec.description.metadata.author = "LayerScope tests"
    builder.spec.description.metadata.shortDescription = "tiny classifier"
    ct.models.utils.save_spec(builder.spec, str(path))
    return path


def build_nn_shapes(path: Path) -> Path:
    """Grouped conv, deconvolution, upsample, concat, add, global pooling: shape propagation."""
    rng = np.random.default_rng(1)
    builder = NeuralNetworkBuilder([("x", datatypes.Array(8, 20, 20))], [("y", None)])
    builder.add_convolution(
        "dw", kernel_channels=2, output_channels=8, height=3, width=3, stride_height=2,
        stride_width=2, border_mode="valid", groups=4,
        W=rng.random((3, 3, 2, 8), dtype=np.float32), b=None, has_bias=False,
        input_name="x", output_name="dw_out")                                   # 8x9x9
    builder.add_convolution(
        "up", kernel_channels=8, output_channels=4, height=2, width=2, stride_height=2,
        stride_width=2, border_mode="valid", groups=1,
        W=rng.random((2, 2, 8, 4), dtype=np.float32), b=np.zeros(4, np.float32), has_bias=True,
        is_deconv=True, input_name="dw_out", output_name="up_out")              # 4x18x18
    builder.add_upsample("ups", 2, 2, "dw_out", "ups_out")                     # 8x18x18
    builder.add_elementwise("sum", ["ups_out", "ups_out"], "sum_out", "ADD")   # 8x18x18
    builder.add_elementwise("cat", ["up_out", "sum_out"], "cat_out", "CONCAT")  # 12x18x18
    builder.add_pooling("gap", 1, 1, 1, 1, "AVERAGE", padding_type="VALID",
                        input_name="cat_out", output_name="y", is_global=True)  # 12x1x1
    ct.models.utils.save_spec(builder.spec, str(path))
    return path


def build_mlpackage(path: Path) -> Path:
    from coremltools.converters.mil import Builder as mb

    rng = np.random.default_rng(2)
    conv_w = rng.random((4, 3, 3, 3), dtype=np.float32)
    linear_w = rng.random((5, 1024), dtype=np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 3, 16, 16))])
    def prog(x):
        x = mb.conv(x=x, weight=conv_w, bias=np.zeros(4, np.float32), pad_type="same",
                    strides=[1, 1], groups=1, name="conv")
        x = mb.relu(x=x, name="relu")
        x = mb.reshape(x=x, shape=[1, 1024], name="flatten")
        return mb.linear(x=x, weight=linear_w, bias=np.zeros(5, np.float32), name="fc")

    model = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS15,
                       compute_precision=ct.precision.FLOAT32)
    model.save(str(path))
    return path


def _nn_spec(input_name: str, channels: int, output_name: str, conv: bool):
    builder = NeuralNetworkBuilder([(input_name, datatypes.Array(channels, 8, 8))],
                                   [(output_name, None)])
    if conv:
        builder.add_convolution(
            "conv", kernel_channels=channels, output_channels=4, height=1, width=1,
            stride_height=1, stride_width=1, border_mode="valid", groups=1,
            W=np.ones((1, 1, channels, 4), np.float32), b=None, has_bias=False,
            input_name=input_name, output_name=output_name)
    else:
        builder.add_activation("relu", "RELU", input_name, output_name)
    return builder.spec


def build_pipeline(path: Path) -> Path:
    from coremltools.models.pipeline import Pipeline

    pipeline = Pipeline([("x", datatypes.Array(3, 8, 8))], [("out", datatypes.Array(4, 8, 8))])
    pipeline.add_model(_nn_spec("x", 3, "mid", conv=True))
    pipeline.add_model(_nn_spec("mid", 4, "out", conv=False))
    ct.models.utils.save_spec(pipeline.spec, str(path))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("coreml")
    return {
        "nn": build_nn(root / "tiny.mlmodel"),
        "shapes": build_nn_shapes(root / "shapes.mlmodel"),
        "package": build_mlpackage(root / "tiny.mlpackage"),
        "pipeline": build_pipeline(root / "pipe.mlmodel"),
    }


# ----------------------------------------------------------------------------- NeuralNetwork

def test_neural_network_layers_shapes_and_parameters(models):
    model = coreml.load(models["nn"])
    assert model.format == "coreml-neuralnetwork"
    assert model.path == str(models["nn"])
    assert model.producer == "LayerScope tests"
    assert model.metadata["shortDescription"] == "tiny classifier"
    graph = model.main_graph
    assert [n.op_type for n in graph.nodes] == [
        "convolution", "batchnorm", "activation", "pooling", "flatten", "innerProduct", "softmax"]
    assert [n.id for n in graph.nodes] == ["conv1", "bn1", "relu1", "pool1", "flat", "fc", "sm"]
    assert graph.inputs == ("image",) and graph.outputs == ("probs",)

    assert shape(graph, "image") == (1, 3, 32, 32)
    assert shape(graph, "c1") == (1, 8, 32, 32)
    assert shape(graph, "p1") == (1, 8, 16, 16)
    assert shape(graph, "f1") == (1, 2048, 1, 1)
    assert shape(graph, "probs") == (1, 10, 1, 1)

    conv = graph.node("conv1")
    assert conv.inputs == ("image", "conv1/weight", "conv1/bias")
    assert shape(graph, "conv1/weight") == (8, 3, 3, 3)
    assert conv.attributes["kernel_shape"] == [3, 3]
    assert conv.attributes["pads"] == [1, 1, 1, 1]
    assert conv.attributes["group"] == 1
    assert graph.node("bn1").inputs == ("c1", "bn1/gamma", "bn1/beta", "bn1/mean", "bn1/variance")
    assert graph.node("relu1").attributes["activation"] == "ReLU"
    assert graph.node("pool1").attributes["type"] == "MAX"
    assert graph.node("pool1").attributes["kernel_shape"] == [2, 2]
    assert shape(graph, "fc/weight") == (10, 2048)
    weight = graph.values["fc/weight"].initializer
    assert weight.location.kind == "inline" and weight.byte_size == 10 * 2048 * 4

    assert parameter_count(graph) == CONV_W + BN_PARAMS + FC_W
    assert model.warnings == ()


def test_neural_network_shape_propagation(models):
    graph = coreml.load(models["shapes"]).main_graph
    assert graph.node("up").op_type == "deconvolution"
    assert shape(graph, "dw/weight") == (8, 2, 3, 3)        # [Cout, Cin/groups, kH, kW]
    assert graph.node("dw").attributes["group"] == 4
    assert shape(graph, "up/weight") == (8, 4, 2, 2)        # [Cin, Cout/groups, kH, kW]
    assert shape(graph, "dw_out") == (1, 8, 9, 9)
    assert shape(graph, "up_out") == (1, 4, 18, 18)
    assert shape(graph, "ups_out") == (1, 8, 18, 18)
    assert shape(graph, "sum_out") == (1, 8, 18, 18)
    assert shape(graph, "cat_out") == (1, 12, 18, 18)
    assert shape(graph, "y") == (1, 12, 1, 1)
    assert graph.node("gap").attributes["global"] is True
    assert parameter_count(graph) == 8 * 2 * 9 + 8 * 4 * 4 + 4


def test_input_shapes_override(models):
    graph = coreml.load(models["nn"], input_shapes={"image": [1, 3, 64, 64]}).main_graph
    assert shape(graph, "image") == (1, 3, 64, 64)
    assert shape(graph, "p1") == (1, 8, 32, 32)


# ----------------------------------------------------------------------------- ML Program

def test_ml_program_package(models):
    package = models["package"]
    model = coreml.load(package)
    assert model.format == "coreml-mlprogram"
    assert model.producer.startswith("coremltools ")
    assert model.metadata["opset"] == "CoreML5"
    graph = model.main_graph
    assert [n.op_type for n in graph.nodes] == ["conv", "relu", "reshape", "linear"]
    assert all(n.op_type != "const" for n in graph.nodes)
    assert graph.inputs == ("x",)
    conv = graph.nodes[0]
    assert conv.attributes["input_names"][:3] == ("x", "weight", "bias")
    assert conv.attributes["group"] == 1
    assert conv.attributes["kernel_shape"] == [3, 3]
    assert conv.attributes["strides"] == [1, 1]
    assert conv.attributes["pads"] == [1, 1, 1, 1]
    assert shape(graph, conv.outputs[0]) == (1, 4, 16, 16)
    assert shape(graph, graph.nodes[2].outputs[0]) == (1, 1024)
    assert shape(graph, graph.outputs[0]) == (1, 5)

    weight = graph.values[conv.inputs[1]]
    assert weight.type.shape == (4, 3, 3, 3)
    location = weight.initializer.location
    weight_bin = package / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    assert location.kind == "blob"
    assert Path(location.path) == weight_bin.absolute()
    assert location.offset > 0 and location.length == 4 * 3 * 3 * 3 * 4
    assert parameter_count(graph) == MIL_CONV + MIL_LINEAR
    assert model.warnings == ()


def test_float16_neural_network(models, tmp_path):
    from coremltools.models.neural_network import quantization_utils

    half = quantization_utils.quantize_weights(ct.models.MLModel(str(models["nn"])), nbits=16)
    path = tmp_path / "half.mlmodel"
    ct.models.utils.save_spec(half.get_spec(), str(path))
    graph = coreml.load(path).main_graph
    assert graph.values["conv1/weight"].type == graph.values["conv1/weight"].initializer.type
    assert graph.values["conv1/weight"].type.dtype == "float16"
    assert graph.values["fc/weight"].initializer.byte_size == 10 * 2048 * 2
    assert graph.value_type("c1").dtype == "float16"
    assert parameter_count(graph) == CONV_W + BN_PARAMS + FC_W


def test_compressed_ml_program_folds_constexpr_ops(models, tmp_path):
    """linear_quantize_weights adds constexpr_* ops: their outputs are weights, not nodes."""
    import coremltools.optimize.coreml as cto

    original = ct.models.MLModel(str(models["package"]), skip_model_load=True)
    config = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(
        mode="linear_symmetric", weight_threshold=100))
    path = tmp_path / "int8.mlpackage"
    cto.linear_quantize_weights(original, config).save(str(path))

    graph = coreml.load(path).main_graph
    assert [n.op_type for n in graph.nodes] == ["conv", "relu", "reshape", "linear"]
    conv = graph.nodes[0]
    weight = graph.values[conv.inputs[1]]
    assert weight.type.shape == (4, 3, 3, 3) and weight.type.dtype == "float32"
    assert weight.initializer.location.kind == "blob"
    assert weight.initializer.location.length == 4 * 3 * 3 * 3  # int8 as stored
    assert parameter_count(graph) == MIL_CONV + MIL_LINEAR


# ----------------------------------------------------------------------------- pipelines, others

def test_pipeline_gives_one_graph_per_model(models):
    model = coreml.load(models["pipeline"])
    assert model.format == "coreml-pipeline"
    assert len(model.graphs) == 2
    first, second = model.graphs
    assert first.name != second.name
    assert [n.op_type for n in first.nodes] == ["convolution"]
    assert [n.op_type for n in second.nodes] == ["activation"]
    assert shape(first, "mid") == (1, 4, 8, 8)
    assert shape(second, "out") == (1, 4, 8, 8)
    assert parameter_count(first) == 3 * 4


def test_unsupported_model_type_opens_as_one_node(tmp_path):
    from coremltools.proto import Model_pb2

    spec = Model_pb2.Model()
    spec.specificationVersion = 1
    feature = spec.description.input.add()
    feature.name = "features"
    feature.type.multiArrayType.shape.append(3)
    feature.type.multiArrayType.dataType = Model_pb2.ArrayFeatureType.FLOAT32
    out = spec.description.output.add()
    out.name = "score"
    out.type.doubleType.SetInParent()
    spec.glmRegressor.offset.append(0.5)
    weights = spec.glmRegressor.weights.add()
    weights.value.extend([1.0, 2.0, 3.0])
    path = tmp_path / "glm.mlmodel"
    path.write_bytes(spec.SerializeToString())

    assert coreml.sniff(path)
    model = coreml.load(path)
    assert [n.op_type for n in model.main_graph.nodes] == ["glmRegressor"]
    assert model.main_graph.nodes[0].inputs == ("features",)
    assert model.warnings and "glmRegressor" in model.warnings[0]


# ----------------------------------------------------------------------------- sniffing

def test_sniff_claims_core_ml_and_not_onnx(models, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    onnx_path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph), str(onnx_path))
    disguised = tmp_path / "relu.mlmodel"  # the content decides, not the name
    shutil.copy(onnx_path, disguised)

    assert not coreml.sniff(onnx_path)
    assert not coreml.sniff(disguised)
    for key in ("nn", "shapes", "package", "pipeline"):
        assert coreml.sniff(models[key]), key
    assert coreml.sniff(models["package"] / "Data" / "com.apple.CoreML" / "model.mlmodel")
    assert not coreml.sniff(tmp_path)                       # a plain directory
    assert not coreml.sniff(tmp_path / "missing.mlmodel")
    empty = tmp_path / "empty.mlmodel"
    empty.write_bytes(b"")
    assert not coreml.sniff(empty)


# ----------------------------------------------------------------------------- bad inputs

def _bad_inputs(models, tmp_path) -> list[tuple[Path, str]]:
    data = models["nn"].read_bytes()
    truncated = tmp_path / "truncated.mlmodel"
    truncated.write_bytes(data[: len(data) // 2])
    noise = tmp_path / "noise.mlmodel"
    noise.write_bytes(np.random.default_rng(3).bytes(4096))
    empty = tmp_path / "empty.mlmodel"
    empty.write_bytes(b"")
    plain_dir = tmp_path / "not_a_package"
    plain_dir.mkdir()
    (plain_dir / "model.mlmodel").write_bytes(data)
    broken = tmp_path / "broken.mlpackage"
    shutil.copytree(models["package"], broken)
    (broken / "Data" / "com.apple.CoreML" / "weights" / "weight.bin").unlink()
    return [
        (truncated, "truncated or damaged"),
        (noise, "Core ML"),
        (empty, "empty"),
        (plain_dir, "is a directory, not an .mlpackage (no Manifest.json)"),
        (broken, "weight.bin is missing"),
    ]


def test_bad_inputs_raise_model_load_error(models, tmp_path):
    for path, problem in _bad_inputs(models, tmp_path):
        with pytest.raises(ModelLoadError) as caught:
            coreml.load(path)
        assert caught.value.path == str(path)
        assert problem in str(caught.value), str(caught.value)
        assert str(path) in str(caught.value)


def test_bad_inputs_through_open_model(models, tmp_path):
    """The registry routes by content, then by extension; every failure is a ModelLoadError."""
    for path, problem in _bad_inputs(models, tmp_path):
        with pytest.raises(ModelLoadError) as caught:
            importers.open_model(path)
        assert str(path) in str(caught.value)
        assert problem in str(caught.value) or "Core ML" in str(caught.value), str(caught.value)


def test_open_model_routes_core_ml_files(models):
    try:
        import importers.onnx  # noqa: F401
    except Exception as exc:
        pytest.skip(f"importers.onnx is not importable yet: {exc}")
    assert importers.importer_for(models["nn"]) is coreml
    assert importers.importer_for(models["package"]) is coreml
    assert importers.open_model(models["package"]).format == "coreml-mlprogram"
    assert importers.open_model(models["pipeline"]).format == "coreml-pipeline"
