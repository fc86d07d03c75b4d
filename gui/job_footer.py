"""The foot of a dialog that starts a long job (Run, Convert): status line, progress bar, buttons.

One widget so that both dialogs show progress the same way: a busy bar until
the job reports a count, then done/total; a status line a person can select
and copy (error messages name files and nodes); the buttons right-aligned.
"""
from __future__ import annotations

from typing import Sequence

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QProgressBar, QPushButton, QScrollArea, QVBoxLayout, QWidget


class JobFooter(QWidget):
    def __init__(self, buttons: Sequence[QPushButton], parent=None):
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.status.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
        # A result can run to many lines (a conversion lists every check): it wraps to the width
        # and scrolls vertically instead of being cut at the dialog's height.
        self.status_area = QScrollArea()
        self.status_area.setWidget(self.status)
        self.status_area.setWidgetResizable(True)
        self.status_area.setFrameShape(QFrame.Shape.NoFrame)
        self.status_area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        layout.addWidget(self.status_area, 1)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        layout.addWidget(self.progress)
        row = QHBoxLayout()
        row.addStretch(1)
        for button in buttons:
            row.addWidget(button)
        layout.addLayout(row)

    def show_busy(self, message: str = "Starting…") -> None:
        """No count yet: a moving bar."""
        self.progress.setRange(0, 0)
        self.status.setText(message)

    def show_progress(self, done: int, total: int, message: str) -> None:
        if total > 0:
            self.progress.setRange(0, total)
            self.progress.setValue(min(done, total))
        else:
            self.progress.setRange(0, 0)
        self.status.setText(message)

    def show_finished(self, message: str, complete: bool = True) -> None:
        """The job ended: a full bar, or (stopped early: `complete` False) the bar where it stopped."""
        if complete or self.progress.maximum() == 0:
            self.progress.setRange(0, 1)
            self.progress.setValue(1 if complete else 0)
        self.status.setText(message)
        self._grow_to_show_status()

    def _grow_to_show_status(self) -> None:
        """Make the window taller by what the result needs beyond the space it has (up to the
        screen's height); whatever is still longer scrolls."""
        window = self.window()
        viewport = self.status_area.viewport()
        missing = self.status.heightForWidth(viewport.width()) - viewport.height()
        screen = window.screen()
        if missing <= 0 or window is self or screen is None:
            return
        room = screen.availableGeometry().height() - window.frameGeometry().height()
        window.resize(window.width(), window.height() + min(missing, max(room, 0)))
