"""GUI fixtures: a main window per test (closed by qtbot), settings in a temporary file.

Not a conftest.py: the suite imports the root tests/conftest.py as `conftest`, and a second
conftest.py here would shadow it.  Test modules import these fixtures by name.
"""
from __future__ import annotations

import pytest

pytest.importorskip("pytestqt")
from PySide6.QtCore import QSettings  # noqa: E402

from gui.app import MainWindow  # noqa: E402

LOAD_TIMEOUT_MS = 30_000


@pytest.fixture
def settings(tmp_path):
    return QSettings(str(tmp_path / "layerscope.ini"), QSettings.Format.IniFormat)


@pytest.fixture
def window(qtbot, settings):
    win = MainWindow(settings=settings)
    qtbot.addWidget(win)  # qtbot closes and deletes it after the test
    win.resize(1200, 800)
    win.show()
    yield win
    win.close()


def open_and_wait(qtbot, window, path) -> None:
    with qtbot.waitSignal(window.modelLoaded, timeout=LOAD_TIMEOUT_MS):
        window.open_path(str(path))
    assert not window.loading
