"""Keyboard shortcuts of the main window: no two share a key (Qt triggers neither of two actions
with the same shortcut, silently), and Expand all / Collapse all answer theirs (real window offscreen,
a generated decoder opened folded)."""
from __future__ import annotations

from collections import defaultdict

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QKeySequence, QShortcut

from tests.gui.gui_fixtures import open_folded, relaid, settings, window, write_small_decoder  # noqa: F401

# A US keyboard types these with Shift and the key under them: Ctrl+* is pressed as Ctrl+Shift+8,
# so a shortcut Ctrl+Shift+8 (or Ctrl++ beside Ctrl+Shift+=) is the same keys.
US_SHIFTED = dict(zip('!@#$%^&*()_+{}|:"<>?~', "1234567890-=[]\\;',./`"))
SHIFT, KEYPAD = Qt.KeyboardModifier.ShiftModifier, Qt.KeyboardModifier.KeypadModifier


def pressed_keys(sequence: QKeySequence) -> tuple:
    """The keys pressed for `sequence` on a US keyboard: (modifiers, key name) per chord."""
    chords = []
    for index in range(sequence.count()):
        combination = sequence[index]
        modifiers = combination.keyboardModifiers() & ~KEYPAD  # the keypad's * is the same shortcut
        name = QKeySequence(combination.key()).toString(QKeySequence.SequenceFormat.PortableText)
        if name in US_SHIFTED:
            name, modifiers = US_SHIFTED[name], modifiers | SHIFT
        chords.append((modifiers.value, name.upper()))
    return tuple(chords)


def window_keys(window) -> dict:
    """Pressed keys -> what answers them in the main window: every action's shortcuts, every
    window-wide QShortcut, and the keys the graph view handles itself (a shortcut would take them)."""
    users = defaultdict(list)
    for action in window.findChildren(QAction):
        for sequence in action.shortcuts():
            users[pressed_keys(sequence)].append(action.text().replace("&", ""))
    for shortcut in window.findChildren(QShortcut):
        if shortcut.context() != Qt.ShortcutContext.WidgetShortcut:
            users[pressed_keys(shortcut.key())].append(f"QShortcut of {type(shortcut.parent()).__name__}")
    view = window.view
    for key in [*view.ARROW_STEPS, *view.GROUP_KEYS, Qt.Key.Key_Plus, Qt.Key.Key_Equal, Qt.Key.Key_Minus]:
        users[pressed_keys(QKeySequence(key))].append("graph view")
    return users


def test_no_two_things_in_the_window_answer_the_same_keys(qtbot, window):
    users = window_keys(window)
    assert len(users) > 20  # the menus' shortcuts were all found
    shared = {keys: names for keys, names in users.items() if len(names) > 1}
    assert not shared, shared


def test_the_clash_check_sees_a_shifted_symbol_as_its_keys():
    # Zoom in's Ctrl++ is pressed as Ctrl+Shift+= on a US keyboard: the check must see them as one.
    assert pressed_keys(QKeySequence("Ctrl++")) == pressed_keys(QKeySequence("Ctrl+Shift+="))
    assert pressed_keys(QKeySequence("Ctrl+*")) != pressed_keys(QKeySequence("Ctrl+8"))


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    return write_small_decoder(tmp_path_factory.mktemp("shortcuts"), layers=3)


def test_expand_all_and_collapse_all_answer_their_keys_on_a_folded_model(qtbot, window, decoder, monkeypatch):
    view = window.view
    assert not window.expand_all_action.isEnabled()
    qtbot.keyClick(view.viewport(), Qt.Key.Key_Asterisk, Qt.KeyboardModifier.ControlModifier)  # no model: nothing
    open_folded(qtbot, window, decoder, monkeypatch)
    groups = frozenset(window.loaded.groups)
    assert len(groups) >= 3 and window.loaded.collapsed
    view.setFocus()
    relaid(qtbot, window, lambda: qtbot.keyClick(view.viewport(), Qt.Key.Key_Asterisk,
                                                 Qt.KeyboardModifier.ControlModifier))
    assert not window.loaded.collapsed  # every group open
    relaid(qtbot, window, lambda: qtbot.keyClick(view.viewport(), Qt.Key.Key_Slash,
                                                 Qt.KeyboardModifier.ControlModifier | KEYPAD))
    assert window.loaded.collapsed == groups  # the keypad's / too
    relaid(qtbot, window, lambda: qtbot.keyClick(view.viewport(), Qt.Key.Key_Asterisk,
                                                 Qt.KeyboardModifier.ControlModifier | KEYPAD))
    assert not window.loaded.collapsed
    # Shown in the menu and in Help > Keyboard Shortcuts.
    shortcuts = dict(window.shortcuts())
    assert shortcuts["View > Group by > Expand all groups"] == "Ctrl+*"
    assert shortcuts["View > Group by > Collapse all groups"] == "Ctrl+/"
