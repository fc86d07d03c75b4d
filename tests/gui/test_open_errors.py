"""Opening a file that is not a model, in the window: what the person is told, and when."""
from __future__ import annotations

from PySide6.QtWidgets import QMessageBox

from tests.gui.gui_fixtures import LOAD_TIMEOUT_MS, answer_next_message_box, open_and_wait, settings, window  # noqa: F401


def _open_and_answer(qtbot, window, path, answer=QMessageBox.StandardButton.Ok) -> list[str]:
    asked = answer_next_message_box(qtbot, answer)
    with qtbot.waitSignal(window.loadFailed, timeout=LOAD_TIMEOUT_MS):
        window.open_path(str(path))
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
