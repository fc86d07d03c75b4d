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


def test_the_compute_unit_overlay_says_planned_for_a_core_ml_plan_and_unknown_without_one():
    """The overlay's kind is the units' own kind, not the times' (a phone profile: planned)."""
    from dataclasses import replace
    from types import SimpleNamespace

    from engine.analysis import analyze
    from engine.profile import NodeTiming, Profile, TimingStats
    from engine.samples import default_sample_path
    from gui.graph_view import GraphScene
    from importers import open_model
    analysis = analyze(open_model(default_sample_path()))
    ids = [m.node_id for m in analysis.compute_nodes()][:3]
    nodes = [NodeTiming(i, analysis.nodes[i].op_type, analysis.nodes[i].stage,
                        TimingStats.from_samples([1.0], "attributed"), "model", "attributed",
                        compute_unit="NeuralEngine", compute_unit_kind="planned") for i in ids]
    profile = Profile.build(model_path="m.mlpackage", model_format="onnx", target={"name": "iphone"},
                            mode="deployed", settings={}, end_to_end_samples=[3.0], profiled_samples=(), groups=(),
                            nodes=nodes, runs_completed=1)
    scene = SimpleNamespace(profile=profile)  # profile_kinds reads only the scene's profile
    assert GraphScene.profile_kinds(scene, "compute_unit") == ["planned"]
    assert GraphScene.profile_kinds(scene, "time") == ["attributed"]
    scene.profile = replace(profile, nodes={n.node_id: replace(n, compute_unit="unknown", compute_unit_kind="")
                                           for n in nodes})
    assert GraphScene.profile_kinds(scene, "compute_unit") == ["unknown"]
