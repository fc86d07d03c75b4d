"""A big scene's boxes are children of a parent item per build chunk (GraphScene.BOX_GROUP_MIN), so
that a paint skips the chunks outside the view: the picture, selection, search, overlays and the
scene's teardown are as with one top-level item per box.

Every test here opens a real model (DenseNet-121, ~900 boxes) with the grouping forced on for it
(BOX_GROUP_MIN = 0, small chunks, so many parents lie outside the view), in a real MainWindow.
"""
from __future__ import annotations

import shiboken6
from PySide6.QtCore import QPoint, QPointF, QRectF, Qt
from PySide6.QtGui import QTransform
from PySide6.QtTest import QTest

from gui.app import MainWindow
from gui.graph_drawing import GraphScene, retiring_scenes
from tests.conftest import light_model
from tests.gui.gui_fixtures import no_questions, open_and_wait, settings, window  # noqa: F401 (fixtures)

CHUNK = 40  # boxes per parent item in these tests (the app uses GraphScene.CHUNK_NODES, 400)


def _group_every_scene(monkeypatch) -> None:
    monkeypatch.setattr(GraphScene, "BOX_GROUP_MIN", 0)
    monkeypatch.setattr(GraphScene, "CHUNK_NODES", CHUNK)


def _views(window) -> list[QRectF]:
    """The visible scene rectangle after each of a few views (fit, the start at 1:1, zoomed in on a
    box deep in the model, with an overlay, a selection and linked boxes outlined); a grab of each."""
    view, scene = window.view, window.scene
    view.set_minimap_enabled(False)  # the viewport alone
    middle = scene.node_ids[len(scene.node_ids) // 2]
    shots = []

    def shot():
        return view.viewport().grab().toImage()

    view.fit()
    shots.append(shot())
    view.setTransform(QTransform())
    view.centerOn(QPointF(scene.rects[0, 0], scene.rects[0, 1]))
    shots.append(shot())
    window.set_overlay("macs")
    view.select_node(middle)
    scene.set_linked(scene.node_ids[len(scene.node_ids) // 2 + 1: len(scene.node_ids) // 2 + 4])
    view.setTransform(QTransform.fromScale(2.0, 2.0))
    view.centerOn(scene.item_for(middle))
    shots.append(shot())
    view.setTransform(QTransform.fromScale(0.3, 0.3))
    view.centerOn(scene.item_for(middle))
    shots.append(shot())
    return shots


def test_grouped_boxes_paint_the_same_picture(qtbot, window, settings, monkeypatch):
    model = light_model("densenet121")
    open_and_wait(qtbot, window, model)
    assert window.scene.box_groups == []  # ~900 boxes: one top-level item each, as always
    before = _views(window)
    _group_every_scene(monkeypatch)
    window = MainWindow(settings=settings)  # a second window, laid out as the first
    qtbot.addWidget(window, before_close_func=no_questions)
    window.resize(1200, 800)
    window.show()
    open_and_wait(qtbot, window, model)
    scene = window.scene
    assert len(scene.box_groups) == -(-len(scene.node_ids) // CHUNK)
    after = _views(window)
    for index, (old, new) in enumerate(zip(before, after)):
        assert old.size() == new.size() and not old.isNull()
        assert old == new, f"view {index} differs"
    # At a readable zoom most parents lie outside the view: their boxes were not painted at all.
    view = window.view
    visible = view.mapToScene(view.viewport().rect()).boundingRect()
    outside = [g for g in scene.box_groups if not g.sceneBoundingRect().intersects(visible)]
    assert len(outside) > len(scene.box_groups) // 2


def test_every_box_lies_inside_its_parent_with_the_thickest_outline(qtbot, window, monkeypatch):
    # A parent claims (ItemContainsChildrenInShape) that its boxes paint only inside it: a box
    # outlined with the widest pen (linked, 5 units) must still be inside, or a paint would cut it.
    _group_every_scene(monkeypatch)
    open_and_wait(qtbot, window, light_model("densenet121"))
    scene = window.scene
    scene.set_linked(scene.node_ids)
    assert scene.link_pen.widthF() >= max(p.widthF() for p in (scene.box_pen, scene.group_pen, scene.top_pen,
                                                                  scene.selection_pen))
    for index, item in enumerate(scene.node_items):
        parent = item.parentItem()
        assert parent is scene.box_groups[index // CHUNK]
        assert item.pen().widthF() == scene.link_pen.widthF()
        assert parent.sceneBoundingRect().contains(item.sceneBoundingRect()), scene.node_ids[index]
        assert not parent.acceptedMouseButtons() and not parent.flags() & parent.GraphicsItemFlag.ItemIsSelectable


def test_click_search_and_overlays_work_on_grouped_boxes(qtbot, window, monkeypatch):
    _group_every_scene(monkeypatch)
    open_and_wait(qtbot, window, light_model("densenet121"))
    scene, view = window.scene, window.view
    target = scene.node_ids[len(scene.node_ids) // 2]
    view.select_node(target)  # centres it
    scene.clearSelection()
    point = view.mapFromScene(scene.item_for(target).sceneBoundingRect().center())
    qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, pos=point)
    assert window.inspector.node_id == target
    assert scene.selectedItems() == [scene.item_for(target)]
    assert scene.item_for(target).pen().widthF() == scene.selection_pen.widthF()
    # Between two boxes of one parent (inside the parent's rectangle) a click is on the background.
    rects = scene.rects
    gap = next(QPointF(x + w + 4, y + h / 2) for x, y, w, h in rects.tolist()
               if scene.node_at(QPointF(x + w + 4, y + h / 2)) is None
               and scene.item_for(target).parentItem().sceneBoundingRect().contains(QPointF(x + w + 4, y + h / 2)))
    view.centerOn(gap)
    qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, pos=view.mapFromScene(gap))
    assert window.inspector.node_id is None and scene.selectedItems() == []
    # A drag from there pans the view (the parent takes no mouse button).
    start, bar = view.mapFromScene(gap), view.verticalScrollBar()
    before = bar.value()
    qtbot.mousePress(view.viewport(), Qt.MouseButton.LeftButton, pos=start)
    for step in range(1, 6):
        QTest.mouseMove(view.viewport(), start + QPoint(0, -20 * step))
    qtbot.mouseRelease(view.viewport(), Qt.MouseButton.LeftButton, pos=start + QPoint(0, -100))
    assert bar.value() > before
    # Search selects and shows what it finds.
    window.search_field.setText("conv")
    found = window.search_next()
    assert found is not None and window.inspector.node_id == found
    assert scene.selectedItems() == [scene.item_for(scene.box_id(found))]
    assert view._highlighted_boxes()
    # An overlay recolours the grouped boxes and outlines its top ones.
    scene.clearSelection()
    window.set_overlay("macs")
    heaviest = window.loaded.analysis.heaviest(1)[0].node_id
    assert scene.top_node_ids[0] == heaviest
    assert scene.item_for(heaviest).brush().color().name() == "#e31a1c"
    assert scene.item_for(heaviest).pen().widthF() >= 4


def test_a_grouped_scene_is_torn_down_a_slice_at_a_time(qtbot, window, monkeypatch, sample_model):
    _group_every_scene(monkeypatch)
    open_and_wait(qtbot, window, light_model("densenet121"))
    old = window.scene
    boxes, parents = list(old.node_items), list(old.box_groups)
    open_and_wait(qtbot, window, sample_model)  # the old scene is retired a slice per turn
    qtbot.waitUntil(lambda: retiring_scenes() == 0, timeout=20_000)
    # Out of the scene and Python's to delete: dropping the last reference (here, these lists) deletes them.
    assert all(item.scene() is None and item.parentItem() is None and shiboken6.ownedByPython(item)
               for item in boxes + parents)
    assert window.scene is not old and window.scene.box_groups


def test_the_worker_makes_the_scene_look_ups_and_a_scene_checks_they_are_for_its_layout(qtbot, sample_model):
    from dataclasses import replace

    from gui.app import load_model, relayout

    loaded = relayout(load_model(str(sample_model)), False, grouping="stage")  # collapsed groups: group boxes
    data = loaded.scene_data
    assert data.boxes is loaded.layout.boxes
    assert data.node_index == {node_id: i for i, node_id in enumerate(data.node_ids)}
    assert data.group_indexes == {i for i, c in enumerate(data.categories) if c == "group"} and data.group_indexes
    scene = GraphScene(loaded, build=False)
    assert scene.node_index is data.node_index and scene.group_indexes is data.group_indexes
    # Scene data made for another layout (the same model laid out whole) is not used: made again.
    whole = load_model(str(sample_model))
    scene = GraphScene(replace(whole, scene_data=data), build=False)
    assert scene.node_ids == list(whole.layout.boxes) and scene._data is not data
    assert scene.node_index == {node_id: i for i, node_id in enumerate(scene.node_ids)}
    assert not scene.group_indexes


def test_a_paint_skips_the_boxes_of_a_parent_outside_the_view(qtbot, window, monkeypatch):
    # Qt paints a parent's children only where the parent is exposed: a red probe rectangle made a
    # child of the first parent but placed far from it is not painted, while one that is a top-level
    # item is.  (This is what keeps the first paint of 91,000 boxes short: see BOX_GROUP_MIN.)
    from PySide6.QtGui import QBrush, QColor, QPen

    _group_every_scene(monkeypatch)
    open_and_wait(qtbot, window, light_model("densenet121"))
    scene, view = window.scene, window.view
    view.set_minimap_enabled(False)
    # Right of the model, where no parent reaches (the scene grown to show it).
    area = scene.sceneRect()
    far = QRectF(area.right() + 1000, area.top(), 200, 200)
    scene.setSceneRect(area.united(far.adjusted(-1000, 0, 1000, 1000)))
    assert not any(g.sceneBoundingRect().intersects(far.adjusted(-1000, 0, 1000, 1000)) for g in scene.box_groups)
    probe = scene.addRect(far, QPen(Qt.PenStyle.NoPen), QBrush(QColor("#ff0000")))
    probe.setZValue(20)
    view.setTransform(QTransform())
    view.centerOn(far.center())

    def red_pixels() -> int:
        image = view.viewport().grab().toImage()
        return sum(image.pixelColor(x, y).name() == "#ff0000"
                   for x in range(0, image.width(), 4) for y in range(0, image.height(), 4))

    assert red_pixels() > 50  # a top-level item there is painted
    probe.setParentItem(scene.box_groups[0])
    assert red_pixels() == 0  # a child of a parent outside the view is not
    probe.setParentItem(None)
    scene.removeItem(probe)


def test_a_build_runs_one_slice_per_event_loop_turn(qtbot, sample_model):
    # Between two slices the event loop turns: a timer (or a person's input) gets its turn.  Each
    # step here is longer than the slice, so each slice runs one step.  (Slices that posted the
    # next with QTimer.singleShot(0) ran two per turn: the timer waited ~40 ms instead of ~20.)
    import time

    from PySide6.QtCore import QTimer

    from gui.app import load_model
    from gui.graph_drawing import build_in_slices

    scene = GraphScene(load_model(str(sample_model)), build=False)
    events = []

    def steps():
        for _ in range(12):
            events.append("step")
            end = time.perf_counter() + 0.003
            while time.perf_counter() < end:
                pass
            yield

    ticker = QTimer()
    ticker.setInterval(0)
    ticker.timeout.connect(lambda: events.append("tick"))
    ticker.start()
    done = []
    build_in_slices(scene, lambda: done.append(True), 0.001, steps())
    qtbot.waitUntil(lambda: bool(done), timeout=10_000)
    ticker.stop()
    assert events.count("step") == 12
    steps_in_a_row = [i for i in range(1, len(events)) if events[i] == events[i - 1] == "step"]
    assert steps_in_a_row == []  # a tick between every two steps
