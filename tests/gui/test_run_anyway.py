"""A run refused because the model's weights exceed the free memory offers "Run anyway", which
runs it again past the check (real window offscreen, the real profiler child process)."""
from __future__ import annotations

import sys

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMessageBox

from engine.free_memory import IGNORE_OPTION, available_memory_bytes, is_memory_refusal
from tests.engine.test_weights_beyond_memory import _model_with_external_weight
from tests.gui.gui_fixtures import (answer_next_message_box, on_next_message_box, open_and_wait,  # noqa: F401
                                   settings, window)

RUN_TIMEOUT_MS = 120_000
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="free memory read from /proc/meminfo")


def close_next_message_box(tries: int = 4800) -> list:
    """Close the next modal message box, whatever its buttons (Esc); returns a list that receives its text."""
    told = []

    def close(box):
        told.append(box.text())
        box.reject()

    on_next_message_box(close, tries)
    return told


def test_run_anyway_runs_again_past_the_memory_check(qtbot, window, tmp_path):
    path = _model_with_external_weight(tmp_path, int(2 * available_memory_bytes() / 32) + 1)
    open_and_wait(qtbot, window, path)  # opened: its weights are located, not read
    window.error_dialogs = True
    dialog = window.show_run_dialog()
    dialog.runs_spin.setValue(1)
    dialog.warmup_spin.setValue(0)
    asked = answer_next_message_box(qtbot, "Run anyway")
    with qtbot.waitSignal(window.profileFailed, timeout=RUN_TIMEOUT_MS) as refused:
        qtbot.mouseClick(dialog.run_button, Qt.MouseButton.LeftButton)
    assert is_memory_refusal(refused.args[0]) and asked == [refused.args[0]]
    # Run anyway: the same run with the check overridden.  This file holds 32 bytes of the 45 GB
    # it declares, so reading the weights fails: a different failure, after the check.
    told = close_next_message_box()
    with qtbot.waitSignal(window.profileFailed, timeout=RUN_TIMEOUT_MS) as second:
        qtbot.waitUntil(lambda: window.worker is not None, timeout=5_000)
        assert IGNORE_OPTION in window.worker.process.arguments()
    assert "could not read its external data" in second.args[0] and not is_memory_refusal(second.args[0])
    assert told == [second.args[0]]


def test_cancel_in_the_refusal_runs_nothing_more(qtbot, window, tmp_path):
    path = _model_with_external_weight(tmp_path, int(2 * available_memory_bytes() / 32) + 1)
    open_and_wait(qtbot, window, path)
    window.error_dialogs = True
    dialog = window.show_run_dialog()
    dialog.runs_spin.setValue(1)
    dialog.warmup_spin.setValue(0)
    answer_next_message_box(qtbot, QMessageBox.StandardButton.Cancel)
    with qtbot.waitSignal(window.profileFailed, timeout=RUN_TIMEOUT_MS):
        qtbot.mouseClick(dialog.run_button, Qt.MouseButton.LeftButton)
    qtbot.wait(200)
    assert window.worker is None and window.entries == []
