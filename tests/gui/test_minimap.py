"""The minimap: an overview of the whole graph with the visible part outlined; click or drag to pan."""
from __future__ import annotations

from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtTest import QTest

from tests.conftest import light_model
from tests.gui.gui_fixtures import open_and_wait, settings, window  # noqa: F401 (fixtures)


def _view_center(view) -> QPointF:
    return view.mapToScene(view.viewport().rect().center())


def _wait_thumbnail(qtbot, minimap) -> None:
    qtbot.waitUntil(lambda: minimap.thumbnail is not None and minimap.isVisible(), timeout=5000)


def test_clicking_and_dragging_in_the_minimap_moves_the_main_view(qtbot, window, sample_model):
    open_and_wait(qtbot, window, sample_model)
    view, minimap = window.view, window.view.minimap
    _wait_thumbnail(qtbot, minimap)
    # In the view's top-right corner, inside the viewport, the whole scene in small.
    viewport = view.viewport().geometry()
    assert viewport.contains(minimap.geometry()) and minimap.x() > viewport.width() / 2
    back = minimap.map_to_scene(minimap.scene_to_map(QPointF(120, 900)))  # the two mappings agree
    assert abs(back.x() - 120) < 1e-6 and abs(back.y() - 900) < 1e-6
    source = minimap.source
    assert source == window.scene.sceneRect()
    # The outline is the visible part of the graph.
    marker = minimap.visible_rect()
    visible = view.mapToScene(view.viewport().rect()).boundingRect()
    assert abs(minimap.map_to_scene(marker.topLeft()).y() - visible.top()) < 1
    # A click in the middle of the minimap centres the view on that point of the graph.
    before = _view_center(view)
    target = QPoint(minimap.width() // 2, minimap.height() // 2)
    qtbot.mouseClick(minimap, Qt.MouseButton.LeftButton, pos=target)
    after = _view_center(view)
    wanted = minimap.map_to_scene(QPointF(target))
    assert abs(after.y() - wanted.y()) < 2 and abs(after.y() - before.y()) > 500
    # A drag pans along; the outline follows the view.
    start, end = QPoint(minimap.width() // 2, minimap.height() // 3), QPoint(minimap.width() // 2,
                                                                             2 * minimap.height() // 3)
    QTest.mousePress(minimap, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, start)
    QTest.mouseMove(minimap, end)
    QTest.mouseRelease(minimap, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, end)
    assert abs(_view_center(view).y() - minimap.map_to_scene(QPointF(end)).y()) < 2
    assert abs(minimap.visible_rect().center().y() - end.y()) < 2


def test_minimap_follows_the_model_and_can_be_hidden(qtbot, window, sample_model):
    open_and_wait(qtbot, window, sample_model)
    minimap = window.view.minimap
    _wait_thumbnail(qtbot, minimap)
    first = minimap.thumbnail
    open_and_wait(qtbot, window, light_model("squeezenet"))
    qtbot.waitUntil(lambda: minimap.thumbnail is not first and minimap.source == window.scene.sceneRect(),
                    timeout=5000)
    window.minimap_action.setChecked(False)
    assert not minimap.isVisible()
    window.minimap_action.setChecked(True)
    _wait_thumbnail(qtbot, minimap)


def _box(view, node_id):
    """The box of `node_id` in the view's own coordinates (the minimap's parent)."""
    rect = view.graph_scene.item_for(node_id).sceneBoundingRect()
    return view.mapFromScene(rect).boundingRect().translated(view.viewport().geometry().topLeft())


def test_the_minimap_moves_off_the_selected_or_linked_box(qtbot, window, sample_model, tmp_path):
    open_and_wait(qtbot, window, sample_model)
    view, minimap, scene = window.view, window.view.minimap, window.scene
    window.resize(870, 800)  # a narrow graph view, as each half of the side-by-side window:
    window.resizeDocks([window.inspector_dock], [360], Qt.Orientation.Horizontal)  # ~500 px beside the docks
    view.set_scale(2.0)  # the graph taller than the view: every box can be scrolled up to the minimap
    _wait_thumbnail(qtbot, minimap)
    top_right = minimap.pos()
    node_id = scene.node_ids[len(scene.node_ids) // 2]
    # Scroll so that the middle node lies under the minimap, then select it.
    box_centre = QPointF(scene.item_for(node_id).sceneBoundingRect().center())
    offset = QPointF(view.viewport().rect().center() - (minimap.geometry().center()
                                                        - view.viewport().geometry().topLeft())) / 2.0
    view.centerOn(box_centre + offset)
    assert minimap.geometry().intersects(_box(view, node_id))
    view.select_node(node_id, center=False)
    assert minimap.isVisible() and not minimap.geometry().intersects(_box(view, node_id))
    assert view.viewport().geometry().contains(minimap.geometry())
    assert minimap.pos().x() < top_right.x()  # the top-left corner: free
    view.grab().save(str(tmp_path / "minimap_moved.png"))
    # Nothing selected: back in its corner.
    scene.clearSelection()
    assert minimap.pos() == top_right
    # A box linked from the other view of the side-by-side window counts too, also when the
    # view cannot scroll it any nearer the centre (it stays where it is).
    scene.set_linked([node_id])
    view.center_on_node(node_id)
    view.centerOn(box_centre + offset)
    assert not minimap.geometry().intersects(_box(view, node_id))
