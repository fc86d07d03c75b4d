"""The conversion dialog's result text says what was checked by value, which check failed and
at which layer (issue 11): a real conversion in the dialog's worker, with and without a
converter mutation (applied to a copy of one converter function, as in test_convert_values)."""
from __future__ import annotations

import sys

from PySide6.QtCore import Qt

from gui.convert_dialog import ConvertDialog
from tests.engine.test_convert_values import MUTATIONS, _model, mutate

CONVERT_TIMEOUT_MS = 120_000


def _convert_in_dialog(qtbot, tmp_path):
    dialog = ConvertDialog(str(_model(tmp_path / "m.onnx")), ["image"])
    qtbot.addWidget(dialog)
    dialog.output_field.setText(str(tmp_path / "m.mlpackage"))
    dialog.show()  # as from the menu: the result is laid out in a visible window
    qtbot.waitExposed(dialog)
    with qtbot.waitSignal(dialog.converted, timeout=CONVERT_TIMEOUT_MS) as done:
        qtbot.mouseClick(dialog.convert_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: dialog.worker is None, timeout=CONVERT_TIMEOUT_MS)
    return dialog, done.args[0]


def test_dialog_says_what_was_checked_and_what_did_not_run(qtbot, tmp_path):
    dialog, result = _convert_in_dialog(qtbot, tmp_path)
    text = dialog.status.text()
    assert result.verified
    assert "values: weights equal" in text and "on the MIL reference evaluator" in text
    assert "weights: passed" in text and "values: passed" in text
    if sys.platform != "darwin":
        assert "no check failed; not run: coreml" in text and "not run on Core ML" in text
        assert "verified" not in text  # nothing claims more than what ran


def test_dialog_names_the_failed_check_and_the_first_departing_layer(qtbot, monkeypatch, tmp_path):
    function, old, new, first_node, _ = MUTATIONS["negated_conv_weights"]
    mutate(monkeypatch, function, old, new)
    dialog, result = _convert_in_dialog(qtbot, tmp_path)
    text = dialog.status.text()
    assert not result.verified
    assert f"check failed: weights (first departing layer: {first_node}), values (first departing layer: " \
           f"{first_node})" in text


def test_the_whole_result_shows_wrapped_and_a_longer_one_scrolls(qtbot, tmp_path):
    dialog, _ = _convert_in_dialog(qtbot, tmp_path)
    viewport = dialog.footer.status_area.viewport()
    needed = dialog.status.heightForWidth(viewport.width())
    assert dialog.status.text().count("<br>") >= 2  # verdict and the checks, one line each or more
    assert viewport.height() >= needed  # the dialog grew: no line of the result is cut
    assert dialog.status.width() <= viewport.width()  # wrapped to the width, never wider
    # A result taller than the screen scrolls to its last line instead of being cut.
    dialog.footer.show_finished("<br>".join(f"check {i}: passed" for i in range(200)))
    bar = dialog.footer.status_area.verticalScrollBar()
    qtbot.waitUntil(lambda: bar.maximum() > 0)
    bar.setValue(bar.maximum())
    assert bar.maximum() >= dialog.status.height() - viewport.height()
