"""The analysis's index-array passes and per-signature figures against plain reference versions.

Big graphs (engine.analysis.INDEX_FROM_NODES) get their execution order, constant folding and
peak memory on numpy arrays of value ids, and a node's figures once per (op, attributes,
input/output types) signature.  The references are the straightforward walks those replaced
(engine.analysis.walks: node by node, name by name, the analysis of small graphs) and, below,
every node's figures computed on their own.  On random graphs with the awkward cases (nodes out
of file order, cycles, names produced twice, omitted "" inputs, names without a value, graph
inputs with initializers, Shape of static and dynamic tensors, random and control-flow ops,
attributes that change a cost) every figure must be equal.
"""
from __future__ import annotations

import random
import subprocess
import sys

import pytest

from conftest import light_model
from engine.analysis import NodeMetrics, _analyze, analyze, costs, walks
from engine.analysis.graph_index import GraphIndex, peak_activation
from engine.ir import FLOAT_DTYPES, Graph, Initializer, Model, Node, TensorType, Value, WeightLocation

PARAM_DTYPES = FLOAT_DTYPES | {"int8", "uint8", "int4", "uint4"}


# ---------------------------------------------------------------------------- references


def reference_metrics(graph: Graph, order: list[Node], constant_values: set[str], constant_nodes: set[str]):
    """Every node's figures computed on their own (no reuse), and the sums."""
    metrics, counted, by_dtype, unknown = {}, set(), {}, []
    sums = dict(params=0, buffers=0, weight_bytes=0, macs=0, flops=0)
    for position, node in enumerate(order):
        is_constant = node.id in constant_nodes
        params = param_bytes = buffers = 0
        cost = costs.Cost(0, 0)
        input_bytes = 0
        out_types = [graph.value_type(name) if name else None for name in node.outputs]
        if not is_constant:
            op = costs.canonical_op(node)
            arguments, buffer_slots = costs.argument_inputs(op, node), costs.buffer_inputs(op, node)
            in_types = [graph.value_type(name) if name else None for name in node.inputs]
            for index, name in enumerate(node.inputs):
                if not name:
                    continue
                value_type = in_types[index]
                size = value_type.byte_size if value_type is not None else None
                if name in constant_values:
                    if index in arguments or value_type is None or value_type.dtype not in PARAM_DTYPES \
                            or value_type.shape == ():
                        continue
                    size = size or 0
                    input_bytes = None if input_bytes is None else input_bytes + size
                    if name in counted:
                        continue
                    counted.add(name)
                    sums["weight_bytes"] += size
                    if index in buffer_slots:
                        buffers += value_type.element_count or 0
                    else:
                        params += value_type.element_count or 0
                        param_bytes += size
                        by_dtype[value_type.dtype] = by_dtype.get(value_type.dtype, 0) + (value_type.element_count or 0)
                else:
                    input_bytes = None if size is None or input_bytes is None else input_bytes + size
            cost = costs.cost_from_types(node, op, in_types, out_types)
            if cost.flops is None:
                unknown.append(node.id)
        output_bytes = 0
        for name, value_type in zip(node.outputs, out_types):
            if name:
                size = value_type.byte_size if value_type is not None else None
                output_bytes = None if size is None or output_bytes is None else output_bytes + size
        moved = None if input_bytes is None or output_bytes is None else input_bytes + output_bytes
        intensity = cost.flops / moved if cost.flops is not None and moved else None
        sums["params"] += params
        sums["buffers"] += buffers
        sums["macs"] += cost.macs or 0
        sums["flops"] += cost.flops or 0
        metrics[node.id] = (node.id, node.op_type, position, is_constant, params, param_bytes, buffers, cost.macs,
                            cost.flops, output_bytes, moved, intensity,
                            costs.spatial_size(out_types[0] if out_types else None, graph.channels_last))
    return metrics, sums, by_dtype, tuple(unknown)


# ---------------------------------------------------------------------------- random graphs

SHAPES = [(1, 8, 4, 4), (1, 8, 2, 2), (1, 16), (16, 8), (4,), (), (1, "n", 4, 4), None]
DTYPES = ["float32", "float32", "float16", "int64", "int8"]
OPS = [("Relu", {}), ("Add", {}), ("Sum", {}), ("Conv", {"kernel_shape": (3, 3)}), ("Conv", {"kernel_shape": (1, 1)}),
       ("MaxPool", {"kernel_shape": (2, 2)}), ("MaxPool", {"kernel_shape": (3, 3)}), ("Gemm", {"transA": 0}),
       ("Gemm", {"transA": 1}), ("Gemm", {"transA": True}), ("Resize", {"mode": "linear"}),
       ("Resize", {"mode": "nearest"}), ("LRN", {"size": 3}), ("LRN", {"size": 5}), ("MatMul", {}),
       ("Reshape", {}), ("BatchNormalization", {}), ("Softmax", {"axis": -1}), ("Identity", {}), ("Shape", {}),
       ("Size", {}), ("RandomNormalLike", {}), ("If", {}), ("FancyOp", {}), ("ConvTranspose", {}),
       ("Transpose", {"perm": [0, 2, 3, 1]}), ("Pad", {"pads": (0, 1)})]


def random_model(seed: int, nodes: int = 60) -> Model:
    rng = random.Random(seed)
    values: dict[str, Value] = {}

    def tensor_type():
        shape = rng.choice(SHAPES)
        return None if rng.random() < 0.05 else TensorType(rng.choice(DTYPES), shape)

    inputs = [f"in{i}" for i in range(rng.randint(1, 3))]
    for name in inputs:
        values[name] = Value(name, tensor_type())
    for i in range(rng.randint(3, 10)):  # weights; one of them also a graph input
        t = TensorType(rng.choice(DTYPES), rng.choice(SHAPES[:6]))
        values[f"w{i}"] = Value(f"w{i}", t, Initializer(t, WeightLocation("inline")))
    if rng.random() < 0.5:
        inputs.append("w0")
    available = list(values)
    body = Graph("body", (), (), (), {})
    node_list = []
    for i in range(nodes):
        op_type, attributes = rng.choice(OPS)
        count = rng.randint(1, 4) if op_type in ("Sum", "Add", "Conv", "Gemm", "BatchNormalization") else \
            rng.randint(1, 2)
        node_inputs = [rng.choice(available) for _ in range(count)]
        if rng.random() < 0.1:
            node_inputs.insert(rng.randrange(len(node_inputs) + 1), "")  # an omitted optional input
        if rng.random() < 0.03:
            node_inputs.append(f"nowhere{i}")  # a name nothing produces and no value describes
        outputs = [f"t{i}"]
        if rng.random() < 0.1:
            outputs.append("" if rng.random() < 0.5 else f"t{i}_extra")
        if rng.random() < 0.05 and node_list:
            outputs = [rng.choice(node_list).outputs[0]]  # a name produced twice
        for out in outputs:
            if out and out not in values and rng.random() < 0.9:  # some outputs have no value
                values[out] = Value(out, tensor_type())
        node_list.append(Node(f"n{i}", op_type, inputs=tuple(node_inputs), outputs=tuple(outputs),
                              attributes=dict(attributes), subgraphs={"then_branch": body} if op_type == "If" else {}))
        available.extend(out for out in outputs if out)
    if rng.random() < 0.5:  # out of file order: a topological sort must run
        rng.shuffle(node_list)
    if rng.random() < 0.2 and len(node_list) > 2:  # a cycle
        a, b = node_list[0], node_list[-1]
        node_list[0] = Node(a.id, a.op_type, inputs=a.inputs + b.outputs[:1], outputs=a.outputs,
                            attributes=a.attributes, subgraphs=a.subgraphs)
    outputs = tuple(rng.sample([n.outputs[0] for n in node_list], 3))
    graph = Graph("g", tuple(inputs), outputs, tuple(node_list), values, channels_last=rng.random() < 0.3)
    return Model("onnx", "test", (graph,))


# ---------------------------------------------------------------------------- tests


def digest(analysis) -> tuple:
    t = analysis.totals
    return (analysis.order, [(key, tuple(m)) for key, m in analysis.nodes.items()],
            [(s.name, s.kind, s.node_ids, s.macs, s.flops, s.params) for s in analysis.stages],
            (t.nodes, t.compute_nodes, t.constant_nodes, t.params, list(t.params_by_dtype.items()), t.buffers,
             t.weight_bytes, t.macs, t.flops, t.peak_activation_bytes, t.peak_node_id, t.unknown_cost_nodes))


@pytest.mark.parametrize("seed", range(40))
def test_analysis_on_index_arrays_equals_the_plain_walks_on_random_graphs(seed):
    model = random_model(seed)
    graph = model.graphs[0]
    order = walks.execution_order(graph)
    constant_values, constant_nodes = walks.fold_constants(graph, order)
    expected, sums, by_dtype, unknown = reference_metrics(graph, order, constant_values, constant_nodes)

    analysis = _analyze(model, 0, by_index=True)
    assert digest(analysis) == digest(_analyze(model, 0, by_index=False))
    assert analysis.order == tuple(n.id for n in order)
    assert {node_id: tuple(m)[:13] for node_id, m in analysis.nodes.items()} == expected
    assert list(analysis.nodes) == list(expected)
    t = analysis.totals
    assert (t.params, t.buffers, t.weight_bytes, t.macs, t.flops) == \
        (sums["params"], sums["buffers"], sums["weight_bytes"], sums["macs"], sums["flops"])
    assert list(t.params_by_dtype.items()) == list(by_dtype.items())
    assert t.unknown_cost_nodes == unknown
    assert t.constant_nodes == len(constant_nodes)
    assert (t.peak_activation_bytes, t.peak_node_id) == walks.peak_activation(graph, order, constant_values)
    for stage in analysis.stages:
        members = [analysis.nodes[i] for i in stage.node_ids]
        assert (stage.macs, stage.flops, stage.params) == (sum(m.macs or 0 for m in members),
                                                           sum(m.flops or 0 for m in members),
                                                           sum(m.params for m in members))
    assert sorted(i for s in analysis.stages for i in s.node_ids) == sorted(analysis.order)


@pytest.mark.parametrize("seed", range(40))
def test_index_passes_equal_the_walks(seed):
    graph = random_model(seed, nodes=120).graphs[0]
    order = walks.execution_order(graph)
    in_file_order = [n.id for n in order] == [n.id for n in graph.nodes]
    assert GraphIndex(graph, graph.nodes).file_order_is_valid() == in_file_order
    index = GraphIndex(graph, order)
    constant_values, constant_nodes = walks.fold_constants(graph, order)
    constant_value, folded = index.fold_constants()
    assert {index.names[i] for i in constant_value.nonzero()[0]} == constant_values - {""}
    assert {order[p].id for p in folded.nonzero()[0]} == constant_nodes
    assert peak_activation(index, constant_value) == walks.peak_activation(graph, order, constant_values)


def test_small_graphs_are_analysed_without_the_index():
    # the CLI's inspect of a small model imports no numpy for the analysis (see INDEX_FROM_NODES)
    code = (f"import sys\nfrom importers import open_model\nfrom engine.analysis import analyze\n"
            f"analyze(open_model({str(light_model('resnet50'))!r}))\n"
            f"print('numpy' in sys.modules, 'engine.analysis.graph_index' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.stdout.split() == ["False", "False"], done.stderr


def test_nodes_of_equal_types_but_other_attributes_or_constness_get_their_own_figures():
    # figures are reused between nodes of one signature: these pairs differ only in what the
    # signature must tell apart (an attribute the cost reads; a constant input or an activation)
    f = TensorType("float32", (16, 8))
    image, pooled = TensorType("float32", (1, 8, 8, 8)), TensorType("float32", (1, 8, 4, 4))
    values = {"x": Value("x", f), "w": Value("w", f, Initializer(f, WeightLocation("inline"))),
              "v": Value("v", f, Initializer(f, WeightLocation("inline"))), "img": Value("img", image), "y": Value("y", f)}
    specs = [("Gemm", ("x", "w"), f, {"transA": 0}), ("Gemm", ("x", "w"), f, {"transA": 1}),
             ("Gemm", ("x", "w"), f, {"transA": 0}), ("MaxPool", ("img",), pooled, {"kernel_shape": (2, 2)}),
             ("MaxPool", ("img",), pooled, {"kernel_shape": (3, 3)}), ("Resize", ("img",), image, {"mode": "linear"}),
             ("Resize", ("img",), image, {"mode": "nearest"}), ("LRN", ("img",), image, {"size": 3}),
             ("LRN", ("img",), image, {"size": 5}), ("Add", ("x", "v"), f, {}), ("Add", ("x", "y"), f, {}),
             ("Add", ("x", "v"), f, {}), ("Relu", ("x",), f, {"unused": [1, 2]})]
    nodes = [Node("make_y", "Relu", inputs=("x",), outputs=("y",))]
    for i, (op, inputs, out_type, attributes) in enumerate(specs):
        nodes.append(Node(f"n{i}", op, inputs=inputs, outputs=(f"o{i}",), attributes=attributes))
        values[f"o{i}"] = Value(f"o{i}", out_type)
    graph = Graph("g", ("x", "img"), tuple(f"o{i}" for i in range(len(specs))), tuple(nodes), values)
    analysis = _analyze(Model("onnx", "test", (graph,)), 0, by_index=True)
    constant_values, constant_nodes = walks.fold_constants(graph, list(nodes))
    expected = reference_metrics(graph, list(nodes), constant_values, constant_nodes)[0]
    assert {node_id: tuple(m)[:13] for node_id, m in analysis.nodes.items()} == expected
    assert analysis.nodes["n0"].macs != analysis.nodes["n1"].macs  # the case is a real one
    assert analysis.nodes["n9"].params == 128 and analysis.nodes["n10"].params == 0


def test_a_node_listed_just_before_its_producer_runs_after_it():
    t = TensorType("float32", (4,))
    values = {name: Value(name, t) for name in "xaby"}
    nodes = (Node("first", "Relu", inputs=("x",), outputs=("a",)), Node("third", "Add", inputs=("b", "a"), outputs=("y",)),
             Node("second", "Relu", inputs=("a",), outputs=("b",)))
    graph = Graph("g", ("x",), ("y",), nodes, values)
    for by_index in (True, False):
        assert _analyze(Model("onnx", "test", (graph,)), 0, by_index).order == ("first", "second", "third")


def test_a_long_chain_of_constants_folds_like_the_walk():
    # 200 folded nodes in a row: more whole-array steps than fold_constants takes before it walks
    t = TensorType("float32", (4, 4))
    values = {"w": Value("w", t, Initializer(t, WeightLocation("inline"))), "x": Value("x", t)}
    nodes = []
    for i in range(200):
        nodes.append(Node(f"c{i}", "Identity", inputs=("w" if i == 0 else f"c{i - 1}",), outputs=(f"c{i}",)))
        values[f"c{i}"] = Value(f"c{i}", t)
    nodes.append(Node("add", "Add", inputs=("x", "c199"), outputs=("y",)))
    values["y"] = Value("y", t)
    graph = Graph("g", ("x",), ("y",), tuple(nodes), values)
    analysis = _analyze(Model("onnx", "test", (graph,)), 0, by_index=True)
    assert digest(analysis) == digest(_analyze(Model("onnx", "test", (graph,)), 0, by_index=False))
    assert analysis.totals.constant_nodes == 200
    assert analysis.nodes["add"].params == 16 and not analysis.nodes["add"].is_constant


def test_sizes_beyond_64_bits_stay_exact():
    # a 2**60-element float64 tensor: sums past 2**63, computed with Python integers
    huge = TensorType("float64", (2 ** 30, 2 ** 30))
    values = {"x": Value("x", huge), "a": Value("a", huge), "b": Value("b", huge)}
    nodes = (Node("r", "Relu", inputs=("x",), outputs=("a",)), Node("s", "Add", inputs=("a", "x"), outputs=("b",)))
    analysis = _analyze(Model("onnx", "test", (Graph("g", ("x",), ("b",), nodes, values),)), 0, by_index=True)
    assert analysis.totals.peak_activation_bytes == 3 * 8 * 2 ** 60
    assert analysis.totals.peak_node_id == "s"


def test_node_metrics_are_immutable():
    analysis = analyze(random_model(1))
    metrics = next(iter(analysis.nodes.values()))
    assert isinstance(metrics, NodeMetrics)
    with pytest.raises(AttributeError):
        metrics.flops = 1  # type: ignore[misc]


def test_value_types_are_interned_by_dtype_and_shape_shared_objects_or_not():
    """Importers share one TensorType object among values of a type (the index makes a key per
    object); other graphs have equal types as objects of their own: both number a type by the
    first value of that dtype and shape, and give equal types one id."""
    rng = random.Random(7)
    shared = [TensorType(dtype, shape) for dtype in ("float32", "int64") for shape in ((1, 4), (2,), None)]
    values = {}
    for i in range(300):
        pick = rng.random()
        if pick < 0.5:
            value_type = rng.choice(shared)  # a shared object
        elif pick < 0.9:
            value_type = TensorType(rng.choice(("float32", "int64", "float16")), rng.choice(((1, 4), (2,), None)))
        else:
            value_type = None
        values[f"v{i}"] = Value(f"v{i}", value_type)
    nodes = tuple(Node(f"n{i}", "Relu", inputs=(f"v{i}",), outputs=(f"v{i + 1}",)) for i in range(299))
    graph = Graph("g", ("v0",), ("v299",), nodes, values)
    index = GraphIndex(graph, graph.nodes)
    numbered: dict[tuple, int] = {}  # the plain interning: a type id per (dtype, shape), first seen first
    expected = [0]
    for value in values.values():
        if value.type is None:
            expected.append(0)
        else:
            expected.append(numbered.setdefault((value.type.dtype, value.type.shape), len(numbered) + 1))
    assert index.type_id.tolist() == [-1] + expected[1:]
    assert [None if t is None else (t.dtype, t.shape) for t in index.types] == [None] + list(numbered)
    assert index.size.tolist() == [0] + [(v.type.byte_size or 0) if v.type else 0 for v in values.values()]
