"""Opening a file that is not a model, in the window: what the person is told, and when."""
from __future__ import annotations

from contextlib import contextmanager

import pytest
from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QApplication, QMessageBox

from engine.targets import ProfileSettings
from gui.run_dialog import RunRequest, execute_run
from tests.conftest import light_model
from tests.gui.gui_fixtures import LOAD_TIMEOUT_MS, open_and_wait, settings, window  # noqa: F401


@contextmanager
def answering_every_box(qtbot, answer=QMessageBox.StandardButton.Cancel):
    """Yields the list of the texts of every message box shown meanwhile; each is answered with a
    click on OK if it has one (an error), else on `answer` (a question)."""
    asked, waiting = [], [True]

    def click():
        box = QApplication.activeModalWidget()
        if isinstance(box, QMessageBox) and box.isVisible():
            asked.append(box.text())
            qtbot.mouseClick(box.button(QMessageBox.StandardButton.Ok) or box.button(answer), Qt.MouseButton.LeftButton)
        if waiting[0]:
            QTimer.singleShot(20, click)

    QTimer.singleShot(0, click)
    try:
        yield asked
    finally:
        waiting[0] = False


def _open_and_answer(qtbot, window, path) -> list[str]:
    """Open `path`, which fails: the texts of the boxes shown (a question asked before the error is
    answered Cancel, so the open would stop there and the test time out)."""
    with answering_every_box(qtbot) as asked:
        with qtbot.waitSignal(window.loadFailed, timeout=10_000):
            window.open_path(str(path))
        qtbot.wait(100)  # a box that would follow the error
    return asked


def test_text_file_error_leads_with_the_plain_statement(qtbot, window, tmp_path, sample_model):
    open_and_wait(qtbot, window, sample_model)
    path = tmp_path / "notes.onnx"
    path.write_text("hello world, not a model\n")
    asked = _open_and_answer(qtbot, window, path)
    assert asked == [f"{path}: not an ONNX model: the file is plain text, which does not parse as an ONNX "
                     "protobuf (unexpected wire type 4 at byte 2)"]
    assert window.loaded.path == str(sample_model)  # the model shown stays


def test_truncated_file_error(qtbot, window, tmp_path, sample_model):
    path = tmp_path / "cut.onnx"
    path.write_bytes(sample_model.read_bytes()[:3000])
    asked = _open_and_answer(qtbot, window, path)
    assert len(asked) == 1 and asked[0].startswith(f"{path}: truncated ONNX model: the file ends in the middle")
    assert asked[0].endswith("remain)")
    assert window.loaded is None


# --- "Save session?" comes once the other file has opened, not before -------------------------------

@pytest.fixture(scope="module")
def sample_profile(sample_model):
    return execute_run(RunRequest(str(sample_model), "cpu", ProfileSettings(runs=2, warmup=1))).entries[0].profile


@pytest.mark.parametrize("name,content", [("notes.onnx", b"hello world, not a model\n"),
                                          ("broken.layerscope", b"{not json")])
def test_a_file_that_fails_to_open_asks_nothing_and_keeps_the_profiles(qtbot, window, tmp_path, sample_model,
                                                                       sample_profile, name, content):
    open_and_wait(qtbot, window, sample_model)
    window.add_profile(sample_profile)
    assert window.has_unsaved_profiles()
    path = tmp_path / name
    path.write_bytes(content)
    asked = _open_and_answer(qtbot, window, path)  # the first box must be the error, with its OK
    assert len(asked) == 1 and asked[0].startswith(str(path)), asked
    assert window.loaded.path == str(sample_model) and len(window.entries) == 1 and window.has_unsaved_profiles()


def test_a_running_profile_is_not_stopped_for_a_file_that_fails_to_open(qtbot, window, tmp_path, sample_model):
    open_and_wait(qtbot, window, sample_model)
    dialog = window.show_run_dialog()
    dialog.runs_spin.setValue(100_000)
    qtbot.mouseClick(dialog.run_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: dialog.progress.value() >= 2, timeout=60_000)
    path = tmp_path / "cut.onnx"
    path.write_bytes(sample_model.read_bytes()[:3000])
    asked = _open_and_answer(qtbot, window, path)
    assert len(asked) == 1 and "truncated ONNX model" in asked[0], asked
    assert window.worker is not None  # still measuring
    done = dialog.progress.value()
    qtbot.waitUntil(lambda: dialog.progress.value() > done, timeout=60_000)
    window.stop_profile_worker()


def test_discard_after_the_other_model_opened_shows_it(qtbot, window, sample_model, sample_profile):
    open_and_wait(qtbot, window, sample_model)
    window.add_profile(sample_profile)
    with answering_every_box(qtbot, QMessageBox.StandardButton.Discard) as asked:
        open_and_wait(qtbot, window, light_model("squeezenet"))
    assert len(asked) == 1 and asked[0].startswith(f"The session of {sample_model.name} has 1 profile(s)")
    assert window.loaded.path.endswith("light_squeezenet.onnx") and window.entries == []
