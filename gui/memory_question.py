"""The question asked when the weights a run or a conversion would read exceed the free memory
(engine.free_memory refused them): the person may know better (swap, memory about to be freed)."""
from __future__ import annotations

from PySide6.QtWidgets import QMessageBox, QPushButton, QWidget


def read_anyway_question(parent: QWidget, text: str, informative: str,
                         button_text: str) -> tuple[QMessageBox, QPushButton]:
    """The box (not shown yet; Cancel is the default) and its button that reads the weights anyway."""
    box = QMessageBox(QMessageBox.Icon.Warning, "Not enough free memory", text, QMessageBox.StandardButton.Cancel,
                      parent)
    box.setInformativeText(informative)
    anyway = box.addButton(button_text, QMessageBox.ButtonRole.AcceptRole)
    box.setDefaultButton(QMessageBox.StandardButton.Cancel)
    return box, anyway
