"""A PyTorch .pt2 program opened in the app (what File > Open does) folds by its modules."""
from __future__ import annotations

from pathlib import Path

from gui.app import MODEL_FILTER
from engine.layout import GROUP_PREFIX
from gui.graph_view import is_group
from tests.gui.gui_fixtures import LOAD_TIMEOUT_MS, open_and_wait, settings, window  # noqa: F401 (fixtures)

TRANSFORMER = Path(__file__).resolve().parents[1] / "data" / "transformer_block.pt2"


def test_pt2_opens_and_groups_by_module(qtbot, window):
    assert "*.pt2" in MODEL_FILTER  # offered by the File > Open dialog
    open_and_wait(qtbot, window, TRANSFORMER)
    loaded = window.loaded
    assert loaded.model.format == "pt2" and loaded.analysis.totals.compute_nodes == 24
    assert "matmul" in window.scene.node_index
    with qtbot.waitSignal(window.modelLoaded, timeout=LOAD_TIMEOUT_MS):
        window.set_grouping("namespace")
    scene = window.scene
    top = {scene.groups[g].name for g in scene.node_ids if is_group(g)}
    assert top == {"attn", "mlp"}  # modules of one node (norm1, norm2) stay plain boxes
    assert f"{GROUP_PREFIX}namespace:attn" in scene.node_index
