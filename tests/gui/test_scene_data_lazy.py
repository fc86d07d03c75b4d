"""gui.graph_drawing's scene data and build: edge paths made for all edges at once equal the ones made
edge by edge, box text is made when read and equals what the box shows, and a box clicked
or selected carries its node id.  Real models, real Qt items (offscreen)."""
from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import QPointF, Qt

from conftest import light_model
from engine.layout import LayoutEdge, op_category
from gui.app import load_model, relayout
from gui.graph_drawing import (EDGE_BATCH, BoxLines, GraphScene, _edge_batches, _edge_batches_one_by_one,
                               _edge_width_steps, prepare_scene_data)
from gui.graph_groups import group_lines
from gui_fixtures import open_and_wait, settings, window  # noqa: F401 (fixtures)


def _elements(path) -> list[tuple[int, float, float]]:
    return [(int(path.elementAt(i).type.value), path.elementAt(i).x, path.elementAt(i).y)
            for i in range(path.elementCount())]


def _assert_batches_equal(edges, steps) -> None:
    batches, batch_of, segments, segment_edge, tips, reach = _edge_batches(edges, steps)
    expected, expected_of = _edge_batches_one_by_one(edges, steps)
    assert [step for step, _ in batches] == [step for step, _ in expected]
    for (_, path), (_, wanted) in zip(batches, expected):
        assert path == wanted and _elements(path) == _elements(wanted)
        assert path.boundingRect() == wanted.boundingRect() and path.fillRule() == wanted.fillRule()
    assert batch_of.tolist() == expected_of.tolist()
    # Hit-test segments and arrow tips, straight from the points.
    wanted_segments = [(a[0], a[1], b[0], b[1]) for edge in edges for a, b in zip(edge.points, edge.points[1:])]
    assert segments.tolist() == [list(s) for s in wanted_segments]
    assert segment_edge.tolist() == [k for k, edge in enumerate(edges) for _ in edge.points[1:]]
    assert tips.tolist() == [list(edge.points[-1]) for edge in edges]
    # Per batch, the larger side of its longest edge's bounding box (None: an edge is not a polyline).
    if min(len(edge.points) for edge in edges) < 2:
        assert reach is None
        return
    wanted_reach = [0.0] * len(batches)
    for edge, batch in zip(edges, batch_of.tolist()):
        xs, ys = [x for x, _ in edge.points], [y for _, y in edge.points]
        wanted_reach[batch] = max(wanted_reach[batch], max(xs) - min(xs), max(ys) - min(ys))
    assert reach.tolist() == wanted_reach


@pytest.mark.parametrize("name", ["densenet121", "inception_v1", "squeezenet"])
def test_edge_paths_equal_adding_each_edge_to_its_path(name):
    loaded = load_model(str(light_model(name)))
    edges = loaded.layout.edges
    steps, _ = _edge_width_steps(edges, loaded.analysis.graph)
    assert max(np.bincount(steps)) > EDGE_BATCH or name != "densenet121", "full batches are exercised"
    assert len(set(steps)) > 1, "edges of several widths"
    _assert_batches_equal(edges, steps)


def test_edge_paths_of_many_widths_and_odd_edges():
    """Widths interleaved at random, routed edges of many points, and a one-point edge (drawn as the
    edge-by-edge path draws it)."""
    rng = np.random.default_rng(3)
    edges = [LayoutEdge("a", "b", "v", tuple((float(x), float(y)) for x, y in rng.random((int(n), 2)) * 100))
             for n in rng.integers(2, 7, 700)]
    steps = rng.integers(0, 8, len(edges)).tolist()
    _assert_batches_equal(edges, steps)
    odd = edges[:5] + [LayoutEdge("a", "b", "v", ((1.0, 2.0),))] + edges[5:9]
    _assert_batches_equal(odd, steps[:10])
    batches, batch_of, segments, segment_edge, tips, reach = _edge_batches((), [])
    assert batches == [] and len(batch_of) == len(segments) == len(segment_edge) == len(tips) == len(reach) == 0


def test_box_text_is_made_when_read_and_equals_each_box_text(sample_model):
    loaded = load_model(str(sample_model))
    grouped = relayout(loaded, False, grouping="stage")
    first_group = next(iter(grouped.groups))
    grouped = relayout(grouped, False, collapsed=frozenset({first_group}))
    data = prepare_scene_data(grouped)
    lines, analysis = data.lines, grouped.analysis
    assert isinstance(lines, BoxLines) and len(lines) == len(data.node_ids)
    groups_at = {i for i, node_id in enumerate(data.node_ids) if node_id in grouped.groups}
    assert groups_at and set(lines._made) == groups_at, "only collapsed groups' text is made before it is read"
    for index, node_id in enumerate(data.node_ids):
        if node_id in grouped.groups:
            assert data.categories[index] == "group"
            assert lines[index] == group_lines(grouped.groups[node_id], analysis)
        else:
            wanted = ("io" if node_id.startswith(("input:", "output:")) else "constant"
                      if analysis.nodes[node_id].is_constant else op_category(analysis.graph.node(node_id).op_type))
            assert data.categories[index] == wanted
            assert lines[index] == GraphScene.box_lines(node_id, analysis.graph, analysis)
    assert list(lines) == [lines[i] for i in range(len(lines))]
    assert lines[-1] == lines[len(lines) - 1]
    for outside in (len(lines), -len(lines) - 1):
        with pytest.raises(IndexError):
            lines[outside]
    group_index = min(groups_at)
    assert lines[group_index - len(lines)] == group_lines(grouped.groups[data.node_ids[group_index]], analysis)
    lines[0] = ("replaced", "text", "")
    assert lines[0] == ("replaced", "text", "") and lines[-len(lines)] == lines[0]
    categories = {data.categories[data.node_ids.index(n)] for n in data.node_ids}
    assert {"io", "group"} <= categories and len(categories) > 3


def test_clicked_box_is_selected_and_carries_its_node_id(qtbot, window, sample_model):  # noqa: F811
    open_and_wait(qtbot, window, sample_model)
    scene, view = window.scene, window.view
    node_id = "/decoder/up1/ConvTranspose"
    index = scene.node_index[node_id]
    assert scene.node_items[index].data(0) is None, "a box gets its id when first selected"
    view.center_on_node(node_id)
    x, y, w, h = scene.rects[index].tolist()
    point = view.mapFromScene(QPointF(x + w / 2, y + h / 2))
    qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, pos=point)
    assert scene.selectedItems() == [scene.node_items[index]]
    assert scene.selectedItems()[0].data(0) == node_id
    assert window.inspector.node_id == node_id
    assert scene.node_items[index].pen().widthF() == scene.selection_pen.widthF()
    # Two boxes selected: both outlined, the first drives the inspector.
    others = [n for n in scene.node_ids if n != node_id and not n.startswith(("input:", "output:"))][:2]
    view.add_to_selection(others)
    assert {item.data(0) for item in scene.selectedItems()} == {node_id, *others}
    assert all(scene.item_for(n).pen().widthF() == scene.selection_pen.widthF() for n in others)
    assert scene.index_of_item(scene.labels) is None
    # A scene torn down lets its items go.
    old = scene
    steps = old.teardown_steps()
    for _ in steps:
        pass
    assert old._item_index == {} and old.node_items == []
