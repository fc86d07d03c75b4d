"""The ONNX importer builds nodes in its one walk of the protobuf (while shape inference runs) and
the rest after inference: Constant values, nodes holding subgraphs and their place must survive."""
from __future__ import annotations

import onnx
from onnx import TensorProto, helper, numpy_helper
import numpy as np

from importers import open_model


def _model_with_constants_and_a_branch(path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    then_graph = helper.make_graph([helper.make_node("Relu", ["x"], ["t"], name="/then/relu")], "then", [],
                                   [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    else_graph = helper.make_graph([helper.make_node("Neg", ["x"], ["e"], name="/else/neg")], "else", [],
                                   [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
    nodes = [
        helper.make_node("Constant", [], ["shape"], name="/c/shape",
                         value=numpy_helper.from_array(np.array([3, 2], np.int64))),
        helper.make_node("Constant", [], ["scale"], name="/c/scale", value_float=0.5),
        helper.make_node("Constant", [], ["axes"], name="/c/axes", value_ints=[0, 1]),
        helper.make_node("If", ["cond"], ["b"], name="/branch", then_branch=then_graph, else_branch=else_graph),
        helper.make_node("Reshape", ["b", "shape"], ["r"], name="/m/reshape"),
        helper.make_node("Mul", ["r", "scale"], ["y"], name="/m/mul"),
    ]
    graph = helper.make_graph(nodes, "g", [cond, x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_constant_values_and_branch_nodes_survive_the_one_pass(tmp_path):
    graph = open_model(_model_with_constants_and_a_branch(tmp_path / "m.onnx")).main_graph
    assert [n.id for n in graph.nodes] == ["/c/shape", "/c/scale", "/c/axes", "/branch", "/m/reshape", "/m/mul"]
    assert graph.values["shape"].small_data == (3, 2)
    assert graph.values["scale"].small_data == (0.5,)
    assert graph.values["axes"].small_data == (0, 1)
    branch = graph.node("/branch")
    assert set(branch.subgraphs) == {"then_branch", "else_branch"}
    assert branch.subgraphs["then_branch"].value_type("t").shape == (2, 3)  # inferred inside the body
    assert graph.value_type("r").shape == (3, 2)  # the Reshape target came from the Constant
    assert graph.node("/m/mul").namespace == "m"


def test_every_value_named_by_a_node_is_in_the_graph_in_first_use_order(tmp_path):
    graph = open_model(_model_with_constants_and_a_branch(tmp_path / "m.onnx")).main_graph
    named = [v for n in graph.nodes for v in n.inputs + n.outputs if v]
    assert set(named) <= set(graph.values)
    # Values no value_info describes come after the described ones, in the order nodes name them.
    untyped = [name for name, value in graph.values.items() if value.type is None and value.small_data is None]
    assert untyped == [v for v in dict.fromkeys(named) if v in untyped]
