"""The Run dialog's target choice: Core ML targets (a Mac agent's iPhone, an iPhone of this Mac)."""
from __future__ import annotations

import sys

import pytest

from engine.targets import TargetError
from gui.run_dialog import RunDialog, connected_phone_targets


def test_the_dialog_offers_typed_phone_addresses_and_refuses_exact_mode_on_core_ml(qtbot):
    dialog = RunDialog()
    qtbot.addWidget(dialog)
    items = [dialog.target_combo.itemData(i) for i in range(dialog.target_combo.count())]
    assert "cpu" in items and not any("NAME" in str(item) or "HOST" in str(item) for item in items)
    assert "device=" in dialog.target_combo.lineEdit().placeholderText()
    assert "?device=" in dialog.target_combo.toolTip() and "agent app" not in dialog.target_combo.toolTip()
    dialog.model_path = "model.onnx"
    dialog.target_combo.setEditText("ws://mac.local:7878?device=Test%20iPhone")
    dialog.mode_combo.setCurrentIndex(dialog.mode_combo.findData("exact"))
    with pytest.raises(TargetError, match="Core ML has no exact mode.*Deployed"):
        dialog.request()
    dialog.mode_combo.setCurrentIndex(dialog.mode_combo.findData("deployed"))
    request = dialog.request()
    assert request.target == "ws://mac.local:7878?device=Test%20iPhone" and request.settings.mode == "deployed"


def test_phones_are_listed_as_targets_only_on_a_mac():
    if sys.platform == "darwin":
        pytest.skip("a Mac lists its connected phones")
    assert connected_phone_targets() == []
