"""GUI fixtures: a main window per test (closed by qtbot), settings in a temporary file.

Not a conftest.py: the suite imports the root tests/conftest.py as `conftest`, and a second
conftest.py here would shadow it.  Test modules import these fixtures by name.
"""
from __future__ import annotations

import pytest

pytest.importorskip("pytestqt")
from PySide6.QtCore import QSettings, Qt, QTimer  # noqa: E402
from PySide6.QtWidgets import QApplication, QMessageBox  # noqa: E402

from gui.app import MainWindow  # noqa: E402

LOAD_TIMEOUT_MS = 30_000


@pytest.fixture
def settings(tmp_path):
    return QSettings(str(tmp_path / "layerscope.ini"), QSettings.Format.IniFormat)


@pytest.fixture
def window(qtbot, settings):
    win = MainWindow(settings=settings)
    qtbot.addWidget(win, before_close_func=no_questions)  # qtbot closes and deletes it after the test
    win.resize(1200, 800)
    win.show()
    yield win
    no_questions(win)
    win.close()


def no_questions(win) -> None:
    """A test's profiles are not saved: no "Save session?" when the test is over."""
    win.ask_before_discarding = False


def open_and_wait(qtbot, window, path) -> None:
    with qtbot.waitSignal(window.modelLoaded, timeout=LOAD_TIMEOUT_MS):
        window.open_path(str(path))
    assert not window.loading


def on_next_message_box(handle, tries: int = 1200) -> None:
    """Call `handle(box)` with the next modal message box once it is shown (looked for every 25 ms,
    `tries` times: as long as the test waits for it, or a late box would stay open and hang the test)."""
    def look(remaining=tries):
        box = QApplication.activeModalWidget()
        if isinstance(box, QMessageBox):
            handle(box)
        elif remaining:
            QTimer.singleShot(25, lambda: look(remaining - 1))

    QTimer.singleShot(0, look)


def message_box_button(box: QMessageBox, answer):
    """The button of `answer` (a QMessageBox.StandardButton, or a button's text without its &)."""
    if isinstance(answer, QMessageBox.StandardButton):
        return box.button(answer)
    return next(b for b in box.buttons() if b.text().replace("&", "") == answer)


def answer_next_message_box(qtbot, answer, asked: list = None, tries: int = 1200) -> list:
    """Click `answer` (see message_box_button) in the next modal message box, with a real mouse
    click, once it is shown; returns a list that receives the box's text."""
    asked = [] if asked is None else asked

    def click(box):
        asked.append(box.text())
        qtbot.mouseClick(message_box_button(box, answer), Qt.MouseButton.LeftButton)

    on_next_message_box(click, tries)
    return asked


def write_small_decoder(folder, layers: int):
    """A generated decoder (engine.transformer_samples) with `layers` repeated blocks, small enough
    for a test to open, lay out and profile in a few seconds."""
    from engine.transformer_samples import TransformerConfig, write_transformer
    config = TransformerConfig(layers=layers, hidden=64, heads=4, kv_heads=2, intermediate=96, vocab=50, past=5)
    return write_transformer(folder / "decoder.onnx", config)


def open_folded(qtbot, window, path, monkeypatch) -> None:
    """Open `path` as a big model opens: folded by namespace (the threshold lowered to 100 nodes)."""
    from engine.grouping import FOLD_NODES_ENVIRONMENT
    monkeypatch.setenv(FOLD_NODES_ENVIRONMENT, "100")
    open_and_wait(qtbot, window, path)
    assert window.loaded.grouping == "namespace"


def relaid(qtbot, window, action):
    """Run `action` (a relayout: open or close a group, Expand all, …) and wait until it is shown."""
    with qtbot.waitSignal(window.modelLoaded, timeout=LOAD_TIMEOUT_MS):
        result = action()
    return result
