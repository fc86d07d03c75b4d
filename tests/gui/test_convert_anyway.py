"""A conversion refused because the model's weights exceed the free memory asks whether to
"Convert anyway", which runs the same conversion past the check (real window offscreen, the
dialog's real worker thread, a real ONNX model whose weights are kept outside its file).

The model declares a weight twice the free memory (tests.engine.test_weights_beyond_memory) and
its weights file holds 32 bytes: the check refuses it deterministically; past the check, reading
the weights fails with its own error, which is how a test here tells that the check was passed."""
from __future__ import annotations

import sys

import pytest
from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QApplication, QMessageBox

from engine.free_memory import IGNORE_OPTION, available_memory_bytes
from tests.engine.test_weights_beyond_memory import _model_with_external_weight
from tests.gui.gui_fixtures import (answer_next_message_box, message_box_button, on_next_message_box,  # noqa: F401
                                   open_and_wait, settings, window)

CONVERT_TIMEOUT_MS = 120_000
# The answerer looks for the question every 25 ms for as long as the test waits for it: a question shown
# after it gave up would stay open, modal, and the test would hang instead of failing.
ANSWER_TRIES = CONVERT_TIMEOUT_MS // 25
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="free memory read from /proc/meminfo")


def _refused_model_in_dialog(qtbot, window, tmp_path, error_dialogs: bool):
    rows = int(2 * available_memory_bytes() / 32) + 1  # float32 rows of 8: twice the free memory
    path = _model_with_external_weight(tmp_path, rows)
    open_and_wait(qtbot, window, path)  # opened: its weights are located, not read
    window.error_dialogs = error_dialogs
    dialog = window.show_convert_dialog()
    dialog.output_field.setText(str(tmp_path / "out.mlpackage"))
    return dialog, rows * 8 * 4


class QuestionWatch:
    """Once started, cancels every message box shown (Esc), keeping their texts: a question that
    should not come would otherwise block the test, modal.  Stopped at the end of the test, passed
    or failed (fixture `question_watch`), so that it cannot answer another test's question."""

    def __init__(self):
        self.told: list[str] = []
        self.timer = QTimer()
        self.timer.timeout.connect(self._cancel)

    def start(self) -> None:
        self.timer.start(25)

    def _cancel(self) -> None:
        box = QApplication.activeModalWidget()
        if isinstance(box, QMessageBox):
            self.told.append(box.text())
            box.reject()

    def stop(self) -> list[str]:
        self.timer.stop()
        return self.told


@pytest.fixture
def question_watch():
    watch = QuestionWatch()
    yield watch
    watch.stop()


def _gib(figure: float) -> str:
    return f"{figure / 2**30:,.1f} GiB"


def test_convert_anyway_converts_again_past_the_memory_check(qtbot, window, tmp_path, question_watch):
    dialog, declared = _refused_model_in_dialog(qtbot, window, tmp_path, error_dialogs=True)
    dialog.precision_combo.setCurrentIndex(dialog.precision_combo.findData("fp32"))
    started, failures = [], []
    dialog.conversionStarted.connect(started.append)
    dialog.conversionFailed.connect(failures.append)
    asked = answer_next_message_box(qtbot, "Convert anyway", tries=ANSWER_TRIES)
    qtbot.mouseClick(dialog.convert_button, Qt.MouseButton.LeftButton)
    # The question, once the refused worker has ended: both sizes, as the refusal says them.
    qtbot.waitUntil(lambda: asked != [], timeout=CONVERT_TIMEOUT_MS)
    question_watch.start()  # a second question would be cancelled, and counted
    assert asked[0].startswith(f"model.onnx: its weights outside the model file take {_gib(declared)} (as stored), "
                               "more than the ")
    assert "GiB of memory free on this computer (the system's estimate)." in asked[0]
    assert asked[0].endswith("Convert it anyway?") and IGNORE_OPTION not in asked[0]
    assert "of memory free on this computer" in failures[0] and IGNORE_OPTION not in failures[0]
    # Convert anyway: the same conversion (same output, same options) with the check overridden.
    # The weights file holds 32 bytes of what it declares: reading them fails, after the check.
    qtbot.waitUntil(lambda: len(failures) == 2, timeout=CONVERT_TIMEOUT_MS)
    first, second = started
    assert not first.options.get("ignore_memory_check") and second.options["ignore_memory_check"] is True
    assert second.output_path == first.output_path == str(tmp_path / "out.mlpackage")
    assert {**first.options, "ignore_memory_check": True} == second.options  # fp32 kept, and the rest
    assert "could not read its external data" in failures[1] and "memory free" not in failures[1]
    qtbot.waitUntil(lambda: dialog.worker is None, timeout=CONVERT_TIMEOUT_MS)
    qtbot.wait(300)
    # No second question: a failure past the check is only reported.
    assert question_watch.stop() == [] and len(started) == 2
    assert "could not read its external data" in dialog.status.text()
    assert dialog.convert_button.isEnabled() and not (tmp_path / "out.mlpackage").exists()


def test_cancel_leaves_the_dialog_usable_with_the_refusal_shown(qtbot, window, tmp_path):
    dialog, _ = _refused_model_in_dialog(qtbot, window, tmp_path, error_dialogs=True)
    asked = answer_next_message_box(qtbot, QMessageBox.StandardButton.Cancel, tries=ANSWER_TRIES)
    with qtbot.waitSignal(dialog.conversionFailed, timeout=CONVERT_TIMEOUT_MS):
        qtbot.mouseClick(dialog.convert_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: asked != [], timeout=CONVERT_TIMEOUT_MS)
    qtbot.wait(200)
    assert dialog.worker is None and dialog.result is None
    assert dialog.convert_button.isEnabled() and dialog.output_field.isEnabled()
    text = dialog.status.text()
    assert "Failed: model.onnx: its weights outside the model file take" in text
    assert text.endswith("converting reads them all into memory: convert it on a computer with more memory, or "
                         "free memory first, or press Convert again and choose Convert anyway.</span>")
    assert IGNORE_OPTION not in text and dialog.progress.value() < dialog.progress.maximum()
    # Convert again asks again.
    again = answer_next_message_box(qtbot, QMessageBox.StandardButton.Cancel, tries=ANSWER_TRIES)
    qtbot.mouseClick(dialog.convert_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: again != [], timeout=CONVERT_TIMEOUT_MS)
    assert again[0].split(" more than ")[0] == asked[0].split(" more than ")[0]  # the free memory moves


def test_without_error_dialogs_the_refusal_is_reported_in_the_apps_words(qtbot, window, tmp_path, question_watch):
    dialog, _ = _refused_model_in_dialog(qtbot, window, tmp_path, error_dialogs=False)
    question_watch.start()  # a question would be cancelled, and counted: none is asked
    with qtbot.waitSignal(dialog.conversionFailed, timeout=CONVERT_TIMEOUT_MS) as refused:
        qtbot.mouseClick(dialog.convert_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: dialog.worker is None, timeout=CONVERT_TIMEOUT_MS)
    qtbot.wait(300)
    assert question_watch.stop() == []
    message = refused.args[0]
    assert message.startswith("model.onnx: its weights outside the model file take ")
    assert message.endswith("converting reads them all into memory: convert it on a computer with more memory, "
                            "or free memory first.")  # no button to name: none is offered
    assert IGNORE_OPTION not in message and IGNORE_OPTION not in dialog.status.text()
    assert "GiB of memory free on this computer" in dialog.status.text()
    assert dialog.convert_button.isEnabled()


def test_convert_anyway_answered_after_the_dialog_closed_starts_nothing(qtbot, window, tmp_path):
    """The dialog closed while its question is open (the window closing it) takes the question with it,
    and a "Convert anyway" clicked then starts no conversion nobody sees, in a thread that could
    outlive the window (a QThread destroyed running aborts the process)."""
    dialog, _ = _refused_model_in_dialog(qtbot, window, tmp_path, error_dialogs=True)
    started, asked, closed_with_it = [], [], []
    dialog.conversionStarted.connect(started.append)

    def close_then_answer(box):
        asked.append(box.text())
        dialog.close()
        closed_with_it.append(not box.isVisible())
        qtbot.mouseClick(message_box_button(box, "Convert anyway"), Qt.MouseButton.LeftButton)

    on_next_message_box(close_then_answer, ANSWER_TRIES)
    qtbot.mouseClick(dialog.convert_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: asked != [], timeout=CONVERT_TIMEOUT_MS)
    qtbot.wait(300)
    assert len(started) == 1 and dialog.worker is None and not dialog.isVisible()
    assert closed_with_it == [True] and dialog.question is None
