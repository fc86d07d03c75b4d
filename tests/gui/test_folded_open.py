"""Big models open folded by namespace; a node inside collapsed groups is reached by opening them."""
from __future__ import annotations

import pytest

from engine.grouping import FOLD_NODES_ENVIRONMENT
from engine.transformer_samples import TransformerConfig, write_transformer
from tests.gui.gui_fixtures import LOAD_TIMEOUT_MS, open_and_wait, settings, window  # noqa: F401 (fixtures)


@pytest.fixture(scope="module")
def transformer(tmp_path_factory):
    config = TransformerConfig(layers=6, hidden=64, heads=4, kv_heads=2, intermediate=96, vocab=50, past=5)
    return write_transformer(tmp_path_factory.mktemp("folded") / "decoder.onnx", config)


def test_above_the_threshold_a_model_opens_folded(qtbot, window, transformer, monkeypatch):
    monkeypatch.setenv(FOLD_NODES_ENVIRONMENT, "100")
    open_and_wait(qtbot, window, transformer)
    loaded = window.loaded
    assert loaded.grouping == "namespace" and window.grouping() == "namespace"
    assert "opened folded" in loaded.note and "100" in loaded.note
    # `model` holds nearly every node: opened, so its blocks are the boxes on screen
    assert "group:namespace:model" not in loaded.collapsed
    blocks = [f"group:namespace:model/layers.{i}" for i in range(6)]
    assert set(blocks) <= loaded.collapsed and set(blocks) <= set(loaded.layout.boxes)
    drawn = [b for b in loaded.layout.boxes if not b.startswith(("input:", "output:"))]
    assert len(drawn) < 30 and loaded.analysis.totals.compute_nodes > 300
    assert all(box in window.scene.node_index for box in blocks)  # drawn, with their totals


def test_below_the_threshold_or_switched_off_the_model_opens_whole(qtbot, window, transformer, monkeypatch):
    monkeypatch.setenv(FOLD_NODES_ENVIRONMENT, "0")
    open_and_wait(qtbot, window, transformer)
    assert window.loaded.grouping == "none" and not window.loaded.groups
    assert len(window.loaded.layout.boxes) > window.loaded.analysis.totals.compute_nodes


def test_selecting_a_hidden_node_opens_its_groups(qtbot, window, transformer, monkeypatch):
    monkeypatch.setenv(FOLD_NODES_ENVIRONMENT, "100")
    open_and_wait(qtbot, window, transformer)
    analysis = window.loaded.analysis
    node_id = next(n for n in analysis.order if analysis.graph.node(n).name.startswith("/model/layers.4/mlp/up_proj/"))
    assert window.loaded.layout.box_of(node_id) == "group:namespace:model/layers.4"
    with qtbot.waitSignal(window.modelLoaded, timeout=LOAD_TIMEOUT_MS):
        window.select_node(node_id)  # as a chart bar or a hint does
    assert window.inspector.node_id == node_id
    assert node_id in window.loaded.layout.boxes  # drawn as itself now
    assert window.scene.item_for(node_id).isSelected()
    assert "group:namespace:model/layers.4" not in window.loaded.collapsed
    assert "group:namespace:model/layers.3" in window.loaded.collapsed  # the others stay folded


def test_a_block_is_compared_with_the_median_block_of_a_real_profile(qtbot, window, transformer, monkeypatch):
    from engine.targets import ProfileSettings
    from engine.targets.cpu import CpuTarget

    monkeypatch.setenv(FOLD_NODES_ENVIRONMENT, "100")
    open_and_wait(qtbot, window, transformer)
    block = "group:namespace:model/layers.2"
    window.select_node(block)
    assert window.inspector.rows()["Group (collapsed)/Repeated block"] == \
        "one of the 6 blocks model/layers.*"
    with CpuTarget() as target:
        profile = target.profile(ProfileSettings(runs=3, warmup=1), model_path=transformer)
    window.add_profile(profile)
    window.select_node(block)
    text = window.inspector.rows()["Group (collapsed)/Repeated block"]
    assert text.startswith("one of the 6 blocks model/layers.*") and "x the median block (" in text
    assert "the slowest" in text and "measured" in text
    assert text.count("model/layers.*") == text.count("median block") == text.count("slowest") == 1
