"""Docks the person sized with the mouse keep that share of the window when the window is resized
(they snapped back to the usual 30 % before)."""
from __future__ import annotations

from PySide6.QtCore import QPoint, Qt
from PySide6.QtTest import QTest

from tests.gui.gui_fixtures import open_and_wait, settings, window  # noqa: F401


def _drag(qtbot, window, start: QPoint, end: QPoint, steps: int = 10) -> None:
    """A separator dragged with the mouse, in steps, as a person drags it."""
    QTest.mouseMove(window, start)
    QTest.mousePress(window, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, start)
    for step in range(1, steps + 1):
        QTest.mouseMove(window, start + (end - start) * step / steps)
        qtbot.wait(10)
    QTest.mouseRelease(window, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, end)
    qtbot.wait(50)


def _resize(qtbot, window, width: int, height: int) -> None:
    window.resize(width, height)
    qtbot.waitUntil(lambda: window.width() == width and window.height() == height)
    qtbot.wait(50)  # the docks' new sizes are laid out after the resize


def test_a_dragged_dock_keeps_its_share_across_window_resizes(qtbot, window, sample_model):
    open_and_wait(qtbot, window, sample_model)
    _resize(qtbot, window, 1200, 800)
    dock = window.inspector_dock
    qtbot.waitUntil(lambda: abs(dock.width() - 0.3 * 1200) < 12)  # the usual share at first
    separator_x = (window.centralWidget().geometry().right() + dock.geometry().left()) // 2
    middle_y = dock.geometry().center().y()
    _drag(qtbot, window, QPoint(separator_x, middle_y), QPoint(separator_x - 200, middle_y))
    share = dock.width() / window.width()
    assert 0.44 < share < 0.5  # 560 of 1,200 px
    for width, height in ((1400, 900), (800, 600), (1600, 1000)):
        _resize(qtbot, window, width, height)
        qtbot.waitUntil(lambda: abs(dock.width() - share * width) <= 3)
    # A narrower right column than usual is kept too (above the profiles list's minimum width).
    separator_x = (window.centralWidget().geometry().right() + dock.geometry().left()) // 2
    _drag(qtbot, window, QPoint(separator_x, middle_y), QPoint(separator_x + dock.width() - 300, middle_y))
    share = dock.width() / window.width()
    assert share < 0.2  # ~300 of 1,600 px
    _resize(qtbot, window, 2000, 1100)
    qtbot.waitUntil(lambda: abs(dock.width() - share * 2000) <= 3)


def test_the_charts_height_is_kept_too(qtbot, window, sample_model):
    open_and_wait(qtbot, window, sample_model)
    _resize(qtbot, window, 1200, 800)
    charts = window.panels_dock
    charts.show()
    window.resizeDocks([charts], [240], Qt.Orientation.Vertical)
    qtbot.waitUntil(lambda: abs(charts.height() - 240) <= 2)
    separator_y = (window.centralWidget().geometry().bottom() + charts.geometry().top()) // 2
    middle_x = charts.geometry().center().x()
    _drag(qtbot, window, QPoint(middle_x, separator_y), QPoint(middle_x, separator_y - 160))
    share = charts.height() / window.height()
    assert share > 0.45  # ~400 of 800 px
    _resize(qtbot, window, 1300, 1000)
    qtbot.waitUntil(lambda: abs(charts.height() - share * 1000) <= 3)
