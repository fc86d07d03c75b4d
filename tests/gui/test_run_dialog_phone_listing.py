"""The Run dialog asks adb for phones off the UI thread: it opens at once, says it is looking, the targets
fill in when adb answers, and closing it while adb is still silent does not wait.

The adb server is the fake one of tests/engine/test_android.py (its `adb` and `phone` fixtures, imported);
its `answering` gate holds every reply back, as a real adb server does while it is starting.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("adbutils")
pytest.importorskip("ai_edge_litert")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from test_android import SERIAL, adb, phone  # noqa: E402,F401  (fixtures: the fake adb server and its phone)

from PySide6.QtCore import Qt  # noqa: E402

from gui.run_dialog import RunDialog  # noqa: E402


def _targets(dialog) -> list[str]:
    return [str(dialog.target_combo.itemData(i)) for i in range(dialog.target_combo.count())]


def test_the_dialog_opens_while_adb_is_silent_and_lists_the_phone_when_it_answers(qtbot, adb):  # noqa: F811
    adb.answering.clear()  # adb is "starting its server": no reply until released
    try:
        dialog = RunDialog()
        qtbot.addWidget(dialog)
        dialog.show()
        # The constructor returned while adb had not answered a single request: nothing asked on this thread.
        assert not adb.answering.is_set()
        assert dialog.looking_for_phones() and "Looking for phones" in dialog.phones_label.text()
        assert f"android:{SERIAL}" not in _targets(dialog) and "cpu" in _targets(dialog)
        assert not dialog.phones_again_button.isEnabled()
        dialog.target_combo.setCurrentIndex(dialog.target_combo.findData("cpu"))  # usable meanwhile
    finally:
        adb.answering.set()
    qtbot.waitUntil(lambda: not dialog.looking_for_phones(), timeout=20_000)
    assert f"android:{SERIAL}" in _targets(dialog)
    assert "1 phone found" in dialog.phones_label.text()
    assert dialog.target_name() == "cpu"  # the person's choice is kept when the list fills in
    assert dialog.phones_again_button.isEnabled()

    # The phone is unplugged; "Look again" takes it off the list and says why none is found.
    adb.phones[SERIAL].gone = True
    qtbot.mouseClick(dialog.phones_again_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not dialog.looking_for_phones(), timeout=20_000)
    assert f"android:{SERIAL}" not in _targets(dialog)
    assert dialog.phones_label.text().startswith("No phone found") and "USB debugging" in dialog.phones_label.text()


def test_closing_the_dialog_while_adb_is_silent_does_not_wait(qtbot, adb):  # noqa: F811
    adb.answering.clear()
    try:
        dialog = RunDialog()
        qtbot.addWidget(dialog)
        dialog.show()
        finder = dialog.phone_finder
        assert finder is not None and not adb.answering.is_set()
        dialog.close()
        dialog.deleteLater()
        qtbot.wait(50)
        assert not adb.answering.is_set()  # closed and deleted before adb said anything
        # The answer arrives after the dialog is gone: the finder's thread ends quietly.
        with qtbot.waitSignal(finder.found, timeout=20_000):
            adb.answering.set()
    finally:
        adb.answering.set()
