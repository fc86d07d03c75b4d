"""A drawing's group totals summed in one pass (prime_group_totals) equal each group's summed
alone: the frame titles and group boxes of a block's open read them."""
from __future__ import annotations

import pytest

import gui.folded_groups as folded_groups
from engine.grouping import FOLD_NODES_ENVIRONMENT
from engine.transformer_samples import TransformerConfig, write_transformer
from tests.gui.gui_fixtures import LOAD_TIMEOUT_MS, open_and_wait, settings, window  # noqa: F401 (fixtures)

BLOCK = "group:namespace:model/layers.{}"


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("group-totals")
    small = TransformerConfig(layers=4, hidden=64, heads=4, kv_heads=2, intermediate=96, vocab=50, past=5)
    return write_transformer(folder / "decoder.onnx", small)


@pytest.fixture
def folded(qtbot, window, decoder, monkeypatch):
    monkeypatch.setenv(FOLD_NODES_ENVIRONMENT, "100")
    monkeypatch.setattr(folded_groups, "PREPARE_DELAY_MS", 10**9)  # no background preparation here
    open_and_wait(qtbot, window, decoder)
    assert window.loaded.folded_layouts is not None and BLOCK.format(1) in window.loaded.collapsed
    return window


def test_a_drawings_group_totals_made_together_equal_each_made_alone(qtbot, folded):
    from engine.layout import group_totals as engine_group_totals
    from gui.graph_groups import group_totals

    window = folded
    with qtbot.waitSignal(window.modelLoaded, timeout=LOAD_TIMEOUT_MS):
        window.toggle_group(BLOCK.format(2), False)  # its frame and its sub-groups' boxes: new totals
    loaded, scene = window.loaded, window.scene
    drawn = [g for g in loaded.groups if g in loaded.layout.boxes or g in loaded.layout.frames]
    assert BLOCK.format(2) in loaded.layout.frames and len(drawn) > 5
    for group_id in drawn:
        assert group_totals(loaded.groups[group_id], loaded.analysis) == \
            engine_group_totals(loaded.groups[group_id], loaded.analysis), group_id
    assert scene.frame_layer.title(scene.frame_layer.ids.index(BLOCK.format(2))).startswith("▾ ")
