"""Small faults found by clicking through the real window (Xvfb, sixth round): the place kept by
Expand all / Collapse all, groups opened and closed from the keyboard, the Run dialog's phone line
shown whole, the empty graph area while the first model opens, the status line's figures."""
from __future__ import annotations

import pytest
from PySide6.QtCore import QPointF, QRectF, Qt

from tests.gui.gui_fixtures import (LOAD_TIMEOUT_MS, open_and_wait, open_folded, relaid, settings,  # noqa: F401
                                    window, write_small_decoder)

BLOCK = "group:namespace:model/layers.{}"


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    return write_small_decoder(tmp_path_factory.mktemp("walkthrough"), layers=17)  # 1,106 nodes


@pytest.fixture
def folded(qtbot, window, decoder, monkeypatch):
    open_folded(qtbot, window, decoder, monkeypatch)
    assert BLOCK.format(8) in window.loaded.collapsed
    return window


def _visible(window) -> QRectF:
    return window.view.mapToScene(window.view.viewport().rect()).boundingRect()


def _box_centre(window, box_id: str) -> QPointF:
    x, y, w, h = window.scene.rects[window.scene.node_index[box_id]].tolist()
    return QPointF(x + w / 2, y + h / 2)


def test_expand_all_and_collapse_all_keep_the_place_looked_at(qtbot, folded):
    window = folded
    block = BLOCK.format(8)
    window.view.center_on_node(block)
    assert window.view.box_near_centre() == block and window.inspector.node_id is None
    relaid(qtbot, window, lambda: window.set_all_groups(False))
    assert not window.loaded.collapsed
    # The block just opened is in view (its frame's title band), not the model's first row.
    x, y, w, h = window.loaded.layout.frames[block]
    visible = _visible(window)
    assert visible.contains(QPointF(x + w / 2, y + 10)), (visible, (x, y, w, h))
    first_row = min(r[1] for r in window.loaded.layout.boxes.values())
    assert visible.top() > first_row
    # Collapse all from a node inside it: the view is on the box that now holds that node.
    inside = next(n for n in window.loaded.groups[block].members if n in window.scene.node_index)
    window.view.center_on_node(inside)
    relaid(qtbot, window, lambda: window.set_all_groups(True))
    holder = window.scene.box_id(inside)
    assert holder is not None and _visible(window).contains(_box_centre(window, holder))


def test_collapse_all_with_a_group_selected_goes_to_the_box_that_holds_it(qtbot, folded):
    window = folded
    block = BLOCK.format(8)
    window.view.select_node(block)
    assert window.inspector.node_id == block
    window.view.center_on_node(BLOCK.format(0))  # looking elsewhere: the selection decides
    relaid(qtbot, window, lambda: window.set_all_groups(True))
    holder = window.scene.box_id(window.loaded.groups[block].members[0])
    assert holder is not None and holder != block and _visible(window).contains(_box_centre(window, holder))


def test_the_run_dialogs_phone_line_is_shown_whole(qtbot):
    from engine.bridge.android import NO_PHONE
    from gui.run_dialog import RunDialog

    dialog = RunDialog()
    qtbot.addWidget(dialog)
    dialog.show()
    qtbot.waitUntil(lambda: not dialog.looking_for_phones(), timeout=30_000)  # adb's answer here
    dialog._on_phones_found([], [f"Android: {NO_PHONE}"])  # what it says on a machine without adb phones
    label = dialog.phones_label
    qtbot.waitUntil(lambda: label.height() >= label.heightForWidth(label.width()))
    assert "USB debugging" in label.text() and label.heightForWidth(label.width()) > 2 * label.fontMetrics().height()


def test_the_empty_area_says_a_model_is_opening_not_that_none_is_open(qtbot, window, decoder, tmp_path):
    hint = window.view.empty_hint
    assert hint.isVisible() and hint.text().startswith("No model open")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(decoder.read_bytes()[:5000])
    window.error_dialogs = False
    with qtbot.waitSignal(window.loadFailed, timeout=LOAD_TIMEOUT_MS):
        window.open_path(str(broken))
        assert hint.isVisible() and hint.text() == "Opening broken.onnx…"
    assert hint.isVisible() and hint.text().startswith("No model open")  # it failed: how to open one
    with qtbot.waitSignal(window.modelLoaded, timeout=LOAD_TIMEOUT_MS):
        window.open_path(str(decoder))
        assert hint.text() == "Opening decoder.onnx…"
    assert not hint.isVisible()


def test_the_status_line_says_its_figures_are_estimated_and_shows_whole_on_hover(qtbot, folded):
    window = folded
    totals = window.loaded.analysis.totals
    text = window.summary_label.text()
    assert f"{totals.compute_nodes:,} nodes ({totals.constant_nodes:,} constant nodes folded)" in text
    assert "· estimated: params " in text and text.index("estimated:") < text.index("MACs") < text.index("peak")
    assert totals.compute_nodes >= 1000 and window.summary_label.toolTip() == text


def test_enter_opens_the_selected_group_and_backspace_closes_it(qtbot, folded):
    window = folded
    view, block = window.view, BLOCK.format(8)
    view.select_node(block)
    view.setFocus()
    relaid(qtbot, window, lambda: qtbot.keyClick(view.viewport(), Qt.Key.Key_Return))
    assert block not in window.loaded.collapsed and block in window.loaded.layout.frames
    inside = next(n for n in window.loaded.groups[block].members if n in window.scene.node_index)
    view.select_node(inside)
    relaid(qtbot, window, lambda: qtbot.keyClick(view.viewport(), Qt.Key.Key_Backspace))
    assert block in window.loaded.collapsed and block in window.scene.node_index
    # Nothing to toggle (a plain node outside any group selected, or nothing): the key does nothing.
    view.scene().clearSelection()
    assert not view.toggle_selected_group(False) and not view.toggle_selected_group(True)
    assert ("Graph: open the selected group / close the group around the selection", "Enter / Backspace") \
        in window.shortcuts()


def test_the_status_line_ends_in_an_ellipsis_where_a_note_leaves_it_no_room(qtbot, folded):
    window = folded
    label, text = window.summary_label, window.summary_label.text()
    assert window.progress_label.text().endswith("double-click a group to open it")  # the folded-open note
    window.resize(3000, 800)
    qtbot.waitUntil(lambda: label.shown_text() == text)  # room enough: all of it
    window.resize(700, 800)
    qtbot.waitUntil(lambda: label.width() < label.fontMetrics().horizontalAdvance(text))
    shown = label.shown_text()
    assert shown.endswith("…") and text.startswith(shown[:-1]) and len(shown) > 10
    assert label.fontMetrics().horizontalAdvance(shown) <= label.contentsRect().width()


def test_a_tall_graph_exported_as_png_keeps_its_whole_legend(qtbot, window, sample_model, tmp_path):
    from PySide6.QtGui import QImage

    open_and_wait(qtbot, window, sample_model)
    legend = window.view.legend
    path = tmp_path / "tall.png"
    window.export_graph(str(path), max_side=1200)  # a 92-layer chain at 1,200 px: narrower than the legend
    scene = window.scene.sceneRect()
    assert scene.width() * 1200 / (scene.height() + legend.height() + 16) < legend.width()
    image = QImage(str(path))
    assert image.width() >= legend.width() + 16
    # The legend's right border is drawn (not cut): a dark pixel in its last columns, on its first rows.
    right = legend.width() + 8 - 1
    column = [image.pixelColor(x, y).lightness() for x in range(right - 3, right + 1) for y in range(8, 8 + legend.height())]
    assert min(column) < 230


def test_a_smaller_window_keeps_most_of_its_width_for_the_graph(qtbot, window, sample_model):
    open_and_wait(qtbot, window, sample_model)
    window.resize(1600, 1000)
    qtbot.waitUntil(lambda: window.width() == 1600)
    window.size_docks()  # as when first shown at this size: the docks get 30 % of 1,600 px
    qtbot.waitUntil(lambda: window.inspector_dock.width() > 0.4 * 800)
    wide = window.inspector_dock.width()
    window.resize(800, 600)
    qtbot.waitUntil(lambda: window.width() == 800)
    qtbot.waitUntil(lambda: window.inspector_dock.width() <= 0.4 * 800)
    assert window.inspector_dock.width() < wide and window.view.width() >= 0.5 * 800
    window.resize(1600, 1000)  # and back: the inspector is not left at a fifth of the width or less
    qtbot.waitUntil(lambda: window.width() == 1600)
    qtbot.waitUntil(lambda: window.inspector_dock.width() >= 0.2 * 1600)


def test_the_run_dialog_builds_the_charts_before_the_import_thread_starts(qtbot, window, sample_model, monkeypatch):
    # The charts' ~650 signal connections each waited for the GIL the importing thread held: the
    # dialog's first opening took 1.8-2.3 s instead of 0.2 s (measured on this 2-core machine).
    import threading

    started = []
    original_start = threading.Thread.start

    def start(thread):
        started.append((thread.name, window.panels.created))
        return original_start(thread)

    open_and_wait(qtbot, window, sample_model)
    assert not window.panels.created
    monkeypatch.setattr(threading.Thread, "start", start)
    dialog = window.show_run_dialog()
    monkeypatch.undo()
    assert dialog.isVisible() and window.panels.created
    assert ("layerscope-warm-imports", True) in started


def test_the_status_bar_run_progress_does_not_contradict_the_run_count(qtbot, window, sample_model):
    open_and_wait(qtbot, window, sample_model)
    # What the worker reports 67 measured runs into 2,000 (after 3 warm-up runs): done and total count
    # the warm-up runs, the message does not.
    window._on_profile_progress(70, 2003, "run 67/2000: 8.46 ms")
    assert window.progress_label.text() == "Profiling: run 67/2000: 8.46 ms"
    assert window.run_progress.text() == "3%" and "2003" not in window.run_progress.text()


def test_a_run_refused_for_memory_says_why_and_does_not_show_a_full_bar(qtbot, window, tmp_path):
    from tests.engine.test_weights_beyond_memory import _model_with_external_weight
    from engine.free_memory import available_memory_bytes

    if available_memory_bytes() is None:
        pytest.skip("the free memory is read from Linux's /proc/meminfo: elsewhere nothing is refused")
    path = _model_with_external_weight(tmp_path, int(2 * available_memory_bytes() / 32) + 1)
    open_and_wait(qtbot, window, path)  # opened: its weights are located, not read
    window.error_dialogs = False
    dialog = window.show_run_dialog()
    dialog.runs_spin.setValue(1)
    dialog.warmup_spin.setValue(0)
    with qtbot.waitSignal(window.profileFailed, timeout=60_000) as failed:
        qtbot.mouseClick(dialog.run_button, Qt.MouseButton.LeftButton)
    assert "GiB of memory free on this computer" in failed.args[0] and "--target" not in failed.args[0]
    assert dialog.status.text().startswith("Failed: model.onnx: its weights outside the model file take")
    assert dialog.progress.value() < dialog.progress.maximum()  # it did not finish: no 100 %


def test_a_large_model_is_searched_once_typing_pauses(qtbot, folded, monkeypatch):
    window = folded
    monkeypatch.setattr(type(window), "SEARCH_AT_ONCE_NODES", 1_000)  # this decoder has 1,106 nodes
    qtbot.keyClicks(window.search_field, "layers.8/mlp/down")  # 17 keystrokes: no search yet
    assert window.search_label.text() == "…" and window._search_timer.isActive()
    qtbot.waitUntil(lambda: window.search_label.text().endswith("found"), timeout=3_000)
    assert window.search_label.text() == f"{len(window.scene.find_nodes('layers.8/mlp/down'))} found"
    # Enter right after typing does not wait for the pause: the match is selected at once.
    window.search_field.clear()
    qtbot.keyClicks(window.search_field, "layers.9/mlp/down_proj/MatMul")
    relaid(qtbot, window, lambda: qtbot.keyClick(window.search_field, Qt.Key.Key_Return))
    assert "layers.9/mlp/down_proj/MatMul" in window.inspector.node_id and window.search_label.text() == "1 / 1"


def test_the_view_menu_shows_no_item_that_can_never_be_used(qtbot, window, sample_model):
    open_and_wait(qtbot, window, sample_model)
    view_menu = next(a.menu() for a in window.menuBar().actions() if a.text().replace("&", "") == "View")
    greyed = [a.text() for a in view_menu.actions() if not a.isSeparator() and not a.isEnabled()]
    assert greyed == []
    assert window.panels_dock.toggleViewAction() in view_menu.actions()  # the charts can be shown again
