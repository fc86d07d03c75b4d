"""engine.group_index: the folded view's arrays stand for the walks they replace.

Each test compares what the arrays give (namespace groups, a level's boxes and edges, the tensors
crossing a frame, group totals) with a straightforward walk over the nodes, on generated
transformers (nested namespaces, repeated blocks, KV-cache inputs, constants) and on a small
model built here with awkward scopes."""
from __future__ import annotations

import pytest
from onnx import TensorProto, helper

from engine.analysis import analyze
from engine.folded_layout import FoldedLayouts
from engine.group_index import GroupIndex, node_arrays
from engine.grouping import folded_start, innermost_group, namespace_groups
from engine.layout import GROUP_PREFIX, NodeGroup, group_totals, layout_graph, node_groups
from engine.profile import combine_kinds
from engine.targets import ProfileSettings
from engine.targets.cpu import CpuTarget
from engine.transformer_samples import STYLES, TransformerConfig, write_transformer
from importers import open_model
from test_big_graph_engine import _namespace_groups_by_definition  # the rule written out node by node


@pytest.fixture(scope="module", params=STYLES)
def transformer(request, tmp_path_factory):
    config = TransformerConfig(layers=3, hidden=64, heads=4, kv_heads=2, intermediate=96, vocab=50, past=5,
                               style=request.param)
    path = write_transformer(tmp_path_factory.mktemp(request.param) / "decoder.onnx", config)
    return path, analyze(open_model(str(path)))


@pytest.fixture(scope="module")
def awkward(tmp_path_factory):
    """Scopes with an empty part (a//b), a scope of one compute node (no group), a level holding
    exactly its parent's nodes (left out), constants inside groups, a node reading one tensor
    twice, a path that leaves a group and comes back, a graph output made mid-graph."""
    def node(op, inputs, outputs, name, **attributes):
        return helper.make_node(op, inputs, outputs, name=name, **attributes)

    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [1, 8])
    nodes = [
        node("Constant", [], ["k"], "/enc/a//b/Constant", value=helper.make_tensor("kv", TensorProto.FLOAT, [1, 8],
                                                                                     [0.5] * 8)),
        node("Add", ["x", "k"], ["t1"], "/enc/a//b/Add"),
        node("Mul", ["t1", "t1"], ["t2"], "/enc/a//b/Mul"),
        node("Relu", ["t2"], ["t3"], "/enc/side/Relu"),  # leaves enc/a/b ...
        node("Sigmoid", ["t3"], ["t4"], "/enc/a//b/Sigmoid"),  # ... and comes back
        node("Tanh", ["t4"], ["t5"], "/enc/lonely/Tanh"),
        node("Add", ["t5", "t1"], ["t6"], "/enc/only/deeper/Add"),
        node("Mul", ["t6", "y"], ["t7"], "/enc/only/deeper/Mul"),
        node("Reshape", ["t7", "shape"], ["mid"], "/dec/Reshape"),
        node("Relu", ["mid"], ["t8"], "/dec/Relu"),
        node("Add", ["t8", "x"], ["out"], "Add_top"),
    ]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 8]) for n in ("x", "y")]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 8]) for n in ("out", "t4")]
    model = helper.make_model(helper.make_graph(nodes, "awkward", inputs, outputs, [shape]),
                              opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path_factory.mktemp("awkward") / "awkward.onnx"
    path.write_bytes(model.SerializeToString())
    return analyze(open_model(str(path)))


def _walked_namespace_groups(analysis) -> dict:
    """node_groups(analysis, "namespace") as it was written before the arrays: a walk per node
    (test_big_graph_engine's definition), made into NodeGroups with their depths."""
    groups: dict[str, NodeGroup] = {}
    for group_id, nodes, parent_id in _namespace_groups_by_definition(analysis):
        depth = 0 if parent_id is None else groups[parent_id].depth + 1
        path = group_id[len(f"{GROUP_PREFIX}namespace:"):]
        groups[group_id] = NodeGroup(group_id, "namespace", path, nodes, parent_id, depth)
    return groups


def _analyses(transformer, awkward):
    return [transformer[1], awkward]


def test_namespace_groups_from_arrays_equal_the_walk(transformer, awkward):
    for analysis in _analyses(transformer, awkward):
        groups = node_groups(analysis, "namespace")
        walked = _walked_namespace_groups(analysis)
        assert list(groups) == list(walked) and groups == walked
    names = {g.name for g in node_groups(awkward, "namespace").values()}
    # enc/lonely holds one node; enc/a/b and enc/only/deeper hold exactly their parents' nodes
    assert names == {"enc", "enc/a", "enc/only", "dec"}
    assert node_groups(awkward, "namespace")["group:namespace:enc/only"].parent == "group:namespace:enc"


def test_the_index_knows_each_nodes_innermost_group(transformer):
    analysis = transformer[1]
    groups = namespace_groups(analysis)
    index = GroupIndex(groups, node_arrays(analysis))
    walked = innermost_group(groups)
    assert all(index.innermost_of(n) == walked.get(n) for n in analysis.order)
    assert index.nested and index.grouped_nodes() == [n for n in analysis.order if n in walked]


def _level_digest(layout):
    # An edge's bends are igraph's routing, which now and then differs between two runs of the same
    # input in one process (seen on the per-head model's kv.N levels, walking or not): its ends are compared.
    edges = [(e.source, e.target, e.value, e.points[0], e.points[-1], e.values) for e in layout.edges]
    return (dict(layout.boxes), edges, dict(layout.layers), dict(layout.members),
            layout.width, layout.height, layout.method, layout.hidden, layout.left, layout.top)


@pytest.mark.parametrize("constants", [False, True])
def test_levels_and_crossing_tensors_from_arrays_equal_the_walk(transformer, awkward, constants):
    for analysis in _analyses(transformer, awkward):
        groups = namespace_groups(analysis)
        arrays = FoldedLayouts(analysis, groups, include_constants=constants)
        walked = FoldedLayouts(analysis, groups, include_constants=constants, from_arrays=False)
        assert arrays._indexed() is not None and walked._indexed() is None
        for level in [None, *groups]:
            mine, theirs = arrays.level(level), walked.level(level)
            assert _level_digest(mine) == _level_digest(theirs), level
            assert all(mine.box_of(n) == theirs.box_of(n) for n in analysis.order), level
        assert arrays.reused_levels == walked.reused_levels
        for group_id in groups:
            assert arrays._crossing_tensors(group_id) == walked._crossing_tensors(group_id), group_id
        # Composed: the same drawing with any groups open.
        start = folded_start(groups, analysis)
        for collapsed in (start, frozenset(), frozenset(list(groups)[1::2])):
            mine, theirs = arrays.compose(collapsed), walked.compose(collapsed)
            assert _level_digest(mine) == _level_digest(theirs) and mine.frames == theirs.frames
            assert all(mine.box_of(n) == theirs.box_of(n) for n in analysis.order)


def test_the_root_level_has_the_edges_between_top_level_boxes(awkward):
    groups = namespace_groups(awkward)
    root = FoldedLayouts(awkward, groups, include_constants=False).level(None)
    boxes = {b.removeprefix("group:namespace:") for b in root.boxes}
    # y, read only inside enc/only (fed by enc/lonely), is drawn in enc's level beside enc/only.
    assert boxes == {"enc", "dec", "input:x", "output:out", "output:t4", "Add_top"}
    pairs = {(e.source.removeprefix("group:namespace:"), e.target.removeprefix("group:namespace:")) for e in root.edges}
    assert pairs == {("input:x", "enc"), ("enc", "dec"), ("dec", "Add_top"),
                     ("input:x", "Add_top"), ("Add_top", "output:out"), ("enc", "output:t4")}
    enc = FoldedLayouts(awkward, groups, include_constants=False).level("group:namespace:enc")
    assert [(e.source, e.target) for e in enc.edges if e.source == "input:y"] == [("input:y", "group:namespace:enc/only")]


def _walked_totals(group, analysis, profile=None) -> dict:
    metrics = analysis.nodes
    compute = [metrics[n] for n in group.members if not metrics[n].is_constant]
    totals = dict(nodes=len(compute), macs=sum(m.macs for m in compute if m.macs is not None),
                  params=sum(metrics[n].params for n in group.members),
                  unknown_cost_nodes=sum(1 for m in compute if m.macs is None),
                  flops=sum(m.flops for m in compute if m.flops is not None),
                  output_bytes=sum(m.output_bytes for m in compute if m.output_bytes is not None),
                  bytes_moved=sum(m.bytes_moved for m in compute if m.bytes_moved is not None and m.flops is not None))
    timed = [profile.nodes[n] for n in group.members if profile is not None and n in profile.nodes]
    if timed:
        totals.update(time_ms=sum(t.time.median_ms for t in timed), timed_nodes=len(timed),
                      time_kind=combine_kinds(t.kind for t in timed))
    return totals


def test_group_totals_from_arrays_equal_plain_sums_with_and_without_a_profile(transformer, awkward):
    path, analysis = transformer
    with CpuTarget() as target:
        profile = target.profile(ProfileSettings(runs=2, warmup=1), model_path=path)
    for model, timing in ((analysis, profile), (analysis, None), (awkward, None)):
        groups = namespace_groups(model)
        for group in groups.values():
            totals = group_totals(group, model, timing)
            expected = _walked_totals(group, model, timing)
            assert {k: getattr(totals, k) for k in expected} == expected, group.id
            assert isinstance(totals.macs, int) and isinstance(totals.params, int)
    groups = namespace_groups(analysis)
    assert any(group_totals(g, analysis).macs for g in groups.values())  # the sums are of something
    assert any(group_totals(g, analysis, profile).time_ms for g in groups.values())


def cumsum_block(folder):
    """The analysis of /blk: Relu, CumSum (no cost formula: FLOPs and MACs unknown), Add, on 1x8 floats."""
    axis = helper.make_tensor("axis", TensorProto.INT64, [], [1])
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="/blk/Relu"),
             helper.make_node("CumSum", ["a", "axis"], ["b"], name="/blk/CumSum"),
             helper.make_node("Add", ["b", "a"], ["y"], name="/blk/Add")]
    graph = helper.make_graph(nodes, "cumsum", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], [axis])
    path = folder / "cumsum.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    analysis = analyze(open_model(str(path)))
    return analysis


def test_bytes_moved_of_a_group_counts_only_nodes_whose_flops_are_known(tmp_path):
    """A group's bytes moved sum the nodes whose FLOPs are known too, so that its arithmetic
    intensity (FLOPs / bytes moved) divides figures of the same nodes.  CumSum has no cost formula
    (FLOPs unknown) but its tensors' sizes are known (bytes moved known): its bytes stay out."""
    analysis = cumsum_block(tmp_path)
    cumsum = analysis.nodes["/blk/CumSum"]
    assert cumsum.flops is None and cumsum.bytes_moved == 64  # the case: 8 floats in, 8 out
    (group,) = namespace_groups(analysis).values()
    totals = group_totals(group, analysis)
    relu, add = analysis.nodes["/blk/Relu"], analysis.nodes["/blk/Add"]
    assert totals.bytes_moved == relu.bytes_moved + add.bytes_moved == 64 + 96
    assert totals.flops == relu.flops + add.flops == 16
    assert totals.arithmetic_intensity == 16 / 160
    assert {k: getattr(totals, k) for k in _walked_totals(group, analysis)} == _walked_totals(group, analysis)


def test_groups_not_made_by_node_groups_are_laid_out_by_walking(awkward):
    groups = {g: group for g, group in namespace_groups(awkward).items()}
    copied = {g: NodeGroup(group.id, group.kind, group.name, tuple(list(group.members)), group.parent, group.depth)
              for g, group in groups.items()}
    layouts = FoldedLayouts(awkward, copied, include_constants=False)
    assert layouts._indexed() is None  # members it cannot vouch for: nested? in order?
    assert layouts.compose(frozenset()).boxes == FoldedLayouts(awkward, groups, False).compose(frozenset()).boxes


def test_a_tensor_written_twice_is_laid_out_by_walking(tmp_path):
    # Not valid ONNX, but it opens: the arrays cannot say which write a reader sees (the walk takes
    # the last), so the folded layout walks, and draws what the flat layout draws.
    nodes = [helper.make_node("Relu", ["x"], ["t"], name="/a/Relu"),
             helper.make_node("Sigmoid", ["x"], ["t"], name="/a/Sigmoid"),
             helper.make_node("Tanh", ["t"], ["u"], name="/b/Tanh"), helper.make_node("Neg", ["u"], ["y"], name="/b/Neg")]
    graph = helper.make_graph(nodes, "twice", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    path = tmp_path / "twice.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    analysis = analyze(open_model(str(path)))
    groups = namespace_groups(analysis)
    assert not node_arrays(analysis).tensors().exact
    layouts = FoldedLayouts(analysis, groups, include_constants=False)
    assert layouts._indexed() is None
    folded = layouts.compose(frozenset(groups))
    flat = layout_graph(analysis, groups=groups, collapsed=list(groups))
    assert folded.boxes == flat.boxes and [tuple(e) for e in folded.edges] == [tuple(e) for e in flat.edges]
    assert {(e.source, e.target) for e in folded.edges} >= {("group:namespace:a", "group:namespace:b")}


def test_a_drawing_composed_again_is_the_one_kept(transformer):
    from engine.folded_layout import COMPOSED_KEPT
    analysis = transformer[1]
    groups = namespace_groups(analysis)
    layouts = FoldedLayouts(analysis, groups, include_constants=False)
    start = folded_start(groups, analysis)
    first = layouts.compose(start)
    blocks = [g for g in groups if groups[g].depth == 1]
    opened = [layouts.compose(start - {block}) for block in blocks]
    assert layouts.compose(start) is first and layouts.compose(start - {blocks[0]}) is opened[0]
    for k in range(COMPOSED_KEPT):  # other drawings push the oldest out: composed anew, the same geometry
        layouts.compose(start - set(list(groups)[k:k + 2]))
    again = layouts.compose(start)
    assert again is not first and again.boxes == first.boxes and again.frames == first.frames
