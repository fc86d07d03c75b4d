"""The helper process sends back the inferred value types (a compact table) and the nodes holding
subgraphs, not the whole inferred model: that must carry everything the full parse does, and a
result cut short or garbled must leave a warning naming it, not a traceback."""
from __future__ import annotations

import mmap
import multiprocessing
from concurrent.futures import Future, ProcessPoolExecutor

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import importers.onnx as onnx_importer
from benchmarks.onnx_ir_digest import build_feature_models
from engine.transformer_samples import TransformerConfig, write_transformer
from importers import open_model

SMALL_QDQ = TransformerConfig(layers=2, hidden=64, heads=4, kv_heads=2, intermediate=128, vocab=100,
                              style="per_head_qdq")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    directory = tmp_path_factory.mktemp("value_types")
    broken = {"truncated", "random_bytes", "empty_graph", "no_graph"}  # the digest's error cases
    return [write_transformer(directory / "qdq.onnx", SMALL_QDQ),
            *(path for path in build_feature_models(directory) if path.stem not in broken)]


def _types_by_the_onnx_package(path):
    """name -> (elem_type, dims) of every described value of the inferred model, read with onnx's own API."""
    model = onnx.shape_inference.infer_shapes(onnx.load(path, load_external_data=False), data_prop=True)
    graph = model.graph
    found = {}
    for info in list(graph.value_info) + list(graph.input) + list(graph.output):
        if not info.type.HasField("tensor_type"):
            found[info.name] = None
            continue
        tensor = info.type.tensor_type
        dims = None if not tensor.HasField("shape") else tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim)
        found[info.name] = (tensor.elem_type, dims)
    return model, found


def test_the_helpers_table_carries_what_the_full_parse_finds(models, tmp_path):
    for path in models:
        if path.name == "control_flow_custom_op.onnx":
            continue  # inference fails on it (see the warning test below)
        result = tmp_path / f"{path.stem}.bin"
        onnx_importer.infer_value_types_file(str(path), str(result))  # what the helper process runs
        (names, type_ids, types), bodies = onnx_importer.read_value_types(str(result))
        model, expected = _types_by_the_onnx_package(path)
        assert dict(zip(names, (types[i] for i in type_ids))) == expected, path.name
        assert len(names) == len(model.graph.value_info) + len(model.graph.input) + len(model.graph.output)
        with_graphs = [i for i, node in enumerate(model.graph.node)
                       if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)]
        assert sorted(bodies) == with_graphs, path.name
        for index, node in bodies.items():  # the inferred node, its bodies with their inferred shapes
            assert onnx.NodeProto.FromString(node) == model.graph.node[index]
    assert onnx_importer.read_value_types(str(tmp_path / "control_flow.bin"))[1]  # If and Scan were sent


def test_opening_through_a_helper_process_gives_the_in_process_model(models, monkeypatch):
    """A real spawned helper (as the app's): every node, value, type, body and warning equal."""
    monkeypatch.setattr(onnx_importer, "INFERENCE_OFFLOAD_NODES", 1)
    in_process = [open_model(path) for path in models]
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as executor:
        onnx_importer.set_inference_executor(executor)
        try:
            handed_over = [open_model(path) for path in models]
        finally:
            onnx_importer.set_inference_executor(None)
    assert handed_over == in_process
    branch = next(m for m in handed_over if m.main_graph.name == "control_flow").main_graph.node("/branch")
    assert branch.subgraphs["else_branch"].value_type("negated").shape == (1, 3)  # inferred inside the body


class _DamagingExecutor:
    """Runs the real helper function here, then damages its result file as a dying helper or a
    full disk would."""

    def __init__(self, damage):
        self.damage = damage

    def submit(self, function, model_path, result_path):
        future = Future()
        function(model_path, result_path)
        self.damage(result_path)
        future.set_result(None)
        return future


def _truncate(path):
    with open(path, "r+b") as handle:
        handle.truncate(handle.seek(0, 2) // 2)


def _garble(path):
    with open(path, "r+b") as handle:
        data = bytearray(handle.read())
        header = len(onnx_importer._VALUE_TYPES_MAGIC) + 8
        data[header:] = b"\xff" * (len(data) - header)  # right length, not marshal data
        handle.seek(0)
        handle.write(data)


@pytest.mark.parametrize("damage, problem", [(_truncate, "is truncated"), (_garble, "is unreadable"),
                                             (lambda path: open(path, "wb").close(), "is not a value-type table")])
def test_a_damaged_helper_result_is_a_warning_naming_it(models, monkeypatch, damage, problem):
    monkeypatch.setattr(onnx_importer, "INFERENCE_OFFLOAD_NODES", 1)
    onnx_importer.set_inference_executor(_DamagingExecutor(damage))
    try:
        model = open_model(models[0])
    finally:
        onnx_importer.set_inference_executor(None)
    warning = next(w for w in model.warnings if w.startswith("shape inference failed"))
    assert "value_types.bin" in warning and problem in warning
    assert [n.id for n in model.main_graph.nodes] == [n.id for n in open_model(models[0]).main_graph.nodes]


def test_read_value_types_names_the_file(tmp_path):
    path = tmp_path / "result.bin"
    path.write_bytes(onnx_importer._VALUE_TYPES_MAGIC + (10).to_bytes(8, "little") + b"short")
    with pytest.raises(ValueError, match=f"{path} is truncated"):
        onnx_importer.read_value_types(str(path))


def test_stripping_a_model_without_large_payloads_keeps_its_bytes(tmp_path):
    """Small initializers (QDQ scales, shape vectors) are not re-encoded; one large one is stripped
    and the small ones around it stay as they were."""
    small = [numpy_helper.from_array(np.full(4, i, np.float32), f"s{i}") for i in range(50)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    nodes = [helper.make_node("Add", ["x", f"s{i}"], [f"a{i}"], name=f"/add{i}") for i in range(50)]
    graph = helper.make_graph(nodes, "g", [x], [helper.make_tensor_value_info("a49", TensorProto.FLOAT, None)], small)
    path = tmp_path / "small.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        stripped, embedded = onnx_importer._strip_large_tensors(buf)
    assert stripped == path.read_bytes() and embedded == {}

    graph.initializer.insert(25, numpy_helper.from_array(np.ones(4096, np.float32), "big"))
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        stripped, embedded = onnx_importer._strip_large_tensors(buf)
    parsed = onnx.ModelProto.FromString(stripped)
    assert set(embedded) == {"big"} and not parsed.graph.initializer[25].raw_data
    assert [t.name for t in parsed.graph.initializer] == [t.name for t in graph.initializer]
    assert all(parsed.graph.initializer[i] == graph.initializer[i] for i in range(51) if i != 25)


def test_a_file_parsed_whole_gives_the_model_the_strip_path_gives(models, monkeypatch, tmp_path):
    """Files up to PARSE_WHOLE_BYTES are parsed as read when no initializer is large; the model is
    the one the payload-stripping path builds, and a large initializer still takes that path."""
    with_big_weight = tmp_path / "big_weight.onnx"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2048])
    onnx.save(helper.make_model(helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="/mm")], "g", [x],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.ones((2048, 4), np.float32), "w")]),
        opset_imports=[helper.make_opsetid("", 17)]), with_big_weight)
    paths = [*models, with_big_weight]
    parsed_whole = [open_model(path) for path in paths]
    monkeypatch.setattr(onnx_importer, "PARSE_WHOLE_BYTES", 0)
    assert [open_model(path) for path in paths] == parsed_whole
    assert parsed_whole[-1].main_graph.values["w"].initializer.location.kind == "embedded"
    with open(with_big_weight, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        assert onnx_importer._parse_whole(buf)[0] is None  # left to the strip path
    with open(models[0], "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        proto, data, embedded = onnx_importer._parse_whole(buf)
    assert proto is not None and data == models[0].read_bytes() and embedded == {}
