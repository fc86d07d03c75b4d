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
