"""engine.layout: layered geometry of real graphs (the light zoo) and generated large ones. No Qt."""
from __future__ import annotations

import pytest
from onnx import TensorProto, helper

from conftest import LIGHT_ZOO, light_model
from engine.analysis import analyze
from engine.layout import (GROUP_PREFIX, INPUT_PREFIX, OUTPUT_PREFIX, GraphLayout, group_totals, layout_graph,
                           node_groups, op_category)
from importers import open_model


def _check_geometry(layout: GraphLayout) -> None:
    """Boxes of one layer do not overlap; layers go down; edges join bottom of source to top of target."""
    by_layer: dict[int, list[tuple[float, float]]] = {}
    for node_id, (x, y, w, h) in layout.boxes.items():
        assert w > 0 and h > 0
        assert 0 <= x and x + w <= layout.width + 1e-6 and 0 <= y and y + h <= layout.height + 1e-6
        by_layer.setdefault(layout.layers[node_id], []).append((x, x + w))
    for spans in by_layer.values():
        spans.sort()
        for (_, right), (left, _) in zip(spans, spans[1:]):
            assert left >= right - 1e-6, "boxes of one layer overlap"
    for edge in layout.edges:
        assert layout.layers[edge.target] > layout.layers[edge.source]
        sx, sy, sw, sh = layout.boxes[edge.source]
        tx, ty, tw, th = layout.boxes[edge.target]
        assert edge.points[0] == pytest.approx((sx + sw / 2, sy + sh))
        assert edge.points[-1] == pytest.approx((tx + tw / 2, ty))
        ys = [p[1] for p in edge.points]
        assert ys == sorted(ys), "an edge goes back up"


@pytest.mark.parametrize("path", LIGHT_ZOO, ids=lambda p: p.stem)
def test_light_zoo_compute_nodes_laid_out_constants_hidden(path):
    analysis = analyze(open_model(path))
    layout = layout_graph(analysis)
    compute = {m.node_id for m in analysis.compute_nodes()}
    constants = {node_id for node_id, m in analysis.nodes.items() if m.is_constant}
    node_boxes = {k for k in layout.boxes if not k.startswith((INPUT_PREFIX, OUTPUT_PREFIX))}
    assert node_boxes == compute
    assert layout.hidden == constants
    assert constants, "the light zoo's weights come from ConstantOfShape nodes"
    assert {INPUT_PREFIX + name for name in analysis.graph.inputs
            if analysis.graph.values[name].initializer is None} <= set(layout.boxes)
    assert {OUTPUT_PREFIX + name for name in analysis.graph.outputs} <= set(layout.boxes)
    assert layout.method == "sugiyama"
    _check_geometry(layout)
    # Every data edge between compute nodes is drawn.
    producers = {out: n.id for n in analysis.graph.nodes if n.id in compute for out in n.outputs}
    expected = {(producers[name], n.id, name) for n in analysis.graph.nodes if n.id in compute
                for name in n.inputs if name in producers}
    drawn = {(e.source, e.target, e.value) for e in layout.edges}
    assert expected <= drawn


def test_include_constants_lays_out_every_node():
    analysis = analyze(open_model(light_model("squeezenet")))
    layout = layout_graph(analysis, include_constants=True, include_io=False)
    assert set(layout.boxes) == set(analysis.order)
    assert layout.hidden == frozenset()
    # Constants sit beside their consumers, outside the layers: their geometry is checked in
    # test_layout_constants.py; the other boxes are those of the layout without constants.
    _check_geometry(layout_graph(analysis, include_io=False))


def test_without_io_boxes():
    analysis = analyze(open_model(light_model("resnet50")))
    layout = layout_graph(analysis, include_io=False)
    assert not any(k.startswith((INPUT_PREFIX, OUTPUT_PREFIX)) for k in layout.boxes)


def test_fallback_layering_is_valid():
    analysis = analyze(open_model(light_model("inception_v1")))
    layout = layout_graph(analysis, max_dummy_vertices=0)
    assert layout.method == "layered"
    reference = layout_graph(analysis)
    assert layout.layers == reference.layers
    _check_geometry(layout)


def _residual_chain(tmp_path, blocks: int, fan_out_input: bool = False):
    """A chain of Mul/Add residual blocks (3 nodes per block); optionally every Add also reads the input."""
    nodes, x = [], "x"
    for i in range(blocks):
        nodes.append(helper.make_node("Mul", [x, "w"], [f"m{i}"], name=f"block{i}/mul"))
        nodes.append(helper.make_node("Relu", [f"m{i}"], [f"r{i}"], name=f"block{i}/relu"))
        nodes.append(helper.make_node("Add", [f"r{i}", "x" if fan_out_input else x], [f"a{i}"],
                                      name=f"block{i}/add"))
        x = f"a{i}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 8])],
                              initializer=[helper.make_tensor("w", TensorProto.FLOAT, [1], [0.5])])
    path = tmp_path / "chain.onnx"
    import onnx
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return analyze(open_model(path))


def test_large_residual_chain(tmp_path):
    analysis = _residual_chain(tmp_path, 3400)  # 10,200 nodes
    layout = layout_graph(analysis)
    assert len(layout.boxes) == 10_200 + 2
    assert layout.method == "sugiyama"
    assert max(layout.layers.values()) == 3 * 3400 + 1  # input, three layers per block, output
    _check_geometry(layout)


def test_huge_fan_out_uses_fallback(tmp_path):
    # One input read by every block's Add: edges skipping thousands of layers.
    analysis = _residual_chain(tmp_path, 700, fan_out_input=True)
    layout = layout_graph(analysis, max_dummy_vertices=50_000)
    assert layout.method == "layered"
    assert len(layout.boxes) == 2100 + 2
    _check_geometry(layout)


def test_op_categories():
    assert op_category("Conv") == "conv/linear"
    assert op_category("innerProduct") == "conv/linear"  # Core ML name through the canonical table
    assert op_category("BatchNormalization") == "normalization"
    assert op_category("Relu") == "activation"
    assert op_category("MaxPool") == "pooling"
    assert op_category("Concat") == "data movement"
    assert op_category("ConvTranspose") == "upsampling"
    assert op_category("SomethingCustom") == "other"


def test_sugiyama_in_a_worker_process_gives_the_same_layout(tmp_path):
    """A GUI hands igraph's GIL-holding call for large graphs to a process; geometry must not change."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import engine.layout as layout_module

    analysis = _residual_chain(tmp_path, layout_module.LAYOUT_OFFLOAD_VERTICES // 3 + 10)
    in_process = layout_graph(analysis)
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as executor:
        layout_module.set_layout_executor(executor)
        try:
            offloaded = layout_graph(analysis)
        finally:
            layout_module.set_layout_executor(None)
    assert len(in_process.boxes) >= layout_module.LAYOUT_OFFLOAD_VERTICES
    assert offloaded.boxes == in_process.boxes and offloaded.layers == in_process.layers
    assert offloaded.edges == in_process.edges


# ----------------------------------------------------------------------------- collapsible groups

def _check_connected(layout: GraphLayout, analysis) -> None:
    """Every edge joins two drawn boxes, and every visible node is drawn by exactly one box."""
    for edge in layout.edges:
        assert edge.source in layout.boxes and edge.target in layout.boxes
        assert edge.source != edge.target
    for metrics in analysis.compute_nodes():
        box = layout.box_of(metrics.node_id)
        assert box is not None and box in layout.boxes
        assert (box == metrics.node_id) != (metrics.node_id in layout.box_for)


def test_collapsed_stages_are_one_box_each_with_edges_attached(sample_model):
    analysis = analyze(open_model(sample_model))
    groups = node_groups(analysis, "stage")
    assert [g.name for g in groups.values()] == [s.name for s in analysis.stages]
    layout = layout_graph(analysis, groups=groups, collapsed=groups)
    stage_boxes = [k for k in layout.boxes if k.startswith(GROUP_PREFIX)]
    assert stage_boxes == list(groups)
    assert len(layout.boxes) == len(groups) + 2  # the stages, the input and the output
    _check_connected(layout, analysis)
    _check_geometry(layout)
    # The encoder's skip connections reach the decoder: one edge between the two boxes stands for
    # all those tensors (no fan of parallel edges), and carries the largest of them.
    encoder, decoder = (f"{GROUP_PREFIX}stage:{name}" for name in ("encoder", "decoder"))
    between = [e for e in layout.edges if e.source == encoder and e.target == decoder]
    assert len(between) == 1 and len(between[0].values) >= 2 and between[0].value in between[0].values
    sizes = {v: analysis.graph.value_type(v).byte_size for v in between[0].values}
    assert sizes[between[0].value] == max(sizes.values())
    assert len({(e.source, e.target) for e in layout.edges}) == len(layout.edges)
    # Totals are the sums of the members' figures (and agree with the stage's own sums).
    for stage in analysis.stages:
        group = groups[f"{GROUP_PREFIX}stage:{stage.name}"]
        totals = group_totals(group, analysis)
        members = [analysis.nodes[n] for n in group.members]
        assert totals.macs == sum(m.macs or 0 for m in members) == stage.macs
        assert totals.params == sum(m.params for m in members) == stage.params
        assert totals.nodes == sum(1 for m in members if not m.is_constant)
        assert totals.time_ms is None


def test_expanding_a_stage_shows_its_nodes_and_keeps_edges_connected(sample_model):
    analysis = analyze(open_model(sample_model))
    groups = node_groups(analysis, "stage")
    decoder = f"{GROUP_PREFIX}stage:decoder"
    layout = layout_graph(analysis, groups=groups, collapsed=set(groups) - {decoder})
    assert decoder not in layout.boxes
    decoder_nodes = [n for n in groups[decoder].members if not analysis.nodes[n].is_constant]
    assert all(n in layout.boxes for n in decoder_nodes)
    assert f"{GROUP_PREFIX}stage:encoder" in layout.boxes
    _check_connected(layout, analysis)
    _check_geometry(layout)
    # Expanding every group is the plain layout.
    assert layout_graph(analysis, groups=groups, collapsed=()).boxes == layout_graph(analysis).boxes


def test_namespaces_nest_and_the_outermost_collapsed_group_draws_its_nodes(sample_model):
    analysis = analyze(open_model(sample_model))
    groups = node_groups(analysis, "namespace")
    top = [g for g in groups.values() if g.parent is None]
    assert [g.name for g in top] == ["encoder", "decoder", "head"]
    block = groups[f"{GROUP_PREFIX}namespace:encoder/block1"]
    assert block.parent == f"{GROUP_PREFIX}namespace:encoder" and block.depth == 1 and block.title == "block1"
    assert set(block.members) <= set(groups[block.parent].members)
    # Single-node scopes ("encoder/block1/dw" holds one Conv) are not groups.
    assert f"{GROUP_PREFIX}namespace:encoder/block1/dw" not in groups
    everything = layout_graph(analysis, groups=groups, collapsed=groups)
    assert sorted(k for k in everything.boxes if k.startswith(GROUP_PREFIX)) == sorted(g.id for g in top)
    # Expanding "encoder" shows its blocks, still collapsed, and the encoder's loose nodes.
    encoder = f"{GROUP_PREFIX}namespace:encoder"
    opened = layout_graph(analysis, groups=groups, collapsed=set(groups) - {encoder})
    assert encoder not in opened.boxes and block.id in opened.boxes
    assert opened.members[block.id] == block.members
    assert all(opened.box_of(n) == block.id for n in block.members if not analysis.nodes[n].is_constant)
    _check_connected(opened, analysis)
    _check_geometry(opened)


def test_a_group_that_is_not_contiguous_still_draws_every_edge(tmp_path):
    """a/first -> other -> a/second: collapsing "a" makes a cycle between two boxes."""
    import onnx
    nodes = [helper.make_node("Relu", ["x"], ["t1"], name="/a/first/Relu"),
             helper.make_node("Neg", ["t1"], ["t2"], name="/other/Neg"),
             helper.make_node("Relu", ["t2"], ["t3"], name="/a/second/Relu"),
             helper.make_node("Add", ["t3", "x"], ["y"], name="/tail/Add")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    path = tmp_path / "cycle.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    analysis = analyze(open_model(path))
    groups = node_groups(analysis, "namespace")
    assert list(groups) == [f"{GROUP_PREFIX}namespace:a"]
    layout = layout_graph(analysis, groups=groups, collapsed=groups)
    _check_connected(layout, analysis)
    pairs = {(e.source, e.target) for e in layout.edges}
    group = f"{GROUP_PREFIX}namespace:a"
    assert (group, "/other/Neg") in pairs and ("/other/Neg", group) in pairs


def test_unknown_grouping_is_refused(sample_model):
    analysis = analyze(open_model(sample_model))
    assert node_groups(analysis, "none") == {}
    with pytest.raises(ValueError, match="unknown grouping"):
        node_groups(analysis, "layers")
