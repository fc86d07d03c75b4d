"""Where the view starts on a folded transformer whose KV-cache inputs make a row far wider than
the window (issue 14): on its first block, whole and readable, not on the left end of that row;
Fit graph (Ctrl+0) starts there too.  Real windows, real generated models."""
from __future__ import annotations

import pytest
from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QColor

from engine.grouping import FOLD_NODES_ENVIRONMENT
from engine.transformer_samples import TransformerConfig, write_transformer
from tests.gui.gui_fixtures import open_and_wait, settings, window  # noqa: F401 (fixtures)

BLOCK = "group:namespace:model/layers.{}"


@pytest.fixture(scope="module", params=[24, 64], ids=lambda layers: f"{layers}_layers")
def wide_decoder(request, tmp_path_factory):
    # Two KV-cache inputs per layer: 48 or 128 graph inputs in the top row, 10,000-27,000 px wide (8 windows or more).
    config = TransformerConfig(layers=request.param, hidden=64, heads=4, kv_heads=2, intermediate=96,
                               vocab=50, past=5)
    return write_transformer(tmp_path_factory.mktemp("wide") / "decoder.onnx", config)


@pytest.fixture
def opened(qtbot, window, wide_decoder, monkeypatch):
    monkeypatch.setenv(FOLD_NODES_ENVIRONMENT, "100")
    open_and_wait(qtbot, window, wide_decoder)
    assert window.loaded.grouping == "namespace" and BLOCK.format(0) in window.loaded.collapsed
    return window


def _visible(view) -> QRectF:
    return view.mapToScene(view.viewport().rect()).boundingRect()


def _box(scene, box_id: str) -> QRectF:
    return QRectF(*scene.rects[scene.node_index[box_id]].tolist())


def _cut_by_top_edge(view) -> list[str]:
    """The boxes the view's top edge runs through (a row shown without its names)."""
    scene, visible = view.graph_scene, _visible(view)
    return [scene.node_ids[i] for i, (x, y, w, h) in enumerate(scene.rects.tolist())
            if y < visible.top() < y + h and x < visible.right() and x + w > visible.left()]


def _dark_pixels_inside(view, rect: QRectF) -> int:
    """Pixels of text (dark) painted inside `rect` (scene), its border left out."""
    image = view.viewport().grab().toImage()
    box = view.mapFromScene(rect).boundingRect().adjusted(3, 3, -3, -3)
    return sum(QColor(image.pixel(x, y)).lightness() < 128
               for x in range(box.left(), box.right()) for y in range(box.top(), box.bottom()))


def test_the_first_view_holds_the_first_blocks_whole_and_readable(opened):
    view, scene = opened.view, opened.scene
    # No wide row left: the KV-cache inputs and the present outputs are drawn beside their blocks.
    outputs = scene.rects[[i for i, n in enumerate(scene.node_ids) if n.startswith("output:")]]
    visible = _visible(view)
    assert len(outputs) > 40 and (outputs[:, 0] + outputs[:, 2]).max() - outputs[:, 0].min() < 2 * visible.width()
    assert view.current_scale() >= view.READABLE_SCALE
    for block in (BLOCK.format(0), BLOCK.format(1)):
        assert visible.contains(_box(scene, block)), block
    assert _cut_by_top_edge(view) == []
    # No empty band of the frame above them: the model's first whole boxes start in the top quarter.
    shown = [QRectF(*r) for n, r in zip(scene.node_ids, scene.rects.tolist()) if not n.startswith("input:")]
    assert min(r.top() for r in shown if visible.contains(r)) - visible.top() < visible.height() / 4


def test_fit_graph_shows_the_first_block_not_the_left_end_of_the_inputs(qtbot, opened):
    view, scene = opened.view, opened.scene
    view.centerOn(scene.sceneRect().bottomRight())  # somewhere else first
    view.setFocus()
    qtbot.keyClick(view, Qt.Key.Key_0, Qt.KeyboardModifier.ControlModifier)  # the shortcut of View > Fit graph
    assert view.current_scale() >= view.FIT_MIN_SCALE  # labels still drawn
    assert _visible(view).contains(_box(scene, BLOCK.format(0)))
    assert _cut_by_top_edge(view) == []
    # Its labels are drawn: at exactly the smallest label zoom, thousands of pixels from the origin
    # (Qt's level of detail there rounds to a hair below it).
    assert _dark_pixels_inside(view, _box(scene, BLOCK.format(0))) > 20
    opened.fit_action.trigger()  # the menu item and the toolbar button: the same place again
    assert _visible(view).contains(_box(scene, BLOCK.format(0)))
