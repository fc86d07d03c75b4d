"""ONNX importer on real files: the onnx package's zoo, external data, subgraphs, bad input."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import LIGHT_ZOO, PYTORCH_CONVERTED
from engine.ir import ModelLoadError
from importers import importer_for, open_model


@pytest.mark.parametrize("path", LIGHT_ZOO + PYTORCH_CONVERTED,
                         ids=lambda p: p.stem if p.stem != "model" else p.parent.name)
def test_every_shipped_model_imports(path):
    model = open_model(path)
    graph = model.main_graph
    proto = onnx.load(path, load_external_data=False)
    assert model.format == "onnx"
    assert len(graph.nodes) == len(proto.graph.node)
    assert len({n.id for n in graph.nodes}) == len(graph.nodes)  # ids unique
    assert [n.op_type for n in graph.nodes] == [n.op_type for n in proto.graph.node]
    # same ids on a second load: overlays keyed by id survive reopening
    assert [n.id for n in open_model(path).main_graph.nodes] == [n.id for n in graph.nodes]


def _conv_model(weights: np.ndarray) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, weights.shape[1], 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="/block/conv/Conv", kernel_shape=list(weights.shape[2:]))
    graph = helper.make_graph([node], "g", [x], [y], [numpy_helper.from_array(weights, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_embedded_weights_are_located_not_loaded(tmp_path):
    weights = np.random.default_rng(0).standard_normal((64, 32, 3, 3)).astype(np.float32)
    path = tmp_path / "conv.onnx"
    onnx.save(_conv_model(weights), path)
    model = open_model(path)
    value = model.main_graph.values["w"]
    assert value.initializer is not None and value.small_data is None
    location = value.initializer.location
    assert location.kind == "embedded" and location.length == weights.nbytes
    with open(path, "rb") as handle:  # the recorded place holds exactly the weights
        handle.seek(location.offset)
        assert handle.read(location.length) == weights.tobytes()
    assert model.main_graph.node("/block/conv/Conv").namespace == "block/conv"


def test_external_data_opens_without_reading_weight_files(tmp_path):
    weights = np.ones((128, 64, 3, 3), np.float32)
    path = tmp_path / "ext.onnx"
    onnx.save(_conv_model(weights), path, save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.weights", size_threshold=0)
    model = open_model(path)
    location = model.main_graph.values["w"].initializer.location
    assert location.kind == "external" and location.path.endswith("ext.weights")
    assert location.length == weights.nbytes
    (tmp_path / "ext.weights").unlink()  # opening never needed the bytes: it still opens
    missing = open_model(path)
    assert len(missing.main_graph.nodes) == 1
    assert any("ext.weights" in w and "missing" in w for w in missing.warnings)


def test_control_flow_bodies_are_kept_as_subgraphs(tmp_path):
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    then_out = helper.make_tensor_value_info("t", TensorProto.FLOAT, [4])
    else_out = helper.make_tensor_value_info("e", TensorProto.FLOAT, [4])
    then_graph = helper.make_graph([helper.make_node("Relu", ["x"], ["t"], name="relu")], "then", [], [then_out])
    else_graph = helper.make_graph([helper.make_node("Neg", ["x"], ["n"], name="neg"),
                                    helper.make_node("Abs", ["n"], ["e"], name="abs")], "else", [], [else_out])
    node = helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then_graph, else_branch=else_graph)
    proto = helper.make_model(helper.make_graph([node], "g", [cond, x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "if.onnx"
    onnx.save(proto, path)
    branch = open_model(path).main_graph.node("branch")
    assert set(branch.subgraphs) == {"then_branch", "else_branch"}
    assert [n.op_type for n in branch.subgraphs["else_branch"].nodes] == ["Neg", "Abs"]


def test_input_shape_option_and_free_dimensions(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    w = numpy_helper.from_array(np.zeros((8, 3, 3, 3), np.float32), "w")
    proto = helper.make_model(helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="c")],
                                                "g", [x], [y], [w]), opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "free.onnx"
    onnx.save(proto, path)
    free = open_model(path)
    assert any("free dimensions" in w and "--shape x=" in w for w in free.warnings)
    fixed = open_model(path, input_shapes={"x": [1, 3, 32, 32]})
    assert fixed.main_graph.value_type("y").shape == (1, 8, 30, 30)
    with pytest.raises(ModelLoadError, match="inputs are: x"):
        open_model(path, input_shapes={"image": [1, 3, 32, 32]})


def test_missing_input_shape_is_reported(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, None)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    proto = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "noshape.onnx"
    onnx.save(proto, path)
    model = open_model(path)
    assert any("input 'x' has no shape" in w for w in model.warnings)


# ---------------------------------------------------------------------------- bad input

def test_truncated_file_names_the_problem(tmp_path, sample_model):
    data = sample_model.read_bytes()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError) as info:
        open_model(path)
    assert str(path) in str(info.value) and "truncated" in str(info.value)


def test_random_bytes_with_model_extension(tmp_path):
    path = tmp_path / "random.onnx"
    path.write_bytes(np.random.default_rng(1).bytes(10_000))
    with pytest.raises(ModelLoadError) as info:
        open_model(path)
    assert str(path) in str(info.value) and "not an ONNX model" in str(info.value)


@pytest.mark.parametrize("content,problem", [(b"", "empty"), (b"hello world, not a model\n", "not an ONNX model")])
def test_empty_and_text_files(tmp_path, content, problem):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=problem):
        open_model(path)


def test_unknown_extension_and_content(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("just text")
    with pytest.raises(ModelLoadError, match="not a model file LayerScope can read: the file is plain text"):
        open_model(path)


def test_content_beats_extension(tmp_path, sample_model):
    renamed = tmp_path / "model.bin"
    renamed.write_bytes(sample_model.read_bytes())
    assert importer_for(renamed).FORMAT == "onnx"
    assert len(open_model(renamed).main_graph.nodes) == len(open_model(sample_model).main_graph.nodes)


def test_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="no such file"):
        open_model(tmp_path / "nope.onnx")


def test_input_shape_option_recomputes_stored_shapes(sample_model):
    """The sample stores inferred shapes (value_info); a new input size must replace them all."""
    from engine.analysis import analyze

    base = analyze(open_model(sample_model))
    bigger = analyze(open_model(sample_model, input_shapes={"image": [1, 3, 320, 320]}))
    assert bigger.graph.value_type("mask").shape == (1, 1, 320, 320)
    assert bigger.totals.macs == 4 * base.totals.macs


def test_shape_inference_in_a_worker_process_gives_the_same_graph(tmp_path):
    """The GUI offloads inference of large graphs to a process (GIL-free UI); results must not change."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import importers.onnx as onnx_importer
    from benchmarks.bench_open_analyse import make_chain_model

    path = tmp_path / "chain.onnx"
    make_chain_model(path, onnx_importer.INFERENCE_OFFLOAD_NODES + 400)
    in_process = open_model(path)
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as executor:
        onnx_importer.set_inference_executor(executor)
        try:
            offloaded = open_model(path)
        finally:
            onnx_importer.set_inference_executor(None)
    assert [n.id for n in offloaded.main_graph.nodes] == [n.id for n in in_process.main_graph.nodes]
    last = in_process.main_graph.nodes[-1].outputs[0]
    assert offloaded.main_graph.value_type(last) == in_process.main_graph.value_type(last)
    assert offloaded.main_graph.value_type(last).is_static
