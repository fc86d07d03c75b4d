"""engine.layout's fast way of placing shown constants: the numpy check of the spots just left of
their boxes, the bucketed overlap query, the vertical runs of edges, chains of constants and
the paused collector give what the one-by-one search gives."""
from __future__ import annotations

import gc

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import LIGHT_ZOO, light_model
from engine.analysis import analyze
from engine.layout import (CONSTANT_SIDE_GAP, LayoutEdge, _attach_constants, _constant_tree, _overlapping,
                           _vertical_runs, attach_constants, layout_graph, node_groups)
from engine.transformer_samples import TransformerConfig, write_transformer
from importers import open_model
from test_layout_constants import _overlapping_pairs, _tricky_model


def _same_as_searched(analysis, hidden) -> None:
    fast = attach_constants(hidden, analysis)
    searched = _attach_constants(hidden, analysis, True, search_all=True)
    assert fast.boxes == searched.boxes
    assert list(fast.boxes) == list(searched.boxes)  # the same order: the scene draws in it
    assert fast.edges == searched.edges
    assert (fast.layers, fast.width, fast.height, fast.left, fast.top) == \
        (searched.layers, searched.width, searched.height, searched.left, searched.top)


@pytest.mark.parametrize("path", LIGHT_ZOO, ids=lambda p: p.stem)
def test_light_zoo_spots_as_searched(path):
    # DenseNet-121, VGG, AlexNet: every spot just left of its box is free; Inception, ResNet-50,
    # SqueezeNet: some are taken (wide layers), and the search takes over from the first one.
    analysis = analyze(open_model(path))
    _same_as_searched(analysis, layout_graph(analysis))


def test_tricky_and_grouped_spots_as_searched(tmp_path):
    _tricky_model(tmp_path / "tricky.onnx")  # a taken spot, an orphan, a graph output, a tree of two feeders
    analysis = analyze(open_model(tmp_path / "tricky.onnx"))
    _same_as_searched(analysis, layout_graph(analysis))
    config = TransformerConfig(layers=2, hidden=64, heads=4, kv_heads=2, intermediate=96, vocab=50, past=5)
    analysis = analyze(open_model(write_transformer(tmp_path / "decoder.onnx", config)))
    groups = node_groups(analysis, "namespace")
    _same_as_searched(analysis, layout_graph(analysis))
    some = {g for g in groups if groups[g].name.startswith("model/layers.0")}
    _same_as_searched(analysis, layout_graph(analysis, groups=groups, collapsed=some))


def _tall_chain_model(path) -> None:
    """A Conv reading a weight, then an Add reading a constant through three Unsqueezes (opset 11:
    axes an attribute, so the four constants form a chain, four rows tall)."""
    rng = np.random.default_rng(0)

    def constant(name, array):
        return helper.make_node("Constant", [], [name], name=f"/{name}/Constant",
                                value=numpy_helper.from_array(np.asarray(array), name))

    nodes = [constant("w", rng.standard_normal((8, 8, 3, 3)).astype(np.float32)),
             helper.make_node("Conv", ["x", "w"], ["c"], name="/Conv", pads=[1, 1, 1, 1]),
             constant("k", np.ones((8,), np.float32))]
    for i, axis in enumerate((0, 2, 3)):
        nodes.append(helper.make_node("Unsqueeze", [f"k{i - 1}" if i else "k"], [f"k{i}"], name=f"/Unsqueeze_{i}",
                                      axes=[axis]))
    nodes.append(helper.make_node("Add", ["c", "k2"], ["y"], name="/Add"))
    graph = helper.make_graph(nodes, "tall", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)], ir_version=6)
    onnx.save(onnx.shape_inference.infer_shapes(model), str(path))


def test_tall_chain_kept_off_the_constants_above(tmp_path):
    # The chain's spot left of the Add reaches up past the Conv's weight, just left of the Conv:
    # only another tree is in the way there (no box, no edge), and the chain goes right.
    _tall_chain_model(tmp_path / "tall.onnx")
    analysis = analyze(open_model(tmp_path / "tall.onnx"))
    hidden = layout_graph(analysis)
    shown = attach_constants(hidden, analysis)
    ids = {analysis.graph.node(n).name: n for n in analysis.order}
    chain = [ids[name] for name in ("/k/Constant", "/Unsqueeze_0", "/Unsqueeze_1", "/Unsqueeze_2")]
    add, weight = shown.boxes[ids["/Add"]], shown.boxes[ids["/w/Constant"]]
    assert weight[0] + weight[2] < add[0]  # the weight left of the Conv (and so of the Add)
    assert all(shown.boxes[c][0] == add[0] + add[2] + CONSTANT_SIDE_GAP for c in chain)  # the chain right of it
    assert [shown.boxes[c][1] for c in chain] == sorted(shown.boxes[c][1] for c in chain)
    assert _overlapping_pairs(shown) == []
    _same_as_searched(analysis, hidden)


def _spans(rects: np.ndarray) -> np.ndarray:
    return np.stack([rects[:, 0], rects[:, 0] + rects[:, 2], rects[:, 1], rects[:, 1] + rects[:, 3]], axis=1)


def test_overlapping_finds_every_pair():
    # DenseNet-121's boxes and edge runs (some run thousands of units, across many buckets)
    # against its constants' boxes grown by the side gap (left of 0, above them).
    analysis = analyze(open_model(light_model("densenet121")))
    hidden = layout_graph(analysis)
    shown = attach_constants(hidden, analysis)
    obstacles = np.concatenate([np.array(list(hidden.boxes.values())), _vertical_runs(hidden.edges)])
    constants = np.array([shown.boxes[n] for n in shown.boxes if n not in hidden.boxes])
    queries = _spans(constants) + np.array([-CONSTANT_SIDE_GAP, CONSTANT_SIDE_GAP] * 2)
    queries[::7, 1] += 300.0  # some reach into the boxes on their right
    for spans in (_spans(obstacles), _spans(constants)):
        query, span = _overlapping(queries, spans)
        q, s = queries[:, None, :], spans[None, :, :]
        every = (s[..., 0] < q[..., 1]) & (s[..., 1] > q[..., 0]) & (s[..., 2] < q[..., 3]) & (s[..., 3] > q[..., 2])
        assert every.any()
        assert set(zip(query.tolist(), span.tolist())) == set(zip(*map(np.ndarray.tolist, np.nonzero(every))))
    none = _overlapping(queries[:0], _spans(obstacles))
    assert len(none[0]) == len(none[1]) == 0


def test_vertical_runs_of_each_edge_only():
    edges = [LayoutEdge("a", "b", "t", ((10.0, 0.0), (10.0, 100.0))),
             # Starts straight below the first edge's end: no run joins two edges.
             LayoutEdge("c", "d", "u", ((10.0, 200.0), (60.0, 200.0), (60.5, 300.0), (60.5, 300.5))),
             LayoutEdge("e", "f", "v", ((0.0, 0.0), (5.0, 50.0)))]  # slanted: no run
    runs = _vertical_runs(edges)
    assert runs.tolist() == [[9.0, 0.0, 2.0, 100.0], [59.0, 200.0, 2.0, 100.0]]
    assert _vertical_runs([]).shape == (0, 4)


def test_chains_and_trees_of_constants():
    # Chains (ConstantOfShape -> Unsqueeze -> Mul): each root's chain in its own column.
    cells, columns, rows = _constant_tree(["a", "b"], {"a": ["a1"], "a1": ["a2"]})
    assert (cells, columns, rows) == ({"a": (0.0, 0), "a1": (0.0, 1), "a2": (0.0, 2), "b": (1.0, 0)}, 2, 3)
    assert list(cells) == ["a", "a1", "a2", "b"]
    # Two feeders of one constant: it sits centred under them.
    cells, columns, rows = _constant_tree(["w", "u"], {"u": ["k", "axes"]})
    assert (cells, columns, rows) == ({"w": (0.0, 0), "u": (1.5, 0), "k": (1.0, 1), "axes": (2.0, 1)}, 3, 2)


@pytest.mark.parametrize("enabled", [True, False])
def test_collector_state_kept(enabled):
    analysis = analyze(open_model(light_model("squeezenet")))
    hidden = layout_graph(analysis)
    was = gc.isenabled()
    try:
        gc.enable() if enabled else gc.disable()
        attach_constants(hidden, analysis)
        assert gc.isenabled() == enabled
    finally:
        gc.enable() if was else gc.disable()
