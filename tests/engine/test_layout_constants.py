"""engine.layout with constants shown: each constant drawn beside the node it feeds, nothing else moves."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import LIGHT_ZOO, light_model
from engine.analysis import analyze
from engine.layout import (CONSTANT_GAP, CONSTANT_HEIGHT, CONSTANT_LIFT, CONSTANT_SIDE_GAP, CONSTANT_WIDTH,
                           NODE_WIDTH, OUTPUT_PREFIX, GraphLayout, layout_graph, node_groups)
from engine.transformer_samples import TransformerConfig, write_transformer
from importers import open_model

# The farthest a constant of DenseNet-121 may be from the box it feeds: a BatchNormalization's
# four constants side by side, one row above it.  Before constants were attached to their
# consumers they sat in the top layer, tens of thousands of units away.
NEAR = 3 * (CONSTANT_WIDTH + CONSTANT_GAP) + CONSTANT_SIDE_GAP + CONSTANT_LIFT + 1.0


def _gap(a, b) -> float:
    """Distance between two rectangles (0 when they touch or overlap)."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    dx = max(0.0, bx - (ax + aw), ax - (bx + bw))
    dy = max(0.0, by - (ay + ah), ay - (by + bh))
    return float(np.hypot(dx, dy))


def _overlapping_pairs(layout: GraphLayout) -> list[tuple[str, str]]:
    ids = list(layout.boxes)
    r = np.array([layout.boxes[i] for i in ids], dtype=float)
    x0, y0, x1, y1 = r[:, 0], r[:, 1], r[:, 0] + r[:, 2], r[:, 1] + r[:, 3]
    found = []
    for i in range(len(ids)):
        hit = (x0[i + 1:] < x1[i] - 1e-6) & (x1[i + 1:] > x0[i] + 1e-6) \
            & (y0[i + 1:] < y1[i] - 1e-6) & (y1[i + 1:] > y0[i] + 1e-6)
        found += [(ids[i], ids[i + 1 + j]) for j in np.flatnonzero(hit)]
    return found


def _consumer_box(analysis, layout: GraphLayout, constant: str) -> str | None:
    """The box of the first node reading `constant`, following constants that read constants."""
    graph = analysis.graph
    readers = {}
    for node_id in analysis.order:
        for name in graph.node(node_id).inputs:
            readers.setdefault(name, []).append(node_id)
    node_id = constant
    while True:
        found = [r for name in graph.node(node_id).outputs for r in readers.get(name, ())]
        if not found:
            outputs = [OUTPUT_PREFIX + n for n in graph.node(node_id).outputs if OUTPUT_PREFIX + n in layout.boxes]
            return outputs[0] if outputs else None
        node_id = min(found, key=lambda n: analysis.nodes[n].order)
        if not analysis.nodes[node_id].is_constant:
            return layout.box_of(node_id)


def _check(analysis, shown: GraphLayout, hidden: GraphLayout) -> None:
    """Every constant drawn, nothing else moved, no box on another, edges end on their boxes."""
    constants = {n for n, m in analysis.nodes.items() if m.is_constant and n not in hidden.box_for}
    assert constants <= set(shown.boxes)
    assert shown.hidden == frozenset()
    assert {k: v for k, v in shown.boxes.items() if k not in constants} == dict(hidden.boxes)
    assert set(hidden.edges) <= set(shown.edges)
    assert _overlapping_pairs(shown) == []
    for node_id, (x, y, w, h) in shown.boxes.items():
        assert shown.left <= x and x + w <= shown.width and shown.top <= y and y + h <= shown.height
    for edge in shown.edges:
        sx, sy, sw, sh = shown.boxes[edge.source]
        tx, ty, tw, _ = shown.boxes[edge.target]
        assert edge.points[0][1] == pytest.approx(sy + sh) and sx <= edge.points[0][0] <= sx + sw
        assert edge.points[-1][1] == pytest.approx(ty) and tx <= edge.points[-1][0] <= tx + tw
        if edge.source in constants and edge.points[-1][1] > edge.points[0][1]:  # a short edge: never back up
            ys = [p[1] for p in edge.points]
            assert ys == sorted(ys)
    for constant in constants:
        consumer = _consumer_box(analysis, shown, constant)
        if consumer is not None:
            assert shown.layers[constant] == shown.layers[consumer]


def test_densenet_constants_beside_their_consumers():
    analysis = analyze(open_model(light_model("densenet121")))
    hidden = layout_graph(analysis)
    shown = layout_graph(analysis, include_constants=True)
    constants = [n for n, m in analysis.nodes.items() if m.is_constant]
    assert len(constants) == 1078
    _check(analysis, shown, hidden)
    for constant in constants:
        consumer = _consumer_box(analysis, shown, constant)
        assert _gap(shown.boxes[constant], shown.boxes[consumer]) <= NEAR, constant
        # Above the consumer's top (or level with it), never below it.
        assert shown.boxes[constant][1] + CONSTANT_HEIGHT <= shown.boxes[consumer][1] - CONSTANT_LIFT + 1e-6
    # The drawing grows by the constants beside the graph, not by a row of them across the page.
    assert shown.height == hidden.height
    assert shown.width - shown.left <= hidden.width + 4 * (CONSTANT_WIDTH + CONSTANT_GAP) + CONSTANT_SIDE_GAP


@pytest.mark.parametrize("path", LIGHT_ZOO, ids=lambda p: p.stem)
def test_light_zoo_constants_shown(path):
    analysis = analyze(open_model(path))
    shown = layout_graph(analysis, include_constants=True)
    _check(analysis, shown, layout_graph(analysis))
    nearest: dict[str, float] = {}  # consumer box -> the distance of its nearest constant
    for constant, metrics in analysis.nodes.items():
        if metrics.is_constant:
            consumer = _consumer_box(analysis, shown, constant)
            nearest[consumer] = min(nearest.get(consumer, np.inf), _gap(shown.boxes[constant], shown.boxes[consumer]))
    if "inception" not in path.stem:
        # A chain of layers (branches at most two wide): every consumer's constants right beside it.
        # Inception's layers are four branches wide with 30 units between boxes: constants of an
        # inner branch are slid out past its neighbours (no overlap is checked above).
        assert max(nearest.values()) <= np.hypot(CONSTANT_SIDE_GAP, CONSTANT_LIFT) + 1e-6


def _tricky_model(path) -> None:
    """Three Convs side by side (the left of two is taken), a constant read by two nodes, a chain of
    constants with two feeders, a shape computed from a tensor the graph makes, a constant no
    one reads and one that is a graph output."""
    rng = np.random.default_rng(0)

    def constant(name, array):
        return helper.make_node("Constant", [], [name], name=f"/{name}/Constant",
                                value=numpy_helper.from_array(np.asarray(array), name))

    nodes = []
    for b in range(3):
        nodes += [constant(f"w{b}", rng.standard_normal((8, 8, 3, 3)).astype(np.float32)),
                  helper.make_node("Conv", ["x", f"w{b}"], [f"c{b}"], name=f"/branch{b}/Conv", pads=[1, 1, 1, 1])]
    nodes += [
        helper.make_node("Shape", ["c0"], ["shape"], name="/Shape"),
        helper.make_node("Sum", ["c0", "c1", "c2"], ["sum"], name="/Sum"),
        constant("scale", np.ones((1, 8, 1, 1), np.float32)),
        helper.make_node("Mul", ["sum", "scale"], ["m1"], name="/Mul"),
        helper.make_node("Add", ["m1", "scale"], ["m2"], name="/Add"),
        constant("k", np.ones((8,), np.float32)),
        constant("axes", np.array([0, 2, 3], np.int64)),
        helper.make_node("Unsqueeze", ["k", "axes"], ["k4"], name="/Unsqueeze"),
        helper.make_node("Add", ["m2", "k4"], ["m3"], name="/Add_1"),
        helper.make_node("Reshape", ["m3", "shape"], ["y"], name="/Reshape"),
        constant("unused", np.zeros((2,), np.float32)),
        constant("bias_out", np.zeros((8,), np.float32)),
    ]
    graph = helper.make_graph(nodes, "tricky", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16]),
                               helper.make_tensor_value_info("bias_out", TensorProto.FLOAT, [8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(onnx.shape_inference.infer_shapes(model), str(path))


def test_constants_of_every_kind_placed(tmp_path):
    path = tmp_path / "tricky.onnx"
    _tricky_model(path)
    analysis = analyze(open_model(path))
    ids = {analysis.graph.node(n).name: n for n in analysis.order}
    constants = {n for n, m in analysis.nodes.items() if m.is_constant}
    assert {analysis.graph.node(n).name for n in constants} >= {"/Shape", "/Unsqueeze", "/unused/Constant"}
    hidden = layout_graph(analysis)
    shown = layout_graph(analysis, include_constants=True)
    _check(analysis, shown, hidden)
    edges = {(e.source, e.target, e.value) for e in shown.edges}
    scale = ids["/scale/Constant"]
    assert {(scale, ids["/Mul"], "scale"), (scale, ids["/Add"], "scale")} <= edges  # read twice
    assert (ids["/branch0/Conv"], ids["/Shape"], "c0") in edges  # a shape of a computed tensor
    assert (ids["/bias_out/Constant"], OUTPUT_PREFIX + "bias_out", "bias_out") in edges
    # The chain k, axes -> Unsqueeze -> Add_1: the two feeders one row above the Unsqueeze.
    unsqueeze = shown.boxes[ids["/Unsqueeze"]]
    for feeder in ("/k/Constant", "/axes/Constant"):
        assert shown.boxes[ids[feeder]][1] + CONSTANT_HEIGHT + CONSTANT_GAP == pytest.approx(unsqueeze[1])
        assert (ids[feeder], ids["/Unsqueeze"]) in {(e.source, e.target) for e in shown.edges}
    # The Convs stand side by side in one layer, 30 units apart: the outer ones have their weight
    # right beside them, the middle one's is slid past one neighbour and that neighbour's weight.
    gaps = sorted(_gap(shown.boxes[ids[f"/w{b}/Constant"]], shown.boxes[ids[f"/branch{b}/Conv"]]) for b in range(3))
    assert gaps[:2] == pytest.approx([np.hypot(CONSTANT_SIDE_GAP, CONSTANT_LIFT)] * 2)
    assert gaps[2] <= np.hypot(NODE_WIDTH + CONSTANT_WIDTH + 3 * CONSTANT_SIDE_GAP, CONSTANT_LIFT)
    assert ids["/unused/Constant"] in shown.boxes


def test_constants_with_collapsed_groups(tmp_path):
    config = TransformerConfig(layers=3, hidden=64, heads=4, kv_heads=2, intermediate=96, vocab=50, past=5)
    analysis = analyze(open_model(write_transformer(tmp_path / "decoder.onnx", config)))
    groups = node_groups(analysis, "namespace")
    top = [g for g in groups.values() if g.name.startswith("model/layers.") and g.name.count("/") == 1]
    assert len(top) == 3 and any(analysis.nodes[m].is_constant for m in top[0].members)
    collapsed = {top[0].id}
    hidden = layout_graph(analysis, groups=groups, collapsed=collapsed)
    shown = layout_graph(analysis, include_constants=True, groups=groups, collapsed=collapsed)
    _check(analysis, shown, hidden)
    inside = [m for m in top[0].members if analysis.nodes[m].is_constant]
    assert inside and not set(inside) & set(shown.boxes)
    assert all(shown.box_of(m) == top[0].id for m in inside)
    opened = layout_graph(analysis, include_constants=True, groups=groups, collapsed=())
    _check(analysis, opened, layout_graph(analysis))
    assert set(inside) <= set(opened.boxes)
