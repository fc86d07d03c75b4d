"""The ONNX importer's fast paths for big graphs (issue 14) give what the onnx package reads.

The importer finds initializers with a scan that builds nothing for the other fields
(`protowire.find_fields`), reads the nodes while shape inference runs (in the helper process in
the app), and takes subgraph bodies from the inferred model.  These tests compare the result with
the onnx package's own parse and shape inference, on the shipped zoo and generated transformers.
"""
from __future__ import annotations

import mmap
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import importers.onnx as onnx_importer
from conftest import LIGHT_ZOO, PYTORCH_CONVERTED
from engine.transformer_samples import TransformerConfig, write_transformer
from importers import open_model, protowire

SMALL_TRANSFORMER = TransformerConfig(layers=2, hidden=64, heads=4, kv_heads=2, intermediate=128, vocab=100)


@pytest.fixture(scope="module")
def transformers(tmp_path_factory):
    directory = tmp_path_factory.mktemp("transformers")
    return [write_transformer(directory / "optimum.onnx", SMALL_TRANSFORMER),
            write_transformer(directory / "qdq.onnx", TransformerConfig(**{**SMALL_TRANSFORMER.__dict__,
                                                                            "style": "per_head_qdq"}))]


def _graph_field(buf) -> protowire.Field:
    return next(f for f in protowire.iter_fields(buf) if f.number == 7)


@pytest.mark.parametrize("path", LIGHT_ZOO[:6] + PYTORCH_CONVERTED[:4], ids=lambda p: p.parent.name + "/" + p.stem)
def test_find_fields_finds_what_iter_fields_finds(path):
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        graph = _graph_field(buf)
        for number in (1, 5, 11, 12):  # nodes, initializers, inputs, outputs
            expected = [(f.tag_start, f.start, f.end) for f in protowire.iter_fields(buf, graph.start, graph.end)
                        if f.number == number and f.wire_type == protowire.LENGTH_DELIMITED]
            assert protowire.find_fields(buf, number, graph.start, graph.end) == expected


def test_find_fields_on_a_generated_transformer_and_truncated_data(transformers):
    data = transformers[1].read_bytes()
    graph = _graph_field(data)
    nodes = protowire.find_fields(data, 1, graph.start, graph.end)
    assert len(nodes) == len(onnx.load(transformers[1], load_external_data=False).graph.node)
    # Every length form: one-byte, two-byte and longer varints.
    lengths = {end - payload for _, payload, end in nodes}
    assert min(lengths) < 128 <= max(lengths)
    with pytest.raises(protowire.TruncatedError, match="claims .* bytes but only .* remain"):
        protowire.find_fields(data, 1, graph.start, graph.end - 3)
    with pytest.raises(protowire.WireError):
        protowire.find_fields(b"\x0a\xff", 1)  # a length varint that never ends


def _expected_types(path):
    """value name -> (dtype, shape) as the onnx package infers them (data propagation on, as ours)."""
    proto = onnx.load(path, load_external_data=False)
    inferred = onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, data_prop=True)
    types = {}
    for info in list(inferred.graph.value_info) + list(inferred.graph.output):
        tensor = info.type.tensor_type
        if info.type.HasField("tensor_type") and tensor.HasField("shape"):
            types[info.name] = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                                     for d in tensor.shape.dim)
    return proto, types


@pytest.mark.parametrize("index", range(3))
def test_the_ir_is_what_the_onnx_package_reads(index, transformers):
    path = (transformers + [LIGHT_ZOO[0]])[index]
    proto, shapes = _expected_types(path)
    graph = open_model(path).main_graph
    assert [(n.op_type, n.name, n.domain, n.inputs, n.outputs) for n in graph.nodes] == \
        [(n.op_type, n.name, n.domain, tuple(n.input), tuple(n.output)) for n in proto.graph.node]
    for node, node_proto in zip(graph.nodes, proto.graph.node):
        assert set(node.attributes) == {a.name for a in node_proto.attribute}
    assert shapes, "the onnx package inferred no shapes: nothing compared"
    for name, shape in shapes.items():
        assert graph.value_type(name).shape == shape, name


def test_subgraph_bodies_carry_inferred_shapes(tmp_path):
    """Bodies are read from the inferred model: a tensor inside a branch has the shape ONNX inferred."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    then_graph = helper.make_graph([helper.make_node("Relu", ["x"], ["inner"], name="/then/relu"),
                                    helper.make_node("Neg", ["inner"], ["t"], name="/then/neg")], "then", [],
                                   [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    else_graph = helper.make_graph([helper.make_node("Neg", ["x"], ["e"], name="/else/neg")], "else", [],
                                   [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
    model = helper.make_model(helper.make_graph(
        [helper.make_node("If", ["cond"], ["y"], name="/branch", then_branch=then_graph, else_branch=else_graph)],
        "g", [cond, x], [out]), opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "branch.onnx"
    onnx.save(model, path)
    body = open_model(path).main_graph.node("/branch").subgraphs["then_branch"]
    assert body.value_type("inner").shape == (2, 3)
    assert [n.id for n in body.nodes] == ["/then/relu", "/then/neg"]


def test_inference_overlapping_the_node_walk_gives_the_same_model(transformers, monkeypatch):
    """With an executor the nodes are read while inference runs: the model must be the same."""
    monkeypatch.setattr(onnx_importer, "INFERENCE_OFFLOAD_NODES", 1)
    for path in transformers:
        in_process = open_model(path)
        with ThreadPoolExecutor(max_workers=1) as executor:
            onnx_importer.set_inference_executor(executor)
            try:
                overlapped = open_model(path)
            finally:
                onnx_importer.set_inference_executor(None)
        assert overlapped == in_process  # every node, attribute, value, type and warning


def test_large_initializer_payloads_are_never_parsed(tmp_path):
    """Only the place of a big payload is kept; the bytes handed to protobuf leave it out."""
    weights = np.arange(256 * 1024, dtype=np.float32).reshape(256, 1024)
    shape = numpy_helper.from_array(np.array([1024, 256], np.int64), "shape")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 256])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    model = helper.make_model(helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
         helper.make_node("Reshape", ["m", "shape"], ["y"], name="reshape")],
        "g", [x], [y], [numpy_helper.from_array(weights, "w"), shape]), opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "big_weight.onnx"
    onnx.save(model, path)
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        stripped, embedded = onnx_importer._strip_large_tensors(buf)
    assert len(stripped) < 4096 < weights.nbytes  # the 1 MB payload is not in what protobuf parses
    assert weights.tobytes()[:64] not in stripped
    assert set(embedded) == {"w"} and embedded["w"].length == weights.nbytes
    graph = open_model(path).main_graph
    assert graph.values["shape"].small_data == (1024, 256)  # small constants keep their values
    assert graph.values["w"].small_data is None and graph.values["w"].initializer.location.kind == "embedded"


def test_namespace_shortcut_matches_the_split_definition():
    """Every name of up to 6 characters over '/', 'a', 'b': the shortcut equals split-and-join."""
    import itertools

    def by_definition(name: str) -> str:
        return "/".join(part for part in name.split("/")[:-1] if part) if "/" in name else ""

    names = ["".join(c) for length in range(7) for c in itertools.product("/ab", repeat=length)]
    assert [onnx_importer._namespace(n) for n in names] == [by_definition(n) for n in names]
    assert onnx_importer._namespace("/model/layers.17/self_attn/MatMul") == "model/layers.17/self_attn"


def test_inference_handed_over_as_files_leaves_none_behind(transformers, monkeypatch, tmp_path):
    """The model and its inferred copy go to the executor as files in a private directory,
    removed after the open; an executor that refuses the call leaves a warning, not a failure."""
    import tempfile

    monkeypatch.setattr(onnx_importer, "INFERENCE_OFFLOAD_NODES", 1)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with ThreadPoolExecutor(max_workers=1) as executor:
        onnx_importer.set_inference_executor(executor)
        try:
            model = open_model(transformers[0])
        finally:
            onnx_importer.set_inference_executor(None)
    assert model == open_model(transformers[0])
    assert list(tmp_path.iterdir()) == []
    closed = ThreadPoolExecutor(max_workers=1)
    closed.shutdown()
    onnx_importer.set_inference_executor(closed)
    try:
        refused = open_model(transformers[0])
    finally:
        onnx_importer.set_inference_executor(None)
    assert any("shape inference failed (RuntimeError" in w for w in refused.warnings)
    assert [n.id for n in refused.main_graph.nodes] == [n.id for n in model.main_graph.nodes]
    assert list(tmp_path.iterdir()) == []
