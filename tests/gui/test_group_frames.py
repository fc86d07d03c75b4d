"""Folded models: a group opens in a frame laid out on its own (cached), and search, chart and
inspector selection, overlays, tooltips and the minimap reach nodes inside collapsed groups."""
from __future__ import annotations

import itertools

import pytest
from PySide6.QtCore import QEvent, QPoint, QPointF, QRectF, Qt
from PySide6.QtGui import QHelpEvent
from PySide6.QtWidgets import QToolTip

from tests.gui.gui_fixtures import (LOAD_TIMEOUT_MS, open_and_wait, open_folded, relaid, settings,  # noqa: F401
                                    window, write_small_decoder)

BLOCK = "group:namespace:model/layers.{}"


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    return write_small_decoder(tmp_path_factory.mktemp("frames"), layers=6)


@pytest.fixture
def folded(qtbot, window, decoder, monkeypatch):
    open_folded(qtbot, window, decoder, monkeypatch)
    assert BLOCK.format(4) in window.loaded.collapsed
    return window


def _inside_block(window, index: int, start: str) -> str:
    analysis = window.loaded.analysis
    return next(n for n in analysis.order if analysis.graph.node(n).name.startswith(f"/model/layers.{index}/{start}"))


def _overlapping(rects: dict) -> list:
    def meet(a, b):
        return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]
    return [(p, q) for (p, a), (q, b) in itertools.combinations(rects.items(), 2) if meet(a, b)]


def test_opening_a_group_lays_out_only_that_group_and_reuses_it(qtbot, folded):
    window = folded
    layouts = window.loaded.folded_layouts
    before = dict(window.loaded.layout.boxes)
    block = BLOCK.format(2)
    assert not layouts.cached(block)
    relaid(qtbot, window, lambda: window.toggle_group(block, False))
    loaded, scene = window.loaded, window.scene
    assert loaded.folded_layouts is layouts and layouts.cached(block)
    # Its contents are drawn inside its frame, under the title band; nothing overlaps; the boxes
    # outside it kept their size and order (shifted, not laid out again).
    fx, fy, fw, fh = loaded.layout.frames[block]
    inside = [b for b in loaded.layout.boxes if b not in before]
    assert inside and all(fx < x and x + w < fx + fw and fy < y and y + h < fy + fh
                          for x, y, w, h in (loaded.layout.boxes[b] for b in inside))
    assert not _overlapping(dict(loaded.layout.boxes))
    outside = {b: r for b, r in loaded.layout.boxes.items() if b not in inside}
    assert not _overlapping({**outside, block: (fx, fy, fw, fh)})  # the frame pushed the rest aside
    kept = [b for b in before if b in loaded.layout.boxes]
    assert all(loaded.layout.boxes[b][2:] == before[b][2:] for b in kept)
    assert sorted(kept, key=lambda b: before[b][:2]) == sorted(kept, key=lambda b: loaded.layout.boxes[b][:2])
    above = [b for b in kept if before[b][1] + before[b][3] < before[block][1]]
    assert above and all(loaded.layout.boxes[b][1] == before[b][1] for b in above)
    # The frame carries the group's totals; edges reach into it, none dangles.
    title = scene.frame_layer.title(scene.frame_layer.ids.index(block))
    totals = scene.group_totals(block)
    assert "layers.2" in title and f"{totals.nodes} nodes" in title and "MACs" in title
    drawn = set(scene.node_index) | set(scene.frame_layer.ids)
    assert all(e.source in drawn and e.target in drawn for e in scene.edges)
    assert any(e.source == block and e.target in inside for e in scene.edges)  # a tensor entering
    # Closed and opened again: no level is laid out again.
    spent = layouts.seconds_laying_out
    relaid(qtbot, window, lambda: window.toggle_group(block, True))
    assert block in window.scene.node_index and not window.loaded.layout.frames.get(block)
    relaid(qtbot, window, lambda: window.toggle_group(block, False))
    assert layouts.seconds_laying_out == spent
    assert window.loaded.layout.boxes == loaded.layout.boxes


def test_a_repeated_block_reuses_its_twins_layout(qtbot, folded):
    from engine.layout import collapsed_boxes, layout_nodes
    window = folded
    layouts = window.loaded.folded_layouts
    relaid(qtbot, window, lambda: window.toggle_group(BLOCK.format(1), False))
    reused = layouts.reused_levels
    relaid(qtbot, window, lambda: window.toggle_group(BLOCK.format(3), False))
    assert layouts.reused_levels == reused + 1
    # The same geometry as laying it out afresh, under its own names.
    groups, analysis = window.loaded.groups, window.loaded.analysis
    block = BLOCK.format(3)
    children = [g for g, group in groups.items() if group.parent == block]
    box_for, members = collapsed_boxes(groups, children)
    visible = [n for n in groups[block].members if not analysis.nodes[n].is_constant]
    fresh = layout_nodes(analysis.graph, visible, include_io=False, box_for=box_for, members=members)
    twin = layouts.level(block)
    assert twin.boxes == fresh.boxes
    assert [(e.source, e.target, e.value, e.points) for e in twin.edges] == \
        [(e.source, e.target, e.value, e.points) for e in fresh.edges]


def test_search_opens_the_groups_that_hide_a_match_and_centres_it(qtbot, folded):
    window = folded
    node_id = _inside_block(window, 4, "mlp/up_proj/")
    name = window.loaded.analysis.graph.node(node_id).name
    window.search_field.setText(name)
    assert window.scene.find_nodes(name) == [node_id]  # found as itself, not as its group's box
    relaid(qtbot, window, window.search_next)
    assert window.inspector.node_id == node_id and window.scene.item_for(node_id).isSelected()
    assert BLOCK.format(4) not in window.loaded.collapsed and BLOCK.format(3) in window.loaded.collapsed
    visible = window.view.mapToScene(window.view.viewport().rect()).boundingRect()
    assert visible.contains(window.scene.item_for(node_id).sceneBoundingRect().center())
    assert window.search_label.text() == "1 / 1"


def test_a_chart_bar_and_an_inspector_row_open_the_groups_of_their_node(qtbot, folded, decoder):
    from engine.targets import ProfileSettings
    from engine.targets.cpu import CpuTarget
    from tests.gui.test_profiling import _click_chart

    window = folded
    with CpuTarget() as target:
        profile = target.profile(ProfileSettings(runs=2, warmup=1), model_path=decoder)
    window.add_profile(profile)
    panels = window.panels
    panels.tabs.setCurrentIndex(1)
    qtbot.waitUntil(lambda: panels.top_chart.isVisible(), timeout=LOAD_TIMEOUT_MS)
    # A real click on the slowest-nodes chart's bar of a node hidden in a collapsed block.
    row, node_id = next((i, n) for i, n in enumerate(panels.top_ids)
                        if window.loaded.layout.box_of(n) in window.loaded.collapsed)
    block = window.loaded.layout.box_of(node_id)
    relaid(qtbot, window, lambda: _click_chart(qtbot, panels.top_chart, 0.00001, row))
    assert window.inspector.node_id == node_id and window.scene.item_for(node_id).isSelected()
    assert block not in window.loaded.collapsed
    # A collapsed group in the inspector lists its slowest nodes; Enter on one goes to it.
    closed = next(i for i in range(6) if BLOCK.format(i) in window.loaded.collapsed)
    window.view.select_node(BLOCK.format(closed))
    assert window.inspector.rows()["Group (collapsed)/Name"] == f"model/layers.{closed}"
    rows = window.inspector.node_rows()
    target = next(iter(rows))
    assert target.startswith(f"/model/layers.{closed}/")
    window.inspector.setCurrentItem(rows[target])
    window.inspector.setFocus()
    relaid(qtbot, window, lambda: qtbot.keyClick(window.inspector, Qt.Key.Key_Return))
    assert window.inspector.node_id == target and window.scene.item_for(target).isSelected()
    # Once profiled, collapsed boxes and frames carry their time with its kind.
    scene = window.scene
    frame_title = scene.frame_layer.title(scene.frame_layer.ids.index(BLOCK.format(closed)))
    assert "time " in frame_title and "(measured)" in frame_title
    other = next(BLOCK.format(i) for i in range(6) if BLOCK.format(i) in window.loaded.collapsed)
    _, _, _, time_line = scene.labels._lines[scene.node_index[other]]
    assert time_line.startswith("time ") and time_line.endswith("(measured)")
    # The time overlay colours the nodes of the opened group and the collapsed boxes alike.
    window.set_overlay("time")
    values = dict(zip(scene.node_ids, scene.overlay_values("time")))
    assert values[target] == pytest.approx(profile.nodes[target].time.median_ms)
    assert values[other] == pytest.approx(scene.group_totals(other).time_ms)
    brushes = {scene.box_brushes[scene.node_index[n]].color().name() for n in (target, other)}
    assert "#e6e0f3" not in brushes  # recoloured, not the group's category colour
    # The tooltips: a collapsed block and an opened one say how they compare with the median block.
    assert "x the median block (" in scene.node_tooltip(other)
    tip = scene.group_tooltip(BLOCK.format(closed))
    assert "open; double-click its frame to collapse" in tip and "x the median block" in tip


def test_the_frame_answers_tooltip_double_click_and_minimap(qtbot, folded):
    window = folded
    block = BLOCK.format(1)
    relaid(qtbot, window, lambda: window.toggle_group(block, False))
    view, scene = window.view, window.scene
    x, y, w, h = window.loaded.layout.frames[block]
    inside_frame = QPointF(x + 6, y + h - 4)  # the frame's margin: no box, no edge
    assert scene.node_at(inside_frame) is None and scene.frame_at(inside_frame) == block
    view.set_scale(1.0)
    view.centerOn(inside_frame)
    point = view.mapFromScene(inside_frame)
    event = QHelpEvent(QEvent.Type.ToolTip, point, view.viewport().mapToGlobal(point))
    view.viewportEvent(event)
    assert QToolTip.text().startswith("namespace model/layers.1:")
    # The minimap shows the whole drawing, frames included, and moves the view there.
    view.minimap.render_thumbnail()
    assert view.minimap.thumbnail is not None and view.minimap.source == scene.sceneRect()
    target = view.minimap.scene_to_map(QPointF(x + w / 2, y + h / 2))
    qtbot.mouseClick(view.minimap, Qt.MouseButton.LeftButton, pos=QPoint(int(target.x()), int(target.y())))
    centre = view.mapToScene(view.viewport().rect().center())
    assert abs(centre.x() - (x + w / 2)) < w / 2 + 50 and abs(centre.y() - (y + h / 2)) < h / 2 + 50
    # Double-click on the frame's margin closes the group.
    view.centerOn(inside_frame)
    point = view.mapFromScene(inside_frame)
    relaid(qtbot, window, lambda: qtbot.mouseDClick(view.viewport(), Qt.MouseButton.LeftButton, pos=point))
    assert block in window.loaded.collapsed and block in window.scene.node_index


def test_selecting_a_node_in_the_compare_view_opens_its_groups(qtbot, folded, decoder):
    from engine.targets import ProfileSettings
    from engine.targets.cpu import CpuTarget

    window = folded
    with CpuTarget() as target:
        profile = target.profile(ProfileSettings(runs=2, warmup=1), model_path=decoder)
    window.add_profile(profile)
    window.add_profile(profile)
    window.show_compare(0, 1)
    qtbot.waitUntil(lambda: window.compare_view is not None and window.compare_view.ready, timeout=LOAD_TIMEOUT_MS)
    compare = window.compare_view
    qtbot.addWidget(compare)
    node_id = _inside_block(window, 5, "mlp/down_proj/")
    block = BLOCK.format(5)
    assert window.loaded.layout.box_of(node_id) == block  # hidden in the main view
    assert compare.scene.item_for(node_id) is not None  # drawn in the compare view (laid out whole)
    relaid(qtbot, window, lambda: compare.view.select_node(node_id))
    assert block not in window.loaded.collapsed and BLOCK.format(4) in window.loaded.collapsed
    assert window.inspector.node_id == node_id and window.scene.item_for(node_id).isSelected()
    visible = window.view.mapToScene(window.view.viewport().rect()).boundingRect()
    assert visible.contains(window.scene.item_for(node_id).sceneBoundingRect().center())


def _visible(window):
    return window.view.mapToScene(window.view.viewport().rect()).boundingRect()


def test_the_first_view_of_a_folded_model_shows_its_groups_readably(qtbot, folded):
    window = folded
    layout, view = window.loaded.layout, window.view
    # The rows of graph inputs (a KV cache: two per block) are wider than the window...
    inputs = [r for b, r in layout.boxes.items() if b.startswith("input:")]
    assert max(x + w for x, _, w, _ in inputs) - min(x for x, _, _, _ in inputs) > view.viewport().width()
    # ...yet the view is on the opened `model` frame, its title and its blocks' boxes readable.
    x, y, w, h = layout.frames["group:namespace:model"]
    visible = _visible(window)
    assert view.current_scale() >= view.READABLE_SCALE
    assert visible.top() <= y + 10 <= visible.bottom() and visible.intersects(QRectF(x, y, w, h))  # its title band
    bx, by, bw, bh = layout.boxes[BLOCK.format(0)]
    assert visible.contains(QPointF(bx + bw / 2, by + bh / 2))


def test_opening_a_group_shows_its_frame(qtbot, folded):
    window = folded
    block = BLOCK.format(5)
    relaid(qtbot, window, lambda: window.toggle_group(block, False))
    x, y, w, h = window.loaded.layout.frames[block]
    visible = _visible(window)
    assert window.view.current_scale() >= window.view.READABLE_SCALE
    assert visible.contains(QPointF(x + w / 2, y + 10))  # its title band, and its contents from the top
    assert visible.intersects(QRectF(x, y, w, h).adjusted(0, 0, 0, -max(0.0, h - visible.height())))


def test_a_node_in_opened_frames_names_its_groups_innermost_first(qtbot, folded):
    window = folded
    block = BLOCK.format(2)
    relaid(qtbot, window, lambda: window.toggle_group(block, False))
    scene, groups = window.scene, window.loaded.groups
    node_id = _inside_block(window, 2, "self_attn")
    # What double-click and the context menu close: the opened groups holding the node, deepest first.
    walked = sorted((g for g in groups if node_id in groups[g].members and g not in scene.node_index),
                    key=lambda g: -groups[g].depth)
    assert scene.enclosing_groups(node_id) == walked and walked[-1] == "group:namespace:model"
    assert block in walked


def test_a_reopened_group_is_drawn_from_the_kept_scene_data_with_its_own_labels(qtbot, folded):
    from gui.folded_groups import folded_scene_data
    window = folded
    block = BLOCK.format(3)
    relaid(qtbot, window, lambda: window.toggle_group(block, False))
    opened = window.loaded
    relaid(qtbot, window, lambda: window.toggle_group(block, True))
    relaid(qtbot, window, lambda: window.toggle_group(block, False))
    assert window.loaded.layout is opened.layout  # the composed drawing was kept
    again, before = window.loaded.scene_data, opened.scene_data
    assert again.edge_batches is before.edge_batches and again.node_ids == before.node_ids
    assert list(again.lines) == list(before.lines) and again.lines is not before.lines  # a scene rewrites its own
    fresh = folded_scene_data(window.loaded)
    fresh.lines[0] = ("changed",)
    assert folded_scene_data(window.loaded).lines[0] != ("changed",)


def test_frame_titles_follow_the_profile_made_when_read_not_all_at_once(qtbot, folded, decoder):
    from engine.targets import ProfileSettings
    from engine.targets.cpu import CpuTarget
    from gui.graph_groups import frame_title

    window = folded
    relaid(qtbot, window, lambda: window.set_all_groups(False))  # Expand all: every group a frame
    scene, analysis, groups = window.scene, window.loaded.analysis, window.loaded.groups
    layer = scene.frame_layer
    frames = len(layer.ids)
    assert frames == len(groups) and not window.loaded.collapsed

    def titles():
        return [layer.title(i) for i in range(frames)]

    # Drawn without a profile: the worker's titles, not made again on the UI thread.
    assert layer.titles_made() == frames
    assert titles() == [frame_title(groups[g], analysis) for g in layer.ids]
    assert not any("time" in t for t in titles())
    with CpuTarget() as target:
        profile = target.profile(ProfileSettings(runs=2, warmup=1), model_path=decoder)
    scene.set_profile(profile)
    assert layer.titles_made() == 0  # each made when painted or read
    assert titles() == [frame_title(groups[g], analysis, profile) for g in layer.ids]
    assert all("time " in t and "(measured)" in t for t in titles())
    scene.set_profile(profile)  # the same profile again: nothing to make again
    assert layer.titles_made() == frames
    scene.set_profile(None)
    assert titles() == [frame_title(groups[g], analysis) for g in layer.ids]
    # Selected in the window, then a group closed: the new scene's frames carry the time too.
    window.add_profile(profile)
    relaid(qtbot, window, lambda: window.toggle_group(BLOCK.format(2), True))
    scene = window.scene
    layer = scene.frame_layer
    assert BLOCK.format(2) in window.loaded.collapsed and BLOCK.format(2) not in layer.ids
    assert [layer.title(i) for i in range(len(layer.ids))] == \
        [frame_title(groups[g], analysis, profile) for g in layer.ids]
    _, _, _, time_line = scene.labels._lines[scene.node_index[BLOCK.format(2)]]
    assert time_line.startswith("time ") and time_line.endswith("(measured)")
