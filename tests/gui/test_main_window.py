"""The main window as a person uses it: open, look, select, recolour, search, export (offscreen)."""
from __future__ import annotations

import sys
import xml.etree.ElementTree as ElementTree

import pytest
from PySide6.QtCore import QMimeData, QPointF, QRectF, Qt, QUrl
from PySide6.QtGui import QDropEvent, QImage
from PySide6.QtWidgets import QMessageBox

from tests.conftest import LIGHT_ZOO, light_model
from engine.ir import ModelLoadError
from engine.layout import INPUT_PREFIX, OUTPUT_PREFIX
from gui.graph_view import OVERLAYS, LabelLayer
from importers import open_model
from tests.gui.gui_fixtures import LOAD_TIMEOUT_MS, open_and_wait, settings, window  # noqa: F401 (fixtures)


def _brushes(scene):
    return [item.brush().color().name() for item in scene.node_items]


@pytest.mark.parametrize("path", LIGHT_ZOO, ids=lambda p: p.stem)
def test_light_zoo_every_compute_node_drawn_and_selectable(qtbot, window, path):
    open_and_wait(qtbot, window, path)
    scene, analysis = window.scene, window.loaded.analysis
    compute = {m.node_id for m in analysis.compute_nodes()}
    drawn = {node_id for node_id in scene.node_ids if not node_id.startswith((INPUT_PREFIX, OUTPUT_PREFIX))}
    assert drawn == compute
    # Every edge is drawn by one of the batched path items, as a subpath of its own.
    edges = window.loaded.layout.edges
    assert len(edges) > 0 and scene.edge_items
    assert sum(item.path().elementCount() for item in scene.edge_items) == sum(len(e.points) for e in edges)
    assert {id(scene.edge_item(i)) for i in range(len(edges))} == {id(item) for item in scene.edge_items}
    # Every box is a real scene item with its geometry; selecting it fills the inspector.
    for node_id in scene.node_ids:
        item = scene.item_for(node_id)
        assert item.scene() is scene and item.isVisible()
        assert item.flags() & item.GraphicsItemFlag.ItemIsSelectable
        x, y, w, h = window.loaded.layout.boxes[node_id]
        assert item.rect().getRect() == pytest.approx((x, y, w, h))
    for node_id in sorted(compute)[:: max(1, len(compute) // 40)]:
        window.view.select_node(node_id, center=False)
        assert scene.selectedItems() == [scene.item_for(node_id)]
        assert window.inspector.node_id == node_id
        assert window.inspector.rows()["Node/Id"] == node_id


def test_mouse_click_selects_node(qtbot, window, sample_model):
    open_and_wait(qtbot, window, sample_model)
    node_id = "/decoder/up1/ConvTranspose"
    window.view.select_node(node_id)  # centres it
    window.scene.clearSelection()
    item = window.scene.item_for(node_id)
    point = window.view.mapFromScene(item.sceneBoundingRect().center())
    qtbot.mouseClick(window.view.viewport(), Qt.MouseButton.LeftButton, pos=point)
    assert window.inspector.node_id == node_id
    # A click on the background clears the selection and the inspector.
    empty = window.view.mapFromScene(QPointF(-40, -40))
    window.view.centerOn(QPointF(0, 0))
    empty = window.view.mapFromScene(QPointF(-40, -40))
    qtbot.mouseClick(window.view.viewport(), Qt.MouseButton.LeftButton, pos=empty)
    assert window.inspector.node_id is None


def test_inspector_shows_estimated_static_figures(qtbot, window, sample_model):
    open_and_wait(qtbot, window, sample_model)
    node_id = "/decoder/up1/ConvTranspose"
    window.view.select_node(node_id)
    rows, kinds = window.inspector.rows(), window.inspector.kinds()
    metrics = window.loaded.analysis.nodes[node_id]
    assert rows["Node/Op type"] == "ConvTranspose"
    assert rows["Node/Namespace"] == "decoder/up1"
    assert rows["Node/Stage"] == "decoder"
    assert rows["Attributes (5)/strides"] == "[2, 2]"
    assert f"{metrics.macs:,}" in rows["Static cost (estimated from shapes)/MACs"]
    assert f"{metrics.params:,}" in rows["Static cost (estimated from shapes)/Params"]
    static = {k: v for k, v in kinds.items() if k.startswith("Static cost")}
    assert static and set(static.values()) == {"estimated"}
    inputs = {k: v for k, v in rows.items() if k.startswith("Inputs")}
    assert any("decoder.up1.weight" in k and v.startswith("float32 512x128x2x2")
               and v.endswith("· weight") for k, v in inputs.items())
    outputs = [v for k, v in rows.items() if k.startswith("Outputs")]
    assert outputs == ["float32 1x128x10x10  (50.00 KiB)"]
    # Graph inputs are selectable too.
    window.view.select_node(INPUT_PREFIX + "image")
    assert window.inspector.rows()["Graph input/Tensor"].startswith("float32 1x3x160x160")


def test_overlays_recolour_without_rebuilding(qtbot, window):
    open_and_wait(qtbot, window, light_model("densenet121"))
    scene = window.scene
    items_before = len(scene.items())
    node_items = list(scene.node_items)
    category_colours = _brushes(scene)
    seen = {}
    static = [key for key, spec in OVERLAYS.items() if spec is None or not spec.needs_profile]
    for key in static:  # the profile overlays are tested with a profile (test_profiling.py)
        window.set_overlay(key)
        assert window.scene is scene and len(scene.items()) == items_before
        assert scene.node_items == node_items
        seen[key] = _brushes(scene)
        if OVERLAYS[key] is not None:
            assert window.view.legend.gradient and window.view.legend.kind == "estimated"
            assert 0 < len(scene.top_node_ids) <= 10
            assert all(scene.item_for(n).pen().widthF() >= 4 for n in scene.top_node_ids)
    assert seen["none"] == category_colours
    for key in ("macs", "params", "output_bytes", "arithmetic_intensity"):
        assert seen[key] != category_colours, key
    assert seen["macs"] != seen["params"]
    # The heaviest MAC node is drawn in the darkest colour.
    window.set_overlay("macs")
    heaviest = window.loaded.analysis.heaviest(1)[0].node_id
    assert scene.top_node_ids[0] == heaviest
    assert scene.item_for(heaviest).brush().color().name() == "#e31a1c"
    assert window.overlay_combo.currentData() == "macs" and window.overlay_actions["macs"].isChecked()
    with pytest.raises(ValueError):
        window.set_overlay("nonsense")


def test_many_brush_calls_keep_none_alive(qtbot, window):
    """PySide6 6.12.0 dropped a reference to None per setBrush/setPen (docs/known-issues.md): catch it here."""
    open_and_wait(qtbot, window, light_model("densenet121"))
    before = sys.getrefcount(None)
    for _ in range(15):  # ~15 x 2 x 670 setBrush/setPen calls
        for key in ("macs", "none"):
            window.set_overlay(key)
    assert sys.getrefcount(None) >= before - 100


def test_search_finds_and_jumps(qtbot, window, sample_model):
    open_and_wait(qtbot, window, sample_model)
    window.search_field.setText("convtranspose")
    assert window.search_label.text() == "5 found"
    first = window.search_next()
    assert first == "/decoder/up1/ConvTranspose"
    assert window.inspector.node_id == first
    assert window.view.mapToScene(window.view.viewport().rect()).boundingRect().intersects(
        window.scene.item_for(first).sceneBoundingRect())
    assert window.search_next() == "/decoder/up2/ConvTranspose"
    assert window.search_label.text() == "2 / 5"
    qtbot.keyClicks(window.search_field, "", delay=0)
    window.search_field.setText("block3/dw")
    qtbot.keyClick(window.search_field, Qt.Key.Key_Return)
    assert window.inspector.node_id.startswith("/encoder/block3/dw")
    window.search_field.setText("no-such-layer")
    assert window.search_label.text() == "not found"
    assert window.search_next() is None


def test_broken_file_shows_importer_message_and_keeps_model(qtbot, window, sample_model, tmp_path, monkeypatch):
    open_and_wait(qtbot, window, sample_model)
    scene, loaded = window.scene, window.loaded
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\x07this is not a protobuf model" * 10)
    with pytest.raises(ModelLoadError) as expected:
        open_model(broken)
    shown = []
    monkeypatch.setattr(QMessageBox, "critical", staticmethod(lambda parent, title, text, *a: shown.append(text)))
    with qtbot.waitSignal(window.loadFailed, timeout=LOAD_TIMEOUT_MS) as blocker:
        window.open_path(str(broken))
    assert shown == [str(expected.value)] == blocker.args
    assert window.scene is scene and window.loaded is loaded
    assert window.loaded.path == str(sample_model)
    assert not window.progress.isVisible()


def test_show_constants_toggle(qtbot, window):
    open_and_wait(qtbot, window, light_model("squeezenet"))
    analysis = window.loaded.analysis
    hidden_count = len(window.scene.node_ids)
    before = dict(zip(window.scene.node_ids, window.scene.rects.tolist()))
    with qtbot.waitSignal(window.modelLoaded, timeout=LOAD_TIMEOUT_MS):
        window.constants_box.setChecked(True)
    assert window.show_constants_action.isChecked()
    constants = {n for n, m in analysis.nodes.items() if m.is_constant}
    assert constants <= set(window.scene.node_ids)
    assert len(window.scene.node_ids) == hidden_count + len(constants)
    assert window.loaded.analysis is analysis  # not re-imported or re-analysed
    # The other boxes stay where they were; the constants beside the leftmost ones are in the scene.
    rects = dict(zip(window.scene.node_ids, window.scene.rects.tolist()))
    assert {n: r for n, r in rects.items() if n not in constants} == before
    assert min(x for x, _, _, _ in rects.values()) < 0
    bounds = window.scene.sceneRect()
    assert all(bounds.contains(QRectF(*r)) for r in rects.values())
    with qtbot.waitSignal(window.modelLoaded, timeout=LOAD_TIMEOUT_MS):
        window.show_constants_action.setChecked(False)
    assert len(window.scene.node_ids) == hidden_count


def test_zoom_and_fit(qtbot, window, sample_model):
    open_and_wait(qtbot, window, sample_model)
    view = window.view
    view.fit()
    fitted = view.current_scale()
    visible = view.mapToScene(view.viewport().rect()).boundingRect()
    drawn = window.scene.itemsBoundingRect().adjusted(10, 10, -10, -10)
    if drawn.height() * view.FIT_MIN_SCALE > view.viewport().height():  # too tall to be read whole:
        assert fitted >= view.FIT_MIN_SCALE and visible.top() <= drawn.top()  # its width, from the top
        if fitted > view.FIT_MIN_SCALE:  # else even its width is too wide: its left part
            assert visible.left() <= drawn.left() and visible.right() >= drawn.right()
    else:
        assert visible.contains(drawn)
    window.zoom_in_action.trigger()
    assert view.current_scale() == pytest.approx(fitted * 1.2)
    window.zoom_out_action.trigger()
    assert view.current_scale() == pytest.approx(fitted)
    qtbot.keyClick(view, Qt.Key.Key_Plus)
    assert view.current_scale() == pytest.approx(fitted * 1.2)


def test_edge_tooltip_text(qtbot, window, sample_model):
    open_and_wait(qtbot, window, sample_model)
    scene = window.scene
    index = next(i for i, e in enumerate(scene.edges) if e.source == "/encoder/stem/conv/Conv")
    edge = scene.edges[index]
    (x0, y0), (x1, y1) = edge.points[0], edge.points[1]
    assert scene.edge_near(QPointF((x0 + x1) / 2, (y0 + y1) / 2), 3.0) == index
    assert scene.edge_tooltip(index) == f"{edge.value}\nfloat32 1x16x80x80  (400.00 KiB)"


def test_export_png_and_svg(qtbot, window, sample_model, tmp_path):
    open_and_wait(qtbot, window, sample_model)
    png, svg = tmp_path / "graph.png", tmp_path / "graph.svg"
    window.export_graph(str(png))
    image = QImage(str(png))
    assert not image.isNull() and image.width() > 100 and image.height() > 1000
    window.export_graph(str(svg))
    root = ElementTree.parse(svg).getroot()
    assert root.tag.endswith("svg")
    assert "ConvTranspose" in svg.read_text(encoding="utf-8")


def test_drop_and_recent_files(qtbot, window, sample_model):
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(light_model("squeezenet")))])
    event = QDropEvent(QPointF(50, 50), Qt.DropAction.CopyAction, mime, Qt.MouseButton.NoButton,
                       Qt.KeyboardModifier.NoModifier)
    with qtbot.waitSignal(window.modelLoaded, timeout=LOAD_TIMEOUT_MS):
        window.dropEvent(event)
    assert window.loaded.path.endswith("light_squeezenet.onnx")
    open_and_wait(qtbot, window, sample_model)
    recent = window.recent_files()
    assert recent[0] == str(sample_model.resolve()) and recent[1].endswith("light_squeezenet.onnx")
    assert [a.text() for a in window.recent_menu.actions()] == recent
    with qtbot.waitSignal(window.modelLoaded, timeout=LOAD_TIMEOUT_MS):
        window.recent_menu.actions()[1].trigger()
    assert window.loaded.path.endswith("light_squeezenet.onnx")


def test_labels_painted_by_one_item(qtbot, window):
    open_and_wait(qtbot, window, light_model("densenet121"))
    scene = window.scene
    labels = [item for item in scene.items() if isinstance(item, LabelLayer)]
    assert labels == [scene.labels]
    # boxes + edges + the label layer (text and arrow heads): nothing per node beyond its box
    assert len(scene.items()) == len(scene.node_items) + len(scene.edge_items) + 1


def test_the_empty_window_says_how_to_open_a_model(qtbot, window, sample_model, tmp_path):
    window.show()
    qtbot.waitExposed(window)
    hint = window.view.empty_hint
    assert hint.isVisible() and window.view.viewport().rect().contains(hint.geometry())
    text = hint.text()
    assert "File > Open" in text and window.open_action.shortcut().toString() in text and "drop" in text
    shot = window.view.grab()
    assert shot.save(str(tmp_path / "empty.png"))  # looked at: the hint centred, grey
    middle = shot.toImage().copy(shot.rect().adjusted(0, shot.height() // 3, 0, -shot.height() // 3))
    greys = {middle.pixelColor(x, y).value() for x in range(0, middle.width(), 2) for y in range(0, middle.height(), 2)}
    assert min(greys) < 160  # the text is drawn, not only laid out
    open_and_wait(qtbot, window, sample_model)
    assert not hint.isVisible()  # a graph: nothing over it
