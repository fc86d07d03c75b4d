"""The ONNX importer's node walk reads the protobuf column by column, shares attribute values
between nodes whose serialized attributes are equal, and builds IR nodes without their dataclass
constructor.  None of that may show: every node must carry its own attributes, bodies, id and
namespace exactly as a node-by-node reading gives them."""
from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import importers.onnx as onnx_importer
from engine.ir import Node, TensorType, Value
from importers import open_model

CUSTOM = "com.example.custom"  # ops of this domain take any attributes (shape inference skips them)


def _save(path, nodes, inputs=("x",), outputs=("y",), opsets=(("", 17), (CUSTOM, 1))):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(name, TensorProto.FLOAT, [2, 3]) for name in inputs],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    onnx.save(model, path)
    return path


def _body(op_type, name):
    """A one-node graph reading the outer `x`: a branch body, or a Loop/Scan body with its inputs."""
    return helper.make_graph([helper.make_node(op_type, ["x"], [f"{name}_out"], name=f"/{name}/op")], name, [],
                             [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, None)])


def test_nodes_of_one_op_keep_their_own_attribute_values(tmp_path):
    nodes = [
        helper.make_node("Blob", ["x"], ["a"], name="/n0", domain=CUSTOM, k=[1, 2], mode="up"),
        helper.make_node("Blob", ["a"], ["b"], name="/n1", domain=CUSTOM, k=[3, 4], mode="up"),
        helper.make_node("Blob", ["b"], ["c"], name="/n2", domain=CUSTOM, k=[1, 2], mode="down"),
        helper.make_node("Blob", ["c"], ["d"], name="/n3", domain=CUSTOM, j=[1, 2]),  # same value, other name
        helper.make_node("Blob", ["d"], ["e"], name="/n4", domain=CUSTOM, k=1),  # same name, other types
        helper.make_node("Blob", ["e"], ["f"], name="/n5", domain=CUSTOM, k=1.0),
        helper.make_node("Blob", ["f"], ["y"], name="/n6", domain=CUSTOM, k=[1.0, 2.0]),
    ]
    graph = open_model(_save(tmp_path / "m.onnx", nodes)).main_graph
    attributes = [node.attributes for node in graph.nodes]
    assert attributes == [{"k": (1, 2), "mode": "up"}, {"k": (3, 4), "mode": "up"}, {"k": (1, 2), "mode": "down"},
                          {"j": (1, 2)}, {"k": 1}, {"k": 1.0}, {"k": (1.0, 2.0)}]
    assert [type(a["k"]) for a in attributes if "k" in a][3:5] == [int, float]
    assert isinstance(attributes[6]["k"][0], float)
    assert len({id(a) for a in attributes}) == len(attributes)  # no node shares another's dict


def test_every_attribute_kind_is_read_for_every_node(tmp_path):
    def attributes():
        return dict(
            i=7, f=0.5, s="same", ints=[1, -2, 3], floats=[0.25, 1.5], strings=["a", "b"],
            t=numpy_helper.from_array(np.array([1, 2], np.int64)),
            big=numpy_helper.from_array(np.zeros((4, 8), np.float32)),
            sparse=helper.make_sparse_tensor(numpy_helper.from_array(np.array([1.0], np.float32)),
                                             numpy_helper.from_array(np.array([0], np.int64)), [3]),
            tp=helper.make_tensor_type_proto(TensorProto.FLOAT, [1]),
            body=_body("Relu", "b"), bodies=[_body("Neg", "b0"), _body("Abs", "b1")])
    nodes = [helper.make_node("Every", ["x"], ["a"], name="/first", domain=CUSTOM, **attributes()),
             helper.make_node("Relu", ["a"], ["b"], name="/between"),
             helper.make_node("Every", ["b"], ["y"], name="/second", domain=CUSTOM, **attributes())]
    graph = open_model(_save(tmp_path / "m.onnx", nodes)).main_graph
    expected = {"i": 7, "f": 0.5, "s": "same", "ints": (1, -2, 3), "floats": (0.25, 1.5), "strings": ("a", "b"),
                "t": {"tensor": "2", "dtype": "int64", "values": (1, 2)},
                "big": {"tensor": "4x8", "dtype": "float32"},
                "sparse": "<sparse_tensor>", "tp": "<type_proto>"}
    first, between, second = graph.nodes
    assert first.attributes == expected and second.attributes == expected
    assert between.attributes == {} and between.subgraphs == {}
    assert first.attributes["t"] is not second.attributes["t"]  # tensor descriptions are dicts: one each
    for node in (first, second):
        assert list(node.subgraphs) == ["bodies[0]", "bodies[1]", "body"]  # make_node sorts attributes by name
        assert [n.op_type for body in node.subgraphs.values() for n in body.nodes] == ["Neg", "Abs", "Relu"]
    assert first.subgraphs["body"] is not second.subgraphs["body"]


def test_control_flow_nodes_with_equal_bodies_each_keep_theirs(tmp_path):
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    trip = helper.make_tensor_value_info("trip", TensorProto.INT64, [])
    loop_body = helper.make_graph(
        [helper.make_node("Identity", ["c_in"], ["c_out"], name="/loop/id"),
         helper.make_node("Relu", ["x"], ["scan_out"], name="/loop/relu")], "loop",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("c_in", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("scan_out", TensorProto.FLOAT, None)])
    scan_body = helper.make_graph(
        [helper.make_node("Add", ["s_in", "e_in"], ["s_out"], name="/scan/add"),
         helper.make_node("Identity", ["s_out"], ["e_out"], name="/scan/id")], "scan",
        [helper.make_tensor_value_info("s_in", TensorProto.FLOAT, [3]), helper.make_tensor_value_info("e_in", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("s_out", TensorProto.FLOAT, [3]), helper.make_tensor_value_info("e_out", TensorProto.FLOAT, [3])])
    nodes = [
        helper.make_node("If", ["cond"], ["b1"], name="/if1", then_branch=_body("Relu", "t"), else_branch=_body("Neg", "e")),
        helper.make_node("If", ["cond"], ["b2"], name="/if2", then_branch=_body("Relu", "t"), else_branch=_body("Neg", "e")),
        helper.make_node("Loop", ["trip", "cond"], ["c_final", "stacked"], name="/loop", ),
        helper.make_node("Scan", ["x", "x"], ["s_final", "scanned"], name="/scan", body=scan_body, num_scan_inputs=1),
        helper.make_node("Add", ["b1", "b2"], ["y"], name="/sum"),
    ]
    nodes[2].attribute.append(helper.make_attribute("body", loop_body))
    graph = helper.make_graph(nodes, "g", [cond, trip, helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    model = open_model(path)
    if1, if2, loop, scan, total = model.main_graph.nodes
    assert [n.id for n in (if1, if2, loop, scan, total)] == ["/if1", "/if2", "/loop", "/scan", "/sum"]
    for branch in (if1, if2):
        assert branch.attributes == {}
        assert {k: [n.op_type for n in g.nodes] for k, g in branch.subgraphs.items()} == {
            "then_branch": ["Relu"], "else_branch": ["Neg"]}
    assert if1.subgraphs["then_branch"] is not if2.subgraphs["then_branch"]
    assert loop.attributes == {} and [n.id for n in loop.subgraphs["body"].nodes] == ["/loop/id", "/loop/relu"]
    assert scan.attributes == {"num_scan_inputs": 1}
    assert [n.id for n in scan.subgraphs["body"].nodes] == ["/scan/add", "/scan/id"]
    assert scan.subgraphs["body"].value_type("s_out") == TensorType("float32", (3,))
    assert total.subgraphs == {} and total.inputs == ("b1", "b2")


NAMES_AND_NAMESPACES = [("/enc/l1/conv/Conv", "enc/l1/conv"), ("/a/b/", "a/b"), ("x/", "x"), ("/Conv", ""),
                        ("a/b/c", "a/b"), ("plain", ""), ("/", ""), ("", "")]


@pytest.mark.parametrize("with_empty_parts", [False, True], ids=["usual names", "names with //"])
def test_ids_and_namespaces_follow_each_name(tmp_path, with_empty_parts):
    names_and_namespaces = list(NAMES_AND_NAMESPACES)
    if with_empty_parts:  # one such name anywhere sends every name through the general rule
        names_and_namespaces += [("//x//y/Conv", "x/y"), ("/a//b/c", "a/b")]
    names = [name for name, _ in names_and_namespaces] + ["/enc/l1/conv/Conv", "Relu_7", "", "Relu_7"]
    nodes = [helper.make_node("Relu", [f"v{i}"], [f"v{i + 1}"], name=name) for i, name in enumerate(names)]
    nodes[0].input[0], nodes[-1].output[0] = "x", "y"
    graph = open_model(_save(tmp_path / "m.onnx", nodes)).main_graph
    expected_namespaces = [ns for _, ns in names_and_namespaces] + ["enc/l1/conv", "", "", ""]
    assert [n.namespace for n in graph.nodes] == expected_namespaces
    assert [n.namespace for n in graph.nodes] == [onnx_importer._namespace(name) for name in names]
    # Unnamed nodes take "<op>_<index>" (node 7 here: "Relu_7"); a name taken already gets "#2", "#3"...
    assert graph.nodes[7].id == "Relu_7"
    assert [n.id for n in graph.nodes][-4:] == ["/enc/l1/conv/Conv#2", "Relu_7#2", f"Relu_{len(names) - 2}", "Relu_7#3"]
    assert graph.nodes[0].id == "/enc/l1/conv/Conv"
    assert [n.name for n in graph.nodes] == names
    assert len({n.id for n in graph.nodes}) == len(names)


def test_unknown_ops_are_listed_once_per_op_in_node_order(tmp_path):
    nodes = [helper.make_node("Mystery", ["x"], ["a"], name="/m1", domain=CUSTOM),
             helper.make_node("Relu", ["a"], ["b"], name="/r"),
             helper.make_node("Other", ["b"], ["c"], name="/o", domain=CUSTOM),
             helper.make_node("Mystery", ["c"], ["y"], name="/m2", domain=CUSTOM)]
    model = open_model(_save(tmp_path / "m.onnx", nodes))
    unknown = [w for w in model.warnings if "not a standard ONNX op" in w]
    assert unknown[0].startswith(f"op 'Mystery' (domain {CUSTOM}) is not a standard ONNX op: /m1, /m2 ")
    assert unknown[1].startswith(f"op 'Other' (domain {CUSTOM}) is not a standard ONNX op: /o ")
    assert len(unknown) == 2


def test_nodes_and_values_built_without_their_constructor_equal_constructed_ones():
    assert onnx_importer.FAST_IR_CONSTRUCTION, (
        "engine.ir.Node or Value changed: update importers/onnx.py _node/_value and their field lists")
    attributes = {"k": (1, 2)}
    fast = onnx_importer._node("id", "Conv", "/a/Conv", "a", ("x", "w"), ("y",), attributes, "")
    built = Node("id", "Conv", "/a/Conv", "a", ("x", "w"), ("y",), attributes, {}, "")
    assert type(fast) is Node and fast == built and repr(fast) == repr(built) and hash(fast) == hash(built)
    assert [getattr(fast, f.name) for f in dataclasses.fields(Node)] == [getattr(built, f.name) for f in dataclasses.fields(Node)]
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.id = "other"
    value_type = TensorType("float32", (1, 3))
    for given, expected in ((onnx_importer._value("v", value_type), Value("v", value_type)),
                            (onnx_importer._value("u", None), Value("u"))):
        assert type(given) is Value and given == expected and repr(given) == repr(expected)
        assert given.type is expected.type and not given.is_constant
    with pytest.raises(dataclasses.FrozenInstanceError):
        onnx_importer._value("v", None).name = "w"
